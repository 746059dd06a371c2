// End-to-end test of the built-in chat page in headless Chromium.
// Started by tests/ui_e2e.rs with a running portcullis (CSRF tokens on,
// origin check on) in front of a fake upstream that streams slowly.
//
// Env: BASE_URL, API_KEY, SHOT_DIR, CHROMIUM (executable path).
import { chromium } from "playwright-core";
import http from "node:http";

const BASE = process.env.BASE_URL;
const KEY = process.env.API_KEY;
const SHOTS = process.env.SHOT_DIR;
const step = (name, extra) => console.log(JSON.stringify({ step: name, ...extra }));

async function apiCount(path) {
  const res = await fetch(BASE + path, { headers: { Authorization: "Bearer " + KEY } });
  return (await res.json()).items.length;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const failures = [];
const cspViolations = [];
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 800 } });
  page.on("console", (m) => { if (/Content Security Policy|Refused to/.test(m.text())) cspViolations.push(m.text()); });
  page.on("dialog", (d) => d.accept(d.type() === "prompt" ? "Renamed project" : undefined));

  // 1. Load the page, enter the key.
  await page.goto(BASE + "/");
  await page.getByLabel("API key").fill(KEY);
  await page.getByRole("button", { name: "Use key" }).click();
  step("loaded");

  // 2. Create a project and rename it.
  await page.getByLabel("New project name").fill("E2E project");
  await page.getByRole("button", { name: "Add" }).click();
  await page.getByRole("button", { name: "Open E2E project" }).waitFor();
  await page.getByRole("button", { name: "Rename E2E project" }).click();
  await page.getByRole("button", { name: "Open Renamed project" }).waitFor();
  step("project created and renamed");

  // 3. New conversation, send a message, see the answer stream in.
  await page.getByRole("button", { name: "New conversation" }).click();
  await page.getByLabel("Message").fill("hello there");
  await page.getByLabel("Message").press("Enter");
  const answer = page.locator("li.msg.assistant").last();
  // Streaming: text appears while the Stop button is still enabled.
  await page.waitForFunction(() => {
    const b = [...document.querySelectorAll("li.msg.assistant .text")].pop();
    return b && b.textContent.length > 0 && !document.getElementById("stop").disabled;
  }, null, { timeout: 15000 });
  step("first tokens visible before the answer finished");
  await page.waitForFunction(() => document.getElementById("stop").disabled, null, { timeout: 30000 });
  if (!(await answer.getAttribute("class")).includes("complete")) failures.push("answer not marked complete");
  const full = await answer.locator(".text").textContent();
  step("answer complete", { chars: full.length });
  await page.screenshot({ path: SHOTS + "/chat.png" });

  // 4. Stop a slow answer after its first token.
  await page.getByLabel("Message").fill("please answer slowly");
  await page.getByLabel("Message").press("Enter");
  await page.waitForFunction(() => {
    const b = [...document.querySelectorAll("li.msg.assistant .text")].pop();
    return b && b.textContent.length > 0;
  }, null, { timeout: 15000 });
  await page.getByRole("button", { name: "Stop" }).click();
  await page.waitForFunction(() => document.getElementById("status").textContent.includes("Stopped"), null, { timeout: 5000 });
  step("slow answer stopped");

  // 5. Reload: the history is there, the stopped answer marked partial.
  let partial = 0;
  for (let i = 0; i < 50 && partial === 0; i++) {
    await page.reload();
    await page.getByRole("button", { name: "Open Renamed project" }).click();
    const conv = page.locator("#conversations li .pick").first();
    await conv.click();
    await page.locator("li.msg.user").first().waitFor();
    partial = await page.locator("li.msg.assistant.partial").count();
    if (partial === 0) await new Promise((r) => setTimeout(r, 100));
  }
  const users = await page.locator("li.msg.user").count();
  const completes = await page.locator("li.msg.assistant.complete").count();
  if (users !== 2 || completes !== 1 || partial !== 1) failures.push(`history after reload: users=${users} complete=${completes} partial=${partial}`);
  step("history after reload", { users, completes, partial });
  await page.screenshot({ path: SHOTS + "/history.png", fullPage: true });

  // 6. Phone width stays usable.
  await page.setViewportSize({ width: 390, height: 800 });
  await page.screenshot({ path: SHOTS + "/phone.png", fullPage: true });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
  if (overflow) failures.push("horizontal overflow at phone width");

  // 7. A page on another origin cannot POST to portcullis.
  const before = await apiCount("/api/projects?limit=200");
  const evil = http.createServer((req, res) => {
    res.setHeader("Content-Type", "text/html");
    res.end(`<!doctype html><form id="f" method="POST" action="${BASE}/api/projects" enctype="text/plain">
      <input name='{"name":"csrf","x":"' value='"}'></form>`);
  });
  await new Promise((r) => evil.listen(0, "127.0.0.1", r));
  const evilUrl = `http://127.0.0.1:${evil.address().port}/`;
  const other = await browser.newPage();
  await other.goto(evilUrl);
  // a) fetch with the victim's key would need CORS: the preflight is refused.
  const fetchResult = await other.evaluate(async ([base, key]) => {
    try {
      const r = await fetch(base + "/api/projects", { method: "POST", headers: { "Content-Type": "application/json", Authorization: "Bearer " + key }, body: '{"name":"cross-site"}' });
      return "status " + r.status;
    } catch (e) { return "blocked: " + e.name; }
  }, [BASE, KEY]);
  // b) a plain cross-site form POST (no preflight) reaches the server and is refused.
  const [formResponse] = await Promise.all([
    other.waitForResponse((r) => r.url().startsWith(BASE + "/api/projects"), { timeout: 10000 }),
    other.evaluate(() => document.getElementById("f").submit()),
  ]);
  const formStatus = formResponse.status();
  const after = await apiCount("/api/projects?limit=200");
  evil.close();
  step("cross-origin", { fetchResult, formStatus, before, after });
  if (!fetchResult.startsWith("blocked")) failures.push("cross-origin fetch was not blocked: " + fetchResult);
  if (formStatus !== 403) failures.push("cross-site form POST got " + formStatus);
  if (after !== before) failures.push("a cross-site request created a project");
  if (cspViolations.length) failures.push("CSP violations: " + cspViolations.join(" | "));
} catch (e) {
  failures.push(String(e && e.stack || e));
} finally {
  await browser.close();
}
if (failures.length) {
  console.log(JSON.stringify({ failures }));
  process.exit(1);
}
console.log(JSON.stringify({ result: "pass" }));
