// End-to-end test of the built-in chat page in headless Chromium, as a
// person would use it. Started by tests/ui_e2e.rs, which runs portcullis
// (api_key auth, CSRF tokens and the Origin check on, a low chat rate
// limit) in front of a fake upstream that streams a token every ~150 ms,
// streams very slowly for a message holding "slowly", and fails with 500
// for a message holding "fail"; every answer reports 7 prompt and 5
// completion tokens of usage. Users have a limit of 100,000 tokens a day
// (USER2 has his own: one token) and none a month. A second portcullis (NOAUTH_URL) runs with auth mode
// none, where the Origin check is the only defence.
//
// Env: BASE_URL, NOAUTH_URL, API_KEY (the first admin's), USER1/PASS1 and
// USER2/PASS2 (two members), ADMIN_USER/ADMIN_PASS (an admin with a
// password), SHOT_DIR, CHROMIUM (executable).
// Prints one JSON line per step; exits 1 with {"failures": [...]}.
import { chromium } from "playwright-core";
import http from "node:http";
import assert from "node:assert/strict";

const BASE = process.env.BASE_URL;
const NOAUTH = process.env.NOAUTH_URL;
const KEY = process.env.API_KEY;
const USER1 = process.env.USER1, PASS1 = process.env.PASS1;
const USER2 = process.env.USER2, PASS2 = process.env.PASS2;
const ADMIN_USER = process.env.ADMIN_USER, ADMIN_PASS = process.env.ADMIN_PASS;
// The fake upstream's usage per answer (tests/support/fake_upstream.rs).
const TOKENS_PER_ANSWER = 7 + 5;
const SHOTS = process.env.SHOT_DIR;
const t0 = Date.now();
const step = (name, extra) => console.log(JSON.stringify({ step: name, ms: Date.now() - t0, ...extra }));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// GET path on the main server with the first admin's key.
async function asAdmin(path) {
  const res = await fetch(BASE + path, { headers: { Authorization: "Bearer " + KEY } });
  assert.equal(res.status, 200, path);
  return res.json();
}

// The usage line's parts ("Today ...", "This month ...") and their bars.
const usageLine = () => [...document.querySelectorAll("#my-usage .budget")]
  .map((b) => ({ text: b.textContent, bar: !!b.querySelector(".bar .fill") }));

async function projectCount(base, key) {
  const headers = key ? { Authorization: "Bearer " + key } : {};
  const res = await fetch(base + "/api/projects?limit=200", { headers });
  assert.equal(res.status, 200);
  return (await res.json()).items.length;
}

// The newest assistant bubble's text and classes, and whether Stop is on.
const lastAnswer = () => {
  const b = [...document.querySelectorAll("li.msg.assistant")].pop();
  return b && {
    text: b.querySelector(".text").textContent,
    meta: b.querySelector(".meta").textContent,
    cls: b.className,
    stopEnabled: !document.getElementById("stop").disabled,
  };
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-proxy-server", "--disable-quic",
    "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const failures = [];
const pageProblems = [];
const check = (ok, what) => { if (!ok) failures.push(what); };

// A page that records CSP violations and script errors, and answers
// prompt()/confirm() from a queue the test fills.
async function newPage(context, name) {
  const page = await context.newPage();
  page.on("console", (m) => { if (m.type() === "error" && /Content Security Policy|Refused to/.test(m.text())) pageProblems.push(`${name}: ${m.text()}`); });
  page.on("pageerror", (e) => pageProblems.push(`${name}: ${e.message}`));
  page.answers = [];
  page.on("dialog", (d) => {
    const a = page.answers.shift();
    if (a === false) d.dismiss(); else d.accept(d.type() === "prompt" ? a : undefined);
  });
  return page;
}

try {
  const context = await browser.newContext({ viewport: { width: 1000, height: 700 } });
  const page = await newPage(context, "page");

  // 1. The page loads with a sign-in form (no error before anything was
  //    done); every control has a label; signing in works by keyboard.
  await page.goto(BASE + "/");
  await page.locator("#signin-form").waitFor();
  check(await page.locator("#status").textContent() === "", "a first visit shows no error");
  check(await page.locator("main").isHidden(), "the chat waits for a sign-in");
  const unlabelled = await page.evaluate(() => [...document.querySelectorAll("input, textarea, button")]
    .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute("aria-label") && !el.textContent.trim())
    .map((el) => el.id || el.outerHTML.slice(0, 60)));
  check(unlabelled.length === 0, "unlabelled controls: " + unlabelled.join(", "));
  await page.keyboard.press("Tab");
  check(await page.evaluate(() => document.activeElement.textContent) === "Skip to the message box", "first Tab stop is the skip link");
  await page.keyboard.press("Tab");
  check(await page.evaluate(() => document.activeElement.id) === "signin-name", "second Tab stop is the name field");
  await page.keyboard.type(USER1);
  await page.keyboard.press("Tab");
  await page.keyboard.type("not the password");
  await page.keyboard.press("Enter");
  await page.getByText("The name or the password is wrong.").waitFor();
  await page.getByLabel("Password").fill(PASS1);
  await page.getByLabel("Password").press("Enter");
  await page.getByText("No projects yet.").waitFor();
  check(await page.locator("#who-name").textContent() === "Signed in as " + USER1, "shows who is signed in");
  check(await page.evaluate(() => sessionStorage.length === 0 && localStorage.length === 0 && !document.cookie.includes("portcullis_session")),
    "no key or session token reachable by the page's script (HttpOnly cookie)");
  const usageBefore = await page.evaluate(usageLine);
  check(JSON.stringify(usageBefore) === JSON.stringify([{ text: "Today 0 of 100,000 tokens", bar: true }, { text: "This month 0 tokens (no limit)", bar: false }]),
    "the usage line shows the day's limit with a bar, and no limit for the month: " + JSON.stringify(usageBefore));
  check(await page.locator("#open-usage").isHidden(), "a member has no usage view button");
  step("page loaded, signed in by keyboard", { usage: usageBefore.map((u) => u.text) });

  // 2. Projects: create two, rename one, delete the other.
  for (const name of ["E2E project", "Scratch"]) {
    await page.getByLabel("New project name").fill(name);
    await page.getByLabel("New project name").press("Enter");
    await page.getByRole("button", { name: "Open " + name }).waitFor();
  }
  page.answers.push("Renamed project");
  await page.getByRole("button", { name: "Rename E2E project" }).click();
  await page.getByRole("button", { name: "Open Renamed project" }).waitFor();
  page.answers.push(true);
  await page.getByRole("button", { name: "Delete Scratch" }).click();
  await page.getByRole("button", { name: "Open Scratch" }).waitFor({ state: "detached" });
  await page.getByRole("button", { name: "Open Renamed project" }).click();
  await page.getByText("in Renamed project").waitFor();
  step("projects created, renamed, deleted");

  // 3. Conversations: create one, rename it; create and delete another.
  await page.getByRole("button", { name: "New conversation" }).click();
  await page.locator("#conversations li.active").waitFor();
  page.answers.push("Throwaway");
  await page.locator("#conversations li.active button", { hasText: "Rename" }).click();
  await page.getByRole("button", { name: "Open Throwaway" }).waitFor();
  page.answers.push(true);
  await page.getByRole("button", { name: "Delete Throwaway" }).click();
  await page.getByRole("button", { name: "Open Throwaway" }).waitFor({ state: "detached" });
  await page.getByRole("button", { name: "New conversation" }).click();
  await page.locator("#conversations li.active").waitFor();
  page.answers.push("Streaming test");
  await page.locator("#conversations li.active button", { hasText: "Rename" }).click();
  await page.getByRole("heading", { name: "Streaming test" }).waitFor();
  step("conversations created, renamed, deleted");

  // 4. Send with Enter; the answer shows up token by token, before it ends.
  await page.getByLabel("Message", { exact: true }).fill("hello there");
  await page.getByLabel("Message", { exact: true }).press("Enter");
  const first = await (await page.waitForFunction(() => {
    const b = [...document.querySelectorAll("li.msg.assistant")].pop();
    const t = b && b.querySelector(".text").textContent;
    return t ? { text: t, stopEnabled: !document.getElementById("stop").disabled, cls: b.className } : false;
  }, null, { timeout: 15000, polling: 20 })).jsonValue();
  check(first.stopEnabled && first.cls.includes("streaming"), "first tokens arrive while the answer is still streaming: " + JSON.stringify(first));
  await page.waitForFunction(() => document.getElementById("stop").disabled, null, { timeout: 30000 });
  const full = await page.evaluate(lastAnswer);
  check(full.cls.includes("complete"), "answer marked complete: " + full.cls);
  check(full.text.length > first.text.length && full.text.startsWith(first.text), `answer grew after the first tokens (${first.text.length} -> ${full.text.length})`);
  check(await page.evaluate(() => document.activeElement.id) === "message", "focus stays in the message box");
  // The usage line follows the answer's tokens without a reload.
  const spent = `Today ${TOKENS_PER_ANSWER} of 100,000 tokens`;
  await page.waitForFunction((t) => [...document.querySelectorAll("#my-usage .budget")].some((b) => b.textContent === t), spent, { timeout: 5000 })
    .catch(() => {});
  const usageAfter = await page.evaluate(usageLine);
  check(usageAfter.length === 2 && usageAfter[0].text === spent && usageAfter[1].text === `This month ${TOKENS_PER_ANSWER} tokens (no limit)`,
    "the usage line counts the answer's tokens: " + JSON.stringify(usageAfter));
  step("answer streamed", { first_chars: first.text.length, final_chars: full.text.length, usage: usageAfter.map((u) => u.text) });
  await page.screenshot({ path: SHOTS + "/chat.png" });

  // 5. Stop a slow answer after its first token (the Stop button).
  await page.getByLabel("Message", { exact: true }).fill("please answer slowly");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => {
    const b = [...document.querySelectorAll("li.msg.assistant .text")].pop();
    return b && b.textContent.length > 0;
  }, null, { timeout: 15000 });
  await page.getByRole("button", { name: "Stop" }).click();
  await page.getByText("Stopped. The partial answer is kept.").waitFor({ timeout: 5000 });
  const stopped = await page.evaluate(lastAnswer);
  check(stopped.cls.includes("partial") && stopped.meta.includes("partial answer"), "stopped answer shown as partial: " + JSON.stringify(stopped));
  check(!stopped.stopEnabled, "Stop is off once stopped");
  step("slow answer stopped", { chars: stopped.text.length });

  // 6. Reload: the same conversation comes back with its history, the
  //    stopped answer marked partial (stored once the server noticed).
  let history = null;
  for (let i = 0; i < 40; i++) {
    await page.reload();
    await page.getByRole("heading", { name: "Streaming test" }).waitFor();
    await page.locator("li.msg.user").nth(1).waitFor();
    history = await page.evaluate(() => ({
      users: document.querySelectorAll("li.msg.user").length,
      complete: document.querySelectorAll("li.msg.assistant.complete").length,
      partial: [...document.querySelectorAll("li.msg.assistant.partial .meta")].map((m) => m.textContent),
      listed: [...document.querySelectorAll("#conversations .pick")].map((b) => b.textContent),
    }));
    if (history.partial.length === 1 && history.users === 2) break;
    await sleep(250);
  }
  check(history.users === 2 && history.complete === 1 && history.partial.length === 1, "history after reload: " + JSON.stringify(history));
  check(history.partial.every((m) => m.includes("partial answer")), "partial answer labelled in words");
  check(history.listed.includes("Streaming test"), "conversation listed after reload");
  step("history after reload", history);
  await page.screenshot({ path: SHOTS + "/history.png" });

  // 7. Errors read as sentences: the upstream fails (502), then the chat
  //    rate limit is reached (429, with its Retry-After).
  await page.getByLabel("Message", { exact: true }).fill("this one will fail");
  await page.keyboard.press("Enter");
  await page.getByText("The model server returned an error.").first().waitFor({ timeout: 10000 });
  const failedAnswer = await page.evaluate(lastAnswer);
  check(failedAnswer.cls.includes("error") && failedAnswer.meta.includes("no answer"), "failed answer marked: " + JSON.stringify(failedAnswer));
  let limited = null;
  for (let i = 0; i < 20 && !limited; i++) {
    await page.getByLabel("Message", { exact: true }).fill("fail again " + i);
    await page.keyboard.press("Enter");
    await page.waitForFunction(() => document.getElementById("send").disabled === false && document.getElementById("status").textContent !== "", null, { timeout: 10000 });
    const status = await page.locator("#status").textContent();
    if (status.startsWith("Too many requests")) limited = { after: i + 1, status, composer: await page.getByLabel("Message", { exact: true }).inputValue() };
  }
  check(limited && /please wait \d+ seconds/.test(limited.status), "429 shown as a sentence: " + JSON.stringify(limited));
  check(limited && limited.composer.startsWith("fail again"), "a refused message goes back into the box");
  step("errors shown", { upstream: failedAnswer.text, limited });
  await page.screenshot({ path: SHOTS + "/errors.png" });

  // 8. Phone width: no sideways scrolling, controls still reachable.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.reload();
  await page.locator("li.msg.user").first().waitFor();
  await page.screenshot({ path: SHOTS + "/phone.png", fullPage: true });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, `horizontal overflow at phone width: ${overflow}px`);
  // The skip link leads to the message box; Tab then reaches Send.
  await page.locator("body").focus();
  await page.keyboard.press("Tab");
  await page.keyboard.press("Enter");
  check(await page.evaluate(() => document.activeElement.id) === "message", "the skip link focuses the message box");
  await page.keyboard.press("Tab");
  check(await page.evaluate(() => document.activeElement.id) === "send", "Tab from the message box reaches Send");
  check(/#c=/.test(page.url()), "the address still names the conversation");
  step("phone width", { overflow });

  // 9. A second user, in another browser context, sees only their own
  //    conversations; the first user's list does not show theirs; signing
  //    out ends the session at once.
  const mine = await page.evaluate(() => [...document.querySelectorAll("#conversations .pick")].map((b) => b.textContent));
  const second = await newPage(await browser.newContext({ viewport: { width: 1000, height: 700 } }), "second");
  await second.goto(BASE + "/");
  await second.getByLabel("Name", { exact: true }).fill(USER2);
  await second.getByLabel("Password").fill(PASS2);
  await second.getByLabel("Password").press("Enter");
  await second.getByText("No projects yet.").waitFor();
  await second.getByText("No conversations yet").waitFor();
  await second.getByLabel("Message", { exact: true }).fill("bob's own question");
  await second.keyboard.press("Enter");
  await second.locator("#conversations .pick").first().waitFor();
  // His one-token day budget is spent by that answer: the next message is
  // refused with a sentence, and the usage line shows the budget over.
  await second.waitForFunction(() => document.getElementById("send").disabled === false, null, { timeout: 15000 });
  await second.getByLabel("Message", { exact: true }).fill("bob's second question");
  await second.keyboard.press("Enter");
  await second.locator("#status", { hasText: /^Your token budget for today is spent; it renews in (\d+ (seconds|minutes)|about \d+ hours)\.$/ }).waitFor({ timeout: 10000 });
  const bobUsage = await second.evaluate(() => ({
    text: document.querySelector("#my-usage .budget").textContent,
    over: !!document.querySelector("#my-usage .fill.over"),
    box: document.getElementById("message").value,
  }));
  check(bobUsage.text === `Today ${TOKENS_PER_ANSWER} of 1 tokens` && bobUsage.over && bobUsage.box === "bob's second question",
    "a spent budget: shown over, the refused message back in the box: " + JSON.stringify(bobUsage));
  const theirs = await second.evaluate(() => [...document.querySelectorAll("#conversations .pick")].map((b) => b.textContent));
  await page.reload();
  await page.locator("#conversations .pick").first().waitFor();
  const mineAfter = await page.evaluate(() => [...document.querySelectorAll("#conversations .pick")].map((b) => b.textContent));
  check(theirs.length === 1 && !theirs.some((t) => mine.includes(t)), "the second user sees only their own conversation: " + JSON.stringify({ mine, theirs }));
  check(JSON.stringify(mineAfter) === JSON.stringify(mine), "the first user's list is unchanged: " + JSON.stringify({ mine, mineAfter }));
  await second.getByRole("button", { name: "Sign out" }).click();
  await second.locator("#signin-form").waitFor();
  check(await second.evaluate(async () => (await fetch("/api/me")).status) === 401, "signed out: the session no longer works");
  await second.context().close();
  step("two users, each sees only their own", { mine: mine.length, theirs: theirs.length });

  // 10. An admin's usage view: opened by keyboard, it lists every user with
  //     their tokens of the last 30 days; picking one draws their tokens
  //     per day as an SVG chart of 30 days, today's bar as tall as the
  //     figure the API reports. Errors read as sentences; Escape closes.
  const adminPage = await newPage(await browser.newContext({ viewport: { width: 1000, height: 700 } }), "admin");
  await adminPage.goto(BASE + "/");
  await adminPage.getByLabel("Name", { exact: true }).fill(ADMIN_USER);
  await adminPage.getByLabel("Password").fill(ADMIN_PASS);
  await adminPage.getByLabel("Password").press("Enter");
  await adminPage.getByText("No projects yet.").waitFor();
  const openUsage = adminPage.getByRole("button", { name: "Usage per user" });
  await openUsage.focus();
  await adminPage.keyboard.press("Enter");
  const dialog = adminPage.getByRole("dialog", { name: "Usage, last 30 days" });
  await dialog.waitFor();
  await adminPage.getByRole("button", { name: `Show ${USER1}'s tokens per day` }).waitFor();
  // What the API says alice spent, per day, in the same window.
  const today = (await asAdmin("/api/me")).usage.today.day;
  const firstDay = new Date(Date.parse(today + "T00:00:00Z") - 29 * 86400000).toISOString().slice(0, 10);
  const alice = (await asAdmin("/api/admin/users")).items.find((u) => u.name === USER1);
  const perDay = (await asAdmin(`/api/admin/usage?group_by=day&user_id=${alice.id}&since=${firstDay}`)).items;
  const expected = perDay.reduce((n, i) => n + i.prompt_tokens + i.completion_tokens, 0);
  check(perDay.length === 1 && perDay[0].group === today && expected >= TOKENS_PER_ANSWER, "alice's calls are all today's: " + JSON.stringify(perDay));
  const fmt = (n) => n.toLocaleString("en-US");
  const table = await adminPage.evaluate(() => Object.fromEntries([...document.querySelectorAll("#usage-users tr")]
    .map((tr) => [tr.querySelector("th").textContent, [...tr.querySelectorAll("td")].map((td) => td.textContent)])));
  check(Object.keys(table).length === 4 && table[USER1] && table[USER2] && table[ADMIN_USER + " admin"], "every user listed: " + JSON.stringify(table));
  check(table[USER1] && table[USER1][3] === fmt(expected) && table[USER1][4] === "default" && table[USER1][5] === "default",
    `alice's row: ${fmt(expected)} tokens, default limits: ` + JSON.stringify(table[USER1]));
  check(table[USER2] && table[USER2][3] === fmt(TOKENS_PER_ANSWER) && table[USER2][4] === "1" && table[USER2][5] === "default",
    "bob's row: one answer, his own day limit: " + JSON.stringify(table[USER2]));
  const unlabelledInView = await adminPage.evaluate(() => [...document.querySelectorAll("#usage-dialog button")]
    .filter((el) => !el.getAttribute("aria-label") && !el.textContent.trim()).length);
  check(unlabelledInView === 0, "every button of the usage view has a name");

  await adminPage.getByRole("button", { name: `Show ${USER1}'s tokens per day` }).click();
  await adminPage.locator("#usage-chart svg g.day").first().waitFor();
  const chart = await adminPage.evaluate(() => {
    const svg = document.querySelector("#usage-chart svg");
    const height = (g, cls) => Number(g.querySelector("rect." + cls).getAttribute("height"));
    return {
      role: svg.getAttribute("role"),
      name: svg.querySelector(":scope > title").textContent,
      labels: [...svg.querySelectorAll(":scope > text")].map((t) => t.textContent),
      days: [...svg.querySelectorAll("g.day")].map((g) => ({
        day: g.dataset.day,
        height: height(g, "prompt") + height(g, "completion"),
        title: g.querySelector("title").textContent,
      })),
      heading: document.getElementById("chart-h").textContent,
      pressed: document.querySelector("#usage-users button[aria-pressed=true]").textContent,
    };
  });
  const last = chart.days[chart.days.length - 1];
  check(chart.days.length === 30 && chart.days[0].day === firstDay && last && last.day === today, "30 bars, the first 29 days ago, the last today: " + JSON.stringify(chart.days.map((d) => d.day)));
  check(last && last.height > 100 && last.title.startsWith(`${today}: ${fmt(expected)} tokens`), "today's bar is drawn and its title names its tokens: " + JSON.stringify(last));
  check(chart.days.slice(0, -1).every((d) => d.height === 0 && d.title.includes(": 0 tokens")), "days without calls are 0");
  check(chart.labels.includes(fmt(expected)) && chart.labels.includes(firstDay) && chart.labels.includes(today), "axis labels: the largest day, the first and last day: " + JSON.stringify(chart.labels));
  check(chart.role === "img" && chart.name === "Tokens per day for " + USER1 && chart.heading === "Tokens per day: " + USER1 && chart.pressed === USER1, "the chart is named for its user: " + JSON.stringify(chart));
  await adminPage.screenshot({ path: SHOTS + "/usage.png" });

  // An error of the report reads as a sentence in the view (the answer is
  // replaced in the browser: the server has no way to be busy on cue).
  await adminPage.route(/\/api\/admin\/usage\?/, (r) => r.fulfill({
    status: 503, headers: { "Content-Type": "application/json", "Retry-After": "2" },
    body: JSON.stringify({ error: { code: "server_busy", message: "the server is busy; retry shortly" } }),
  }));
  await adminPage.getByRole("button", { name: `Show ${USER2}'s tokens per day` }).click();
  await adminPage.locator("#usage-status", { hasText: "The server is busy; try again in 2 seconds." }).waitFor({ timeout: 5000 });
  await adminPage.unrouteAll();
  await adminPage.keyboard.press("Escape");
  await dialog.waitFor({ state: "hidden" });
  check(await adminPage.evaluate(() => document.activeElement.id) === "open-usage", "closing the view gives focus back to its button");

  // Phone width: the view fits (its table scrolls inside it).
  await adminPage.setViewportSize({ width: 390, height: 844 });
  await openUsage.click();
  await adminPage.getByRole("button", { name: `Show ${USER1}'s tokens per day` }).click();
  await adminPage.locator("#usage-chart svg g.day").first().waitFor();
  const usageOverflow = await adminPage.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(usageOverflow <= 0, `horizontal overflow of the usage view at phone width: ${usageOverflow}px`);
  await adminPage.screenshot({ path: SHOTS + "/usage-phone.png" });
  await adminPage.context().close();
  step("admin usage view", { expected, table: table[USER1], bar: last });

  // 11. Auth mode none: no key needed; CSRF tokens still fetched and sent.
  //     The built-in user is an admin, without limits.
  const open = await newPage(context, "open");
  await open.goto(NOAUTH + "/");
  await open.getByLabel("New project name").fill("Keyless");
  await open.getByLabel("New project name").press("Enter");
  await open.getByRole("button", { name: "Open Keyless" }).waitFor();
  const openUsageLine = await open.evaluate(usageLine);
  check(JSON.stringify(openUsageLine.map((u) => u.text)) === JSON.stringify(["Today 0 tokens (no limit)", "This month 0 tokens (no limit)"]),
    "auth mode none: usage without limits: " + JSON.stringify(openUsageLine));
  check(await open.getByRole("button", { name: "Usage per user" }).isVisible(), "auth mode none: the usage view is there");
  step("auth mode none works without a key");

  // 12. A page on another origin cannot POST to portcullis.
  const evil = http.createServer((req, res) => {
    const target = new URL(req.url, "http://x").searchParams.get("target");
    res.setHeader("Content-Type", "text/html");
    res.end(`<!doctype html><form id="f" method="POST" action="${target}/api/projects" enctype="text/plain">
      <input name='{"name":"csrf","x":"' value='"}'></form>`);
  });
  await new Promise((r) => evil.listen(0, "127.0.0.1", r));
  const evilOrigin = `http://localhost:${evil.address().port}`;
  const attack = async (target, key) => {
    const other = await newPage(await browser.newContext(), "evil");
    await other.goto(`${evilOrigin}/?target=${encodeURIComponent(target)}`);
    const before = await projectCount(target, key);
    // a) fetch with JSON needs a CORS preflight, which is refused.
    const fetched = await other.evaluate(async (t) => {
      try {
        const r = await fetch(t + "/api/projects", { method: "POST", headers: { "Content-Type": "application/json" }, body: '{"name":"cross-site"}' });
        return "status " + r.status;
      } catch (e) { return "blocked: " + e.name; }
    }, target);
    // b) neither can it read the API.
    const read = await other.evaluate(async (t) => {
      try { const r = await fetch(t + "/api/projects"); return "read " + r.status; } catch (e) { return "blocked: " + e.name; }
    }, target);
    // c) a plain form POST (no preflight) reaches the server and is refused.
    const [resp] = await Promise.all([
      other.waitForResponse((r) => r.url().startsWith(target + "/api/projects") && r.request().method() === "POST", { timeout: 10000 }),
      other.evaluate(() => document.getElementById("f").submit()),
    ]);
    let code = null;
    try { code = (await resp.json()).error.code; } catch (_) { /* body not available */ }
    const after = await projectCount(target, key);
    await other.context().close();
    return { fetched, read, form: resp.status(), code, before, after };
  };
  const noAuth = await attack(NOAUTH, null);
  const withAuth = await attack(BASE, KEY);
  evil.close();
  step("cross-origin", { evilOrigin, noAuth, withAuth });
  check(noAuth.fetched.startsWith("blocked") && withAuth.fetched.startsWith("blocked"), "cross-origin fetch blocked");
  check(noAuth.read.startsWith("blocked"), "cross-origin read blocked");
  check(noAuth.form === 403 && (noAuth.code === null || noAuth.code === "origin_not_allowed"), "auth none: cross-site form POST refused 403 origin_not_allowed: " + JSON.stringify(noAuth));
  check(withAuth.form === 401 || withAuth.form === 403, "api_key: cross-site form POST refused");
  check(noAuth.after === noAuth.before && withAuth.after === withAuth.before, "no cross-site request created a project");
} catch (e) {
  failures.push(String((e && e.stack) || e));
} finally {
  await browser.close();
}
if (pageProblems.length) failures.push("CSP violations or script errors: " + pageProblems.join(" | "));
if (failures.length) {
  console.log(JSON.stringify({ failures }));
  process.exit(1);
}
console.log(JSON.stringify({ result: "pass", ms: Date.now() - t0 }));
