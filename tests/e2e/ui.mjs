// End-to-end test of the built-in chat page in headless Chromium, as a
// person would use it. Started by tests/ui_e2e.rs, which runs portcullis
// (api_key auth, CSRF tokens and the Origin check on, a low chat rate
// limit) in front of a fake upstream that streams a token every ~150 ms,
// streams very slowly for a message holding "slowly", fails with 500 for
// a message holding "fail", answers MARKDOWN_ANSWER for "markdown",
// HOSTILE_ANSWER for "hostile" and LONG_PARAGRAPHS paragraphs cut at the
// length limit for "long essay"; every answer reports 7 prompt and 5
// completion tokens of usage. Users have a limit of 100,000 tokens a day
// (USER2 has his own: one token) and none a month. A second portcullis
// (NOAUTH_URL) runs with auth mode none, where the Origin check is the
// only defence.
//
// Env: BASE_URL, NOAUTH_URL, API_KEY (the first admin's), USER1/PASS1 and
// USER2/PASS2 (two members), ADMIN_USER/ADMIN_PASS (an admin with a
// password), MARKDOWN_ANSWER, HOSTILE_ANSWER, LONG_PARAGRAPHS, SHOT_DIR,
// CHROMIUM (executable).
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
const MARKDOWN_ANSWER = process.env.MARKDOWN_ANSWER;
const HOSTILE_ANSWER = process.env.HOSTILE_ANSWER;
const LONG_PARAGRAPHS = Number(process.env.LONG_PARAGRAPHS);
// The fake upstream's usage per answer (tests/support/fake_upstream.rs).
const TOKENS_PER_ANSWER = 7 + 5;
const SHOTS = process.env.SHOT_DIR;
// The screenshots' sizes: a laptop, and a phone (the issue's 390 x 844).
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };
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

// The signed-in user's conversations, as the server has them (asked from
// the page, with its session).
const serverConversations = (page) => page.evaluate(async () => (await (await fetch("/api/conversations?limit=200")).json()).items);

// The newest assistant bubble: its text, meta line, classes, end note,
// and whether Stop is on.
const lastAnswer = () => {
  const b = [...document.querySelectorAll("li.msg.assistant")].pop();
  return b && {
    text: b.querySelector(".text").textContent,
    meta: b.querySelector(".meta").textContent,
    badge: b.querySelector(".meta .badge") ? b.querySelector(".meta .badge").textContent : null,
    note: b.querySelector(".end-note") ? b.querySelector(".end-note").textContent : null,
    cls: b.className,
    border: getComputedStyle(b).borderLeftStyle + " " + getComputedStyle(b).borderLeftColor,
    stopEnabled: !document.getElementById("stop").disabled,
  };
};

// Buttons, fields and text areas without a name a screen reader can say.
const unlabelledControls = () => [...document.querySelectorAll("input, textarea, button")]
  .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute("aria-label") && !el.textContent.trim())
  .map((el) => el.id || el.className || el.tagName);

// What the address says: the project and conversation ids it names.
const addressOf = (page) => {
  const u = new URL(page.url());
  return { project: u.searchParams.get("project"), conversation: u.searchParams.get("conversation"), hash: u.hash };
};

// Waits for an answer to end (Stop off again).
const answered = (page, timeout) => page.waitForFunction(() => document.getElementById("stop").disabled, null, { timeout: timeout || 30000 });

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

// Records the page's requests that failed (status >= 400), as "401 /path".
function failedRequests(page) {
  const failed = [];
  page.on("response", (r) => { if (r.status() >= 400) failed.push(`${r.status()} ${new URL(r.url()).pathname}`); });
  return failed;
}

// The page's icon, as the page links it and the server serves it.
const iconOf = () => (async () => {
  const link = document.querySelector("link[rel=icon]");
  const res = await fetch(link.href, { credentials: "omit" });
  return { path: new URL(link.href).pathname, status: res.status, type: res.headers.get("content-type") };
})();

try {
  const context = await browser.newContext({ viewport: DESKTOP });
  const page = await newPage(context, "page");

  // 1. A first visit: a sign-in form, no error, and no failed request at
  //    all (no favicon 404, no 401 from /api/me: /api/csrf-token says there
  //    is no session); the icon needs no credentials. Every control has a
  //    label; signing in works by keyboard.
  const firstVisit = failedRequests(page);
  await page.goto(BASE + "/");
  await page.locator("#signin-form").waitFor();
  check(await page.locator("#status").textContent() === "", "a first visit shows no error");
  check(await page.locator("main").isHidden(), "the chat waits for a sign-in");
  const firstFailed = firstVisit.slice();
  check(firstFailed.length === 0, "a first visit fails no request: " + JSON.stringify(firstFailed));
  const icon = await page.evaluate(iconOf);
  check(icon.path === "/favicon.ico" && icon.status === 200 && icon.type === "image/x-icon", "the page's icon is served without credentials: " + JSON.stringify(icon));
  const unlabelled = await page.evaluate(unlabelledControls);
  check(unlabelled.length === 0, "unlabelled controls: " + unlabelled.join(", "));
  await page.screenshot({ animations: "disabled", path: SHOTS + "/signin.png" });
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
  check(await page.getByRole("button", { name: "Menu" }).isHidden(), "no Menu button at desktop width: the lists are beside the chat");
  step("page loaded, signed in by keyboard", { usage: usageBefore.map((u) => u.text), firstVisit: firstFailed });

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
  const projectId = addressOf(page).project;
  check(!!projectId && !addressOf(page).conversation, "the address names the project picked: " + page.url());
  step("projects created, renamed, deleted", { address: page.url() });

  // 3. "New conversation" only clears the view: clicked twice, it creates
  //    nothing on the server (no empty "Untitled" left behind).
  await page.getByRole("button", { name: "New conversation" }).click();
  await page.getByRole("button", { name: "New conversation" }).click();
  await page.getByRole("heading", { name: "New conversation" }).waitFor();
  check((await serverConversations(page)).length === 0, "New conversation creates nothing on the server");
  check(addressOf(page).project === projectId && !addressOf(page).conversation, "a new conversation's address names only its project: " + page.url());
  check(await page.evaluate(() => document.activeElement.id) === "message", "New conversation puts the focus in the message box");
  step("new conversation made nothing");

  // 4. The first message creates the conversation, in the project, titled
  //    from the message. Sent with Enter; the answer shows up token by
  //    token, before it ends.
  await page.getByLabel("Message", { exact: true }).fill("hello there");
  await page.getByLabel("Message", { exact: true }).press("Enter");
  const first = await (await page.waitForFunction(() => {
    const b = [...document.querySelectorAll("li.msg.assistant")].pop();
    const t = b && b.querySelector(".text").textContent;
    return t ? { text: t, stopEnabled: !document.getElementById("stop").disabled, cls: b.className } : false;
  }, null, { timeout: 15000, polling: 20 })).jsonValue();
  check(first.stopEnabled && first.cls.includes("streaming"), "first tokens arrive while the answer is still streaming: " + JSON.stringify(first));
  await answered(page);
  const full = await page.evaluate(lastAnswer);
  check(full.cls.includes("complete") && !full.badge && !full.note, "answer marked complete, without badge or note: " + JSON.stringify(full));
  check(full.text.length > first.text.length && full.text.startsWith(first.text), `answer grew after the first tokens (${first.text.length} -> ${full.text.length})`);
  check(await page.evaluate(() => document.activeElement.id) === "message", "focus stays in the message box");
  await page.getByRole("heading", { name: "hello there" }).waitFor();
  const made = await serverConversations(page);
  check(made.length === 1 && made[0].title === "hello there" && made[0].project_id === projectId,
    "the first message made one conversation, titled from it, in the project: " + JSON.stringify(made));
  check(made.length === 1 && addressOf(page).conversation === made[0].id && addressOf(page).project === projectId, "the address names the new conversation and its project: " + page.url());
  check(await page.locator("#conversations li.active .pick").textContent() === "hello there", "the new conversation is listed and marked open");
  // The usage line follows the answer's tokens without a reload.
  const spent = `Today ${TOKENS_PER_ANSWER} of 100,000 tokens`;
  await page.waitForFunction((t) => [...document.querySelectorAll("#my-usage .budget")].some((b) => b.textContent === t), spent, { timeout: 5000 })
    .catch(() => {});
  const usageAfter = await page.evaluate(usageLine);
  check(usageAfter.length === 2 && usageAfter[0].text === spent && usageAfter[1].text === `This month ${TOKENS_PER_ANSWER} tokens (no limit)`,
    "the usage line counts the answer's tokens: " + JSON.stringify(usageAfter));
  page.answers.push("Streaming test");
  await page.locator("#conversations li.active button", { hasText: "Rename" }).click();
  await page.getByRole("heading", { name: "Streaming test" }).waitFor();
  const conversationId = made[0] && made[0].id;
  step("first message made the conversation", { first_chars: first.text.length, final_chars: full.text.length, usage: usageAfter.map((u) => u.text), address: page.url() });
  await page.screenshot({ animations: "disabled", path: SHOTS + "/chat.png" });

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
  check(stopped.cls.includes("partial") && stopped.badge === "partial answer" && /stopped before its end/.test(stopped.note || ""),
    "stopped answer shown as partial, with a badge and a note: " + JSON.stringify(stopped));
  check(!stopped.stopEnabled, "Stop is off once stopped");
  step("slow answer stopped", { chars: stopped.text.length });

  // 6. Reload: the same project and conversation come back with its
  //    history, the stopped answer marked partial (stored once the server
  //    noticed).
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
      scope: document.getElementById("conv-scope").textContent,
      project: (document.querySelector("#projects li.active .pick") || {}).textContent,
    }));
    if (history.partial.length === 1 && history.users === 2) break;
    await sleep(250);
  }
  check(history.users === 2 && history.complete === 1 && history.partial.length === 1, "history after reload: " + JSON.stringify(history));
  check(history.partial.every((m) => m.includes("partial answer")), "partial answer labelled in words");
  check(history.listed.includes("Streaming test"), "conversation listed after reload");
  check(history.scope === "in Renamed project" && history.project === "Renamed project", "the project comes back after a reload: " + JSON.stringify(history));
  step("history after reload", history);
  await page.screenshot({ animations: "disabled", path: SHOTS + "/history.png" });

  // 6b. Back and Forward walk through what was shown: all projects (the
  //     project clicked again), back to the project and its conversation.
  const here = page.url();
  await page.getByRole("button", { name: "Open Renamed project" }).click();
  await page.locator("#conv-scope", { hasText: "(all projects)" }).waitFor();
  await page.getByRole("heading", { name: "New conversation" }).waitFor();
  check(!addressOf(page).project && !addressOf(page).conversation, "all projects: the address names neither: " + page.url());
  await page.goBack();
  await page.getByRole("heading", { name: "Streaming test" }).waitFor();
  await page.locator("#conv-scope", { hasText: "in Renamed project" }).waitFor();
  check(page.url() === here, "Back restores the project and the conversation: " + page.url());
  await page.goForward();
  await page.locator("#conv-scope", { hasText: "(all projects)" }).waitFor();
  await page.getByRole("heading", { name: "New conversation" }).waitFor();
  await page.goBack();
  await page.getByRole("heading", { name: "Streaming test" }).waitFor();
  await page.locator("li.msg.user").nth(1).waitFor();
  // An address naming what does not exist: a sentence, and the address
  // corrected; no script error.
  await page.goto(BASE + "/?project=no-such-project&conversation=no-such-conversation");
  await page.locator("#status", { hasText: "The project and the conversation named in the address no longer exist (or are not yours), so they are not shown." }).waitFor({ timeout: 5000 });
  await page.getByRole("heading", { name: "New conversation" }).waitFor();
  check(new URL(page.url()).search === "", "an unknown id is dropped from the address: " + page.url());
  // An older page's link (#c=ID) still opens its conversation.
  await page.goto(BASE + "/#c=" + encodeURIComponent(conversationId));
  await page.getByRole("heading", { name: "Streaming test" }).waitFor();
  check(addressOf(page).conversation === conversationId && addressOf(page).hash === "", "an old #c= link is rewritten: " + page.url());
  await page.goto(here);
  await page.getByRole("heading", { name: "Streaming test" }).waitFor();
  step("back and forward, unknown and old addresses");

  // 7. Errors read as sentences: the upstream fails (502), then the chat
  //    rate limit is reached (429, with its Retry-After). A first message
  //    whose answer fails still opens the conversation it made (no dead
  //    end: a retry continues it).
  await page.getByRole("button", { name: "New conversation" }).click();
  await page.getByLabel("Message", { exact: true }).fill("fail first");
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: "fail first" }).waitFor({ timeout: 10000 });
  const adopted = addressOf(page).conversation;
  check(adopted && adopted !== conversationId, "a failed first message opens its new conversation: " + page.url());
  await page.getByLabel("Message", { exact: true }).fill("this one will fail");
  await page.keyboard.press("Enter");
  await page.getByText("The model server returned an error.").first().waitFor({ timeout: 10000 });
  const failedAnswer = await page.evaluate(lastAnswer);
  check(failedAnswer.cls.includes("error") && failedAnswer.badge === "no answer", "failed answer marked: " + JSON.stringify(failedAnswer));
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
  await page.screenshot({ animations: "disabled", path: SHOTS + "/errors.png" });

  // 8. Phone width: the chat and its composer fill the screen (no page
  //    scrolling, nothing sideways); the lists live in a drawer behind the
  //    Menu button, which works by keyboard (Escape closes it, focus
  //    returns) and keeps its labels.
  await page.setViewportSize(PHONE);
  await page.reload();
  await page.locator("li.msg.user").first().waitFor();
  const phone = await page.evaluate(() => {
    const box = (sel) => document.querySelector(sel).getBoundingClientRect();
    return {
      composerTop: box("#composer").top,
      composerBottom: box("#composer").bottom,
      chatHeight: box("section.chat").height,
      scrolls: document.documentElement.scrollHeight - window.innerHeight,
      overflow: document.documentElement.scrollWidth - window.innerWidth,
      drawer: getComputedStyle(document.getElementById("sidebar")).visibility,
      expanded: document.getElementById("menu").getAttribute("aria-expanded"),
    };
  });
  check(phone.composerBottom <= PHONE.height && phone.composerTop > PHONE.height * 0.7, "the composer sits at the bottom of the screen: " + JSON.stringify(phone));
  check(phone.chatHeight > PHONE.height * 0.65, "the chat fills the screen: " + JSON.stringify(phone));
  check(phone.scrolls <= 0 && phone.overflow <= 0, "the page itself does not scroll at phone width: " + JSON.stringify(phone));
  check(phone.drawer === "hidden" && phone.expanded === "false", "the lists start closed behind the Menu button: " + JSON.stringify(phone));
  await page.screenshot({ animations: "disabled", path: SHOTS + "/phone.png" });
  // The skip link leads to the message box; Tab then reaches Send.
  await page.locator("body").focus();
  await page.keyboard.press("Tab");
  await page.keyboard.press("Enter");
  check(await page.evaluate(() => document.activeElement.id) === "message", "the skip link focuses the message box");
  await page.keyboard.press("Tab");
  check(await page.evaluate(() => document.activeElement.id) === "send", "Tab from the message box reaches Send");
  // The Menu button, by keyboard: the drawer opens with the focus on the
  // open conversation, the rest of the page inert; Escape closes it.
  await page.getByRole("button", { name: "Menu" }).focus();
  await page.keyboard.press("Enter");
  await page.locator("#sidebar").waitFor({ state: "visible" });
  const drawer = await page.evaluate(() => ({
    expanded: document.getElementById("menu").getAttribute("aria-expanded"),
    focus: document.activeElement.getAttribute("aria-label"),
    inDrawer: document.getElementById("sidebar").contains(document.activeElement),
    chatInert: document.querySelector("section.chat").inert,
  }));
  check(drawer.expanded === "true" && drawer.inDrawer && drawer.focus === "Open fail first" && drawer.chatInert,
    "the drawer opens by keyboard, focus on the open conversation, the chat inert: " + JSON.stringify(drawer));
  const unlabelledPhone = await page.evaluate(unlabelledControls);
  check(unlabelledPhone.length === 0, "unlabelled controls at phone width: " + unlabelledPhone.join(", "));
  const drawerOverflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(drawerOverflow <= 0, `horizontal overflow with the drawer open: ${drawerOverflow}px`);
  await page.screenshot({ animations: "disabled", path: SHOTS + "/phone-menu.png" });
  await page.keyboard.press("Escape");
  await page.locator("#sidebar").waitFor({ state: "hidden" });
  check(await page.evaluate(() => document.activeElement.id === "menu" && document.getElementById("menu").getAttribute("aria-expanded") === "false" && !document.querySelector("section.chat").inert),
    "Escape closes the drawer and gives the focus back to Menu");
  // Picking in the drawer closes it and leads to the message box.
  await page.getByRole("button", { name: "Menu" }).click();
  await page.getByRole("button", { name: "New conversation" }).click();
  await page.locator("#sidebar").waitFor({ state: "hidden" });
  await page.getByRole("heading", { name: "New conversation" }).waitFor();
  await page.getByRole("button", { name: "Menu" }).click();
  await page.getByRole("button", { name: "Open Streaming test" }).click();
  await page.locator("#sidebar").waitFor({ state: "hidden" });
  await page.getByRole("heading", { name: "Streaming test" }).waitFor();
  check(await page.evaluate(() => document.activeElement.id) === "message", "a conversation picked in the drawer: focus in the message box");
  check(addressOf(page).conversation === conversationId, "the address still names the conversation");
  await page.setViewportSize(DESKTOP);
  step("phone width", { phone, drawer });

  // 9. A second user, in another browser context, sees only their own
  //    conversations; the first user's list does not show theirs; signing
  //    out ends the session at once.
  const mine = await page.evaluate(() => [...document.querySelectorAll("#conversations .pick")].map((b) => b.textContent));
  const second = await newPage(await browser.newContext({ viewport: DESKTOP }), "second");
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
  const adminPage = await newPage(await browser.newContext({ viewport: DESKTOP }), "admin");
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
  await adminPage.screenshot({ animations: "disabled", path: SHOTS + "/usage.png" });

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
  await adminPage.screenshot({ animations: "disabled", path: SHOTS + "/usage-phone.png" });
  await adminPage.context().close();
  step("admin usage view", { expected, table: table[USER1], bar: last });

  // 11. Auth mode none: a first visit shows the chat at once (no sign-in,
  //     no error, no failed request); CSRF tokens still fetched and sent.
  //     The built-in user is an admin, without limits.
  const open = await newPage(context, "open");
  const openVisit = failedRequests(open);
  await open.goto(NOAUTH + "/");
  await open.getByText("No projects yet.").waitFor();
  check(await open.locator("main").isVisible() && await open.locator("#signin-form").isHidden() && await open.locator("#status").textContent() === "",
    "auth mode none: the first visit shows the chat, no sign-in, no error");
  check(openVisit.length === 0, "auth mode none: no request failed: " + JSON.stringify(openVisit));
  await open.getByLabel("New project name").fill("Keyless");
  await open.getByLabel("New project name").press("Enter");
  await open.getByRole("button", { name: "Open Keyless" }).waitFor();
  const openUsageLine = await open.evaluate(usageLine);
  check(JSON.stringify(openUsageLine.map((u) => u.text)) === JSON.stringify(["Today 0 tokens (no limit)", "This month 0 tokens (no limit)"]),
    "auth mode none: usage without limits: " + JSON.stringify(openUsageLine));
  check(await open.getByRole("button", { name: "Usage per user" }).isVisible(), "auth mode none: the usage view is there");
  step("auth mode none works without a key");

  // 12. The markdown renderer itself, case by case (input -> the DOM it
  //     builds, written out by a serializer of the test's own), then every
  //     prefix of the scripted answers as they stream: never an exception,
  //     never a raw fence or "**" outside code, never an element or link
  //     outside the safe subset.
  const cases = [
    ["Hello *world*, **bold**, __also__, ~~gone~~ and `a < b`", "<p>Hello <em>world</em>, <strong>bold</strong>, <strong>also</strong>, <del>gone</del> and <code>a &lt; b</code></p>"],
    ["# Title\n### Small", "<h3>Title</h3><h5>Small</h5>"],
    ["line one\nline two\n\nnext", "<p>line one<br>line two</p><p>next</p>"],
    ["- a\n- b\n  - c", "<ul><li><p>a</p></li><li><p>b</p><ul><li><p>c</p></li></ul></li></ul>"],
    ["Steps:\n1. one\n2. two", "<p>Steps:</p><ol><li><p>one</p></li><li><p>two</p></li></ol>"],
    ["3. three\n4. four", "<ol start=\"3\"><li><p>three</p></li><li><p>four</p></li></ol>"],
    ["2024. was a year\nand so on", "<ol start=\"2024\"><li><p>was a year<br>and so on</p></li></ol>"],
    ["[docs](https://example.com/a?b=1)", "<p><a href=\"https://example.com/a?b=1\" rel=\"noopener noreferrer\" target=\"_blank\">docs</a></p>"],
    ["[mail](mailto:me@example.com) <https://example.org>", "<p><a href=\"mailto:me@example.com\" rel=\"noopener noreferrer\" target=\"_blank\">mail</a> <a href=\"https://example.org/\" rel=\"noopener noreferrer\" target=\"_blank\">https://example.org</a></p>"],
    ["See https://example.com/x.", "<p>See <a href=\"https://example.com/x\" rel=\"noopener noreferrer\" target=\"_blank\">https://example.com/x</a>.</p>"],
    ["[x](javascript:alert(1)) [y](JAVASCRIPT:alert(2)) [z](/relative) [w](data:text/html,hi)", "<p>[x](javascript:alert(1)) [y](JAVASCRIPT:alert(2)) [z](/relative) [w](data:text/html,hi)</p>"],
    ["![alt](https://example.com/i.png)", "<p><a href=\"https://example.com/i.png\" rel=\"noopener noreferrer\" target=\"_blank\">alt</a></p>"],
    ["<img src=x onerror=alert(1)><script>alert(2)</script>", "<p>&lt;img src=x onerror=alert(1)&gt;&lt;script&gt;alert(2)&lt;/script&gt;</p>"],
    ["```html\n<b>bold</b>\n```", "<div class=\"code-block\"><pre><code class=\"language-html\">&lt;b&gt;bold&lt;/b&gt;</code></pre></div>"],
    ["```\nplain\n```\nafter", "<div class=\"code-block\"><pre><code>plain</code></pre></div><p>after</p>"],
    ["```\" onmouseover=alert(1)\nx\n```", "<div class=\"code-block\"><pre><code>x</code></pre></div>"],
    ["use snake_case_names and 2 * 3 * 4", "<p>use snake_case_names and 2 * 3 * 4</p>"],
    ["\\*not em\\* and ***both***", "<p>*not em* and <strong><em>both</em></strong></p>"],
    ["> quoted\n> more", "<blockquote><p>quoted<br>more</p></blockquote>"],
    ["---", "<hr>"],
    ["| a | b |\n|:-:|--:|\n| 1 | **2** |", "<div class=\"table-box\"><table><thead><tr><th class=\"align-center\">a</th><th class=\"align-right\">b</th></tr></thead><tbody><tr><td class=\"align-center\">1</td><td class=\"align-right\"><strong>2</strong></td></tr></tbody></table></div>"],
    // Unfinished, as while streaming: shown as it will most likely end.
    [{ streaming: true }, "Some **bold", "<p>Some <strong>bold</strong></p>"],
    [{ streaming: false }, "Some **bold", "<p>Some **bold</p>"],
    [{ streaming: true }, "Type `npm", "<p>Type <code>npm</code></p>"],
    [{ streaming: true }, "Then **", "<p>Then </p>"],
    [{ streaming: true }, "```python\nprint(1)", "<div class=\"code-block\"><pre><code class=\"language-python\">print(1)</code></pre></div>"],
  ];
  const renderer = await open.evaluate(({ cases, answers }) => {
    const ALLOWED = new Set(["P", "H3", "H4", "H5", "H6", "STRONG", "EM", "DEL", "CODE", "PRE", "UL", "OL", "LI", "A", "BR", "BLOCKQUOTE", "HR",
      "TABLE", "THEAD", "TBODY", "TR", "TH", "TD", "DIV", "SPAN", "BUTTON"]);
    const esc = (t) => t.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
    // The DOM as text: tags with their class, href, rel, target and start;
    // a code block's head (language and Copy) is checked elsewhere.
    const show = (node) => [...node.childNodes].map((n) => {
      if (n.nodeType === Node.TEXT_NODE) return esc(n.textContent);
      if (n.classList.contains("code-head")) return "";
      const tag = n.tagName.toLowerCase();
      const attrs = ["class", "href", "rel", "target", "start"].filter((a) => n.hasAttribute(a)).map((a) => ` ${a}="${n.getAttribute(a)}"`).join("");
      return ["br", "hr"].includes(tag) ? `<${tag}${attrs}>` : `<${tag}${attrs}>${show(n)}</${tag}>`;
    }).join("");
    const box = (frag) => { const d = document.createElement("div"); d.append(frag); return d; };
    const wrong = [];
    for (const c of cases) {
      const [opts, text, want] = c.length === 3 ? c : [{}, c[0], c[1]];
      const got = show(box(Markdown.render(text, opts)));
      if (got !== want) wrong.push({ text, want, got });
    }
    // Every prefix of the scripted answers, as the page draws them.
    const problems = [];
    for (const answer of answers) {
      for (let n = 0; n <= answer.length; n++) {
        let d;
        try { d = box(Markdown.render(answer.slice(0, n), { streaming: true })); } catch (e) { problems.push(`prefix ${n}: threw ${e.message}`); continue; }
        const outside = [...d.querySelectorAll("*")].filter((e) => !ALLOWED.has(e.tagName)).map((e) => e.tagName);
        const links = [...d.querySelectorAll("a")].filter((a) => !/^(https?|mailto):/.test(a.getAttribute("href")) || a.rel !== "noopener noreferrer");
        const copy = d.cloneNode(true);
        copy.querySelectorAll("pre, code, .code-head").forEach((e) => e.remove());
        const raw = /```|\*\*/.exec(copy.textContent);
        if (outside.length || links.length || raw) problems.push(`prefix ${n} of ${JSON.stringify(answer.slice(0, 30))}: ${JSON.stringify({ outside, links: links.map((a) => a.href), raw: raw && copy.textContent })}`);
      }
    }
    return { wrong, problems: problems.slice(0, 5), count: problems.length };
  }, { cases, answers: [MARKDOWN_ANSWER, HOSTILE_ANSWER] });
  check(renderer.wrong.length === 0, "markdown cases: " + JSON.stringify(renderer.wrong, null, 1));
  check(renderer.count === 0, `streamed prefixes (${renderer.count} bad): ` + JSON.stringify(renderer.problems));
  step("markdown renderer", { cases: cases.length, prefixes: MARKDOWN_ANSWER.length + HOSTILE_ANSWER.length + 2 });

  // 13. A markdown answer in the page: drawn while it streams (a code
  //     block appears before its fence closes; no raw "```" or "**" is ever
  //     shown), then rendered in full; its code block's Copy button copies
  //     the code, or selects it when the browser refuses.
  await open.evaluate(() => {
    window.__stream = { drawn: 0, codeWhileStreaming: false, raw: [] };
    new MutationObserver(() => {
      const b = [...document.querySelectorAll("li.msg.assistant")].pop();
      if (!b || !b.classList.contains("streaming")) return;
      const t = b.querySelector(".text").cloneNode(true);
      window.__stream.drawn++;
      if (t.querySelector(".code-block")) window.__stream.codeWhileStreaming = true;
      t.querySelectorAll("pre, code, .code-head").forEach((e) => e.remove());
      if (/```|\*\*/.test(t.textContent)) window.__stream.raw.push(t.textContent);
    }).observe(document.getElementById("messages"), { childList: true, subtree: true, characterData: true });
  });
  await open.getByLabel("Message", { exact: true }).fill("show me some markdown");
  await open.getByLabel("Message", { exact: true }).press("Enter");
  await answered(open);
  const streamed = await open.evaluate(() => window.__stream);
  check(streamed.drawn > 5 && streamed.codeWhileStreaming && streamed.raw.length === 0, "the answer is drawn as markdown while it streams: " + JSON.stringify(streamed));
  const codeText = /```bash\n([\s\S]*?)\n```/.exec(MARKDOWN_ANSWER)[1];
  const md = await open.evaluate(() => {
    const b = [...document.querySelectorAll("li.msg.assistant")].pop();
    const q = (sel) => [...b.querySelectorAll(sel)].map((e) => e.textContent);
    return {
      cls: b.className,
      h4: q(".text h4"), strong: q(".text strong"), em: q(".text em"), del: q(".text del"), inlineCode: q(".text p code"),
      code: q("pre code.language-bash"), lang: q(".code-lang"), copy: [...b.querySelectorAll("button.copy-code")].map((x) => x.getAttribute("aria-label")),
      ol: q(".text > ol > li").length, nested: q(".text > ol > li:nth-child(2) > ul > li"), ul: q(".text > ul > li").length,
      links: [...b.querySelectorAll(".text a")].map((a) => [a.getAttribute("href"), a.rel, a.target, a.textContent]),
      quote: q("blockquote"), cells: q("td"), right: q("td.align-right"),
      bold: b.querySelectorAll("b").length,
      title: document.getElementById("chat-title").textContent,
    };
  });
  const wantMd = {
    cls: "msg assistant complete", h4: ["Setting it up"], strong: ["this once"], em: ["restart"], del: ["Old way"], inlineCode: ["server"],
    code: [codeText], lang: ["bash"], copy: ["Copy bash code"], ol: 2, nested: ["a nested point"], ul: 2,
    links: [["https://example.com/guide", "noopener noreferrer", "_blank", "the guide"], ["https://example.org/faq", "noopener noreferrer", "_blank", "https://example.org/faq"]],
    quote: ["Quoted advice"], cells: ["size", "3"], right: ["3"], bold: 0, title: "show me some markdown",
  };
  check(JSON.stringify(md) === JSON.stringify(wantMd), "the markdown answer rendered: " + JSON.stringify({ got: md, want: wantMd }));
  await open.screenshot({ animations: "disabled", path: SHOTS + "/markdown.png" });
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: NOAUTH });
  await open.getByRole("button", { name: "Copy bash code" }).click();
  await open.locator("#status", { hasText: "The code is copied to the clipboard." }).waitFor({ timeout: 5000 });
  const copied = await open.evaluate(() => navigator.clipboard.readText());
  check(copied === codeText, "Copy puts the code on the clipboard: " + JSON.stringify(copied));
  await open.evaluate(() => { navigator.clipboard.writeText = () => Promise.reject(new DOMException("refused", "NotAllowedError")); });
  await open.getByRole("button", { name: "Copy bash code" }).click();
  await open.locator("#status", { hasText: "The browser did not allow copying: the code is selected, press Ctrl+C" }).waitFor({ timeout: 5000 });
  check(await open.evaluate(() => window.getSelection().toString()) === codeText, "a refused copy selects the code instead");
  step("markdown answer", { drawn: streamed.drawn });

  // 14. Stored XSS: a hostile answer (and message) stays text, live and
  //     after a reload: no element but the safe subset, no link but http(s)
  //     and mailto, nothing run (no CSP report either: see pageProblems).
  const hostileMessage = "a hostile answer please <img src=x onerror=\"window.__xss=10\">";
  await open.getByLabel("Message", { exact: true }).fill(hostileMessage);
  await open.getByLabel("Message", { exact: true }).press("Enter");
  await answered(open);
  const inert = () => {
    const m = document.getElementById("messages");
    const answers = [...m.querySelectorAll("li.msg.assistant")];
    const b = answers.find((a) => a.textContent.includes("[click me]"));
    const users = [...m.querySelectorAll("li.msg.user .text")].map((u) => u.textContent);
    return {
      xss: window.__xss === undefined ? null : window.__xss,
      elements: [...m.querySelectorAll("img, script, iframe, svg, object, embed, style, link, form, input, frame, video, audio, source")].map((e) => e.tagName),
      badLinks: [...m.querySelectorAll("a")].filter((a) => !/^(https?|mailto):/.test(a.getAttribute("href")) || a.rel !== "noopener noreferrer").map((a) => a.getAttribute("href")),
      links: b ? [...b.querySelectorAll("a")].map((a) => a.getAttribute("href")) : null,
      text: b ? b.querySelector(".text").textContent : null,
      code: b ? [...b.querySelectorAll("pre code")].map((c) => c.textContent) : null,
      attrs: [...m.querySelectorAll("*")].flatMap((e) => [...e.attributes].map((a) => a.name)).filter((n) => n.startsWith("on") || n === "style" || n === "src"),
      user: users[users.length - 1],
    };
  };
  const checkInert = (got, when) => {
    check(got.xss === null && got.elements.length === 0 && got.badLinks.length === 0 && got.attrs.length === 0, `${when}: nothing hostile became live: ` + JSON.stringify(got));
    check(JSON.stringify(got.links) === JSON.stringify(["https://example.com/pixel.png", "https://example.com/fine"]), `${when}: only the safe links are links: ` + JSON.stringify(got.links));
    check(got.text && got.text.includes('<img src=x onerror="window.__xss=1">') && got.text.includes("[click me](javascript:window.__xss=2)")
      && got.text.includes("[this](JaVaScRiPt:window.__xss=3)") && got.text.includes("<script>window.__xss=5</script>"), `${when}: the hostile markup shows as text: ` + JSON.stringify(got.text));
    check(got.code && got.code.length === 1 && got.code[0].startsWith('<img src=x onerror="window.__xss=8">'), `${when}: HTML in a code fence is code text: ` + JSON.stringify(got.code));
    check(got.user === hostileMessage, `${when}: the person's own message shows as typed: ` + JSON.stringify(got.user));
  };
  checkInert(await open.evaluate(inert), "live");
  await open.reload();
  await open.getByRole("heading", { name: "show me some markdown" }).waitFor();
  await open.locator("li.msg.assistant .code-block").nth(1).waitFor();
  checkInert(await open.evaluate(inert), "after a reload");
  step("hostile answer stays inert");

  // 15. How answers end, each marked its own way (badge, border, note),
  //     live and after a reload: cut at the length limit, stopped
  //     (partial), failed (no answer).
  await open.getByLabel("Message", { exact: true }).fill("write a long essay");
  await open.getByLabel("Message", { exact: true }).press("Enter");
  await answered(open);
  const cut = await open.evaluate(lastAnswer);
  const cutStatus = await open.locator("#status").textContent();
  check(cut.cls.includes("cut") && cut.badge === "cut at the length limit" && cut.note === "Cut at the length limit: the answer is incomplete."
    && cut.text.includes(`Paragraph ${LONG_PARAGRAPHS} of a long essay`) && cutStatus === "The answer was cut at the length limit.",
  "an answer cut at the length limit says so at both ends: " + JSON.stringify({ ...cut, text: cut.text.length, cutStatus }));
  await open.getByLabel("Message", { exact: true }).fill("now answer slowly");
  await open.keyboard.press("Enter");
  await open.waitForFunction(() => {
    const b = [...document.querySelectorAll("li.msg.assistant .text")].pop();
    return b && b.textContent.length > 0;
  }, null, { timeout: 15000 });
  await open.keyboard.press("Escape");
  await open.getByText("Stopped. The partial answer is kept.").waitFor({ timeout: 5000 });
  const partial = await open.evaluate(lastAnswer);
  await open.getByLabel("Message", { exact: true }).fill("and now fail");
  await open.keyboard.press("Enter");
  await answered(open);
  const failed = await open.evaluate(lastAnswer);
  const endings = [cut, partial, failed];
  const distinct = (key) => new Set(endings.map((e) => e[key])).size === endings.length;
  check(partial.badge === "partial answer" && failed.badge === "no answer" && failed.text.startsWith("The model server returned an error."),
    "partial and failed answers marked: " + JSON.stringify({ partial, failed }));
  check(distinct("badge") && distinct("cls") && distinct("border") && distinct("note"), "the three endings look different: " + JSON.stringify(endings.map(({ badge, cls, border, note }) => ({ badge, cls, border, note }))));
  await open.screenshot({ animations: "disabled", path: SHOTS + "/endings.png" });
  let after = null;
  for (let i = 0; i < 40; i++) {
    await open.reload();
    await open.locator("li.msg.assistant.error").first().waitFor();
    after = await open.evaluate(() => [...document.querySelectorAll("li.msg.assistant")].slice(-3)
      .map((b) => [b.className, (b.querySelector(".badge") || {}).textContent || null]));
    if (after[1][0].includes("partial")) break;
    await sleep(250);
  }
  check(JSON.stringify(after) === JSON.stringify([["msg assistant complete cut", "cut at the length limit"], ["msg assistant partial", "partial answer"], ["msg assistant error", "no answer"]]),
    "the endings after a reload: " + JSON.stringify(after));
  step("endings marked", { after });

  // 16. The same conversation at phone width: code and tables scroll
  //     inside their answer, never the page sideways.
  await open.setViewportSize(PHONE);
  await open.locator("li.msg.assistant .code-block").first().scrollIntoViewIfNeeded();
  const openOverflow = await open.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(openOverflow <= 0, `horizontal overflow of markdown answers at phone width: ${openOverflow}px`);
  await open.screenshot({ animations: "disabled", path: SHOTS + "/phone-markdown.png" });
  // Deleting the open conversation leaves a new one, and the address says so.
  open.answers.push(true);
  await open.getByRole("button", { name: "Menu" }).click();
  await open.getByRole("button", { name: "Delete show me some markdown" }).click();
  await open.getByRole("button", { name: "Open show me some markdown" }).waitFor({ state: "detached" });
  await open.locator("#chat-title", { hasText: "New conversation" }).waitFor();
  check(!addressOf(open).conversation, "a deleted conversation leaves the address: " + open.url());
  await open.close();
  step("phone markdown, conversation deleted", { overflow: openOverflow });

  // 17. A page on another origin cannot POST to portcullis.
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
