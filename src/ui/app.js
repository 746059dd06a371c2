// portcullis built-in chat page. No framework, no build step, no inline
// script: served from /ui/app.js under `default-src 'self'`. Everything is
// rendered with textContent or built as DOM nodes (answers' markdown by
// /ui/markdown.js), never parsed as HTML, so message text is inert.
"use strict";

// Signed in with a session cookie (HttpOnly: this script never sees it),
// or nothing to sign in to (auth mode none). No key is kept by the page.
const state = {
  user: null,
  auth: null,
  csrf: null,
  projects: [],
  project: null,
  conversations: [],
  conversation: null,
  // Counts changes of what is shown, so an answer still streaming can tell
  // whether the person has moved on to another conversation.
  view: 0,
  controller: null,
  // GET /api/me's `usage`: limits (0: none), today's and this month's tokens.
  usage: null,
  // The admin usage view: its days (UTC, oldest first) and the user charted.
  usageDays: [],
  usageUser: null,
};
const $ = (id) => document.getElementById(id);

function setStatus(text, kind) {
  const el = $("status");
  el.textContent = text || "";
  el.className = "status" + (kind ? " " + kind : "");
}

// Turns an error response into a sentence a person can act on.
async function describeError(res) {
  let body = null;
  try { body = await res.json(); } catch (_) { /* not JSON */ }
  const err = body && body.error ? body.error : {};
  const code = err.code || "";
  const retry = res.headers.get("Retry-After");
  switch (code) {
    case "rate_limited": return `Too many requests: please wait ${retry ? retry + " seconds" : "a moment"} and try again.`;
    case "unauthorized": return err.message === "the name or the password is wrong" ? "The name or the password is wrong." : "Your session has ended. Please sign in again.";
    case "forbidden": return "Your account may not do this (it may have been disabled).";
    case "upstream_unavailable": return "The model server cannot be reached right now. Try again later.";
    case "upstream_timeout": return "The model server did not answer in time. Try again.";
    case "upstream_error": return "The model server returned an error. Try again, or check its logs.";
    case "server_busy": return `The server is busy; try again ${retry ? "in " + retry + " seconds" : "shortly"}.`;
    case "validation_failed": return `Please check ${err.field || "the input"}: ${err.message || "not valid"}.`;
    case "csrf_token_invalid": return "The page's security token expired. Please retry.";
    case "origin_not_allowed": return "The server refused a request from this page's address (origin).";
    case "not_found": return "That item no longer exists. The lists have been refreshed.";
    case "payload_too_large": return "That message is too large for the server.";
    // The window (day or month) is named only in the message.
    case "budget_exceeded": return `Your token budget for ${/month/.test(err.message || "") ? "this month" : "today"} is spent; it renews ${retry ? "in " + duration(Number(retry)) : "later"}.`;
    default: return err.message ? `${err.message} (${code || res.status})` : `The request failed (HTTP ${res.status}).`;
  }
}

// "40 seconds", "12 minutes", "about 5 hours", "about 3 days".
function duration(seconds) {
  if (seconds < 120) return `${seconds} seconds`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} minutes`;
  if (seconds < 172800) return `about ${Math.round(seconds / 3600)} hours`;
  return `about ${Math.round(seconds / 86400)} days`;
}

// An error thrown by apiJson is already a sentence; fetch's own TypeError
// (no answer at all) is not.
function sentence(e) {
  return e instanceof TypeError ? "Network error: the server could not be reached." : e.message;
}

async function csrfToken(refresh) {
  if (state.csrf && !refresh) return state.csrf;
  const res = await fetch("/api/csrf-token", { headers: { "Accept": "application/json" } });
  if (!res.ok) return null;
  state.csrf = (await res.json()).token;
  return state.csrf;
}

// fetch with the session cookie (same origin), JSON and (for unsafe
// methods) the CSRF token; a refused token is fetched anew and the request
// sent once more.
async function api(method, path, body, opts) {
  const headers = { "Accept": opts && opts.stream ? "text/event-stream, application/json" : "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const unsafe = method !== "GET";
  for (let attempt = 0; ; attempt++) {
    if (unsafe) {
      const token = await csrfToken(attempt > 0);
      if (token) headers["X-CSRF-Token"] = token;
    }
    const res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: opts && opts.signal,
      cache: "no-store",
    });
    if (res.status === 403 && unsafe && attempt === 0) {
      try { if ((await res.clone().json()).error.code === "csrf_token_invalid") continue; } catch (_) { /* not ours */ }
    }
    return res;
  }
}

async function apiJson(method, path, body) {
  const res = await api(method, path, body);
  if (!res.ok) throw new Error(await describeError(res));
  return res.status === 204 ? null : res.json();
}

function button(label, cls, onClick, aria) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  if (cls) b.className = cls;
  if (aria) b.setAttribute("aria-label", aria);
  b.addEventListener("click", onClick);
  return b;
}

// One list row per item: a button that opens it, then Rename and Delete.
// The rows are built anew each time; the button that had the focus gets it
// back, so a keyboard user keeps their place.
function renderList(ul, items, current, label, actions) {
  const focused = ul.contains(document.activeElement) ? document.activeElement.dataset.key : null;
  ul.replaceChildren();
  if (items.length === 0) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = actions.empty;
    ul.append(li);
    return;
  }
  for (const item of items) {
    const li = document.createElement("li");
    const name = label(item);
    const open = button(name, "pick", () => actions.pick(item), "Open " + name);
    open.title = name;
    if (current && current.id === item.id) {
      li.className = "active";
      open.setAttribute("aria-current", "true");
    }
    const rename = button("Rename", "small", () => actions.rename(item), "Rename " + name);
    const remove = button("Delete", "small danger", () => actions.remove(item), "Delete " + name);
    open.dataset.key = "open " + item.id;
    rename.dataset.key = "rename " + item.id;
    remove.dataset.key = "delete " + item.id;
    li.append(open, rename, remove);
    ul.append(li);
  }
  const again = focused && [...ul.querySelectorAll("button")].find((b) => b.dataset.key === focused);
  if (again) again.focus();
}

function conversationLabel(c) {
  return c.title || "Untitled, " + c.created_at.slice(0, 16).replace("T", " ");
}

// The address names the project shown and the open conversation
// (/?project=ID&conversation=ID), so a reload, a bookmark and the browser's
// Back and Forward find both again.
function addressFor(project, conversation) {
  const q = new URLSearchParams();
  if (project) q.set("project", project.id);
  if (conversation) q.set("conversation", conversation.id);
  const query = q.toString();
  return location.pathname + (query ? "?" + query : "");
}

// Writes what is shown into the address: "push" after a person's choice
// (a new step for Back), "replace" to correct or complete the current one.
function remember(how) {
  const url = addressFor(state.project, state.conversation);
  if (url === location.pathname + location.search + location.hash) return;
  if (how === "push") history.pushState(null, "", url);
  else history.replaceState(null, "", url);
}

// The ids the address names. Links of an older page (#c=ID) still open
// their conversation.
function addressIds() {
  const q = new URLSearchParams(location.search);
  const old = /^#c=(.+)$/.exec(location.hash);
  let conversation = q.get("conversation");
  if (!conversation && old) {
    try { conversation = decodeURIComponent(old[1]); } catch (_) { /* malformed: none */ }
  }
  return { project: q.get("project"), conversation };
}

// GET /api/{kind}s/{id}: the item, or null when it does not exist (or is
// someone else's: the same 404). Other failures throw a sentence.
async function lookUp(kind, id) {
  const res = await api("GET", `/api/${kind}s/` + encodeURIComponent(id));
  if (res.status === 404) return null;
  if (!res.ok) throw new Error(await describeError(res));
  return res.json();
}

// Takes what the address names as the state to show. An id that no
// longer exists is dropped from the address; returns the sentence that
// tells the person so ({text, kind}), or null.
async function restoreFromAddress() {
  const ids = addressIds();
  const missing = [];
  state.view++;
  try {
    state.project = ids.project ? await lookUp("project", ids.project) : null;
    if (ids.project && !state.project) missing.push("project");
    state.conversation = ids.conversation ? await lookUp("conversation", ids.conversation) : null;
    if (ids.conversation && !state.conversation) missing.push("conversation");
  } catch (e) {
    state.project = null;
    state.conversation = null;
    remember("replace");
    return { text: "What the address names could not be opened. " + sentence(e), kind: "error" };
  }
  remember("replace");
  if (!missing.length) return null;
  const gone = missing.length > 1
    ? "no longer exist (or are not yours), so they are not shown"
    : "no longer exists (or is not yours), so it is not shown";
  return { text: `The ${missing.join(" and the ")} named in the address ${gone}.`, kind: "warn" };
}

// Shows what the address names: at start, after signing in, and on Back
// and Forward.
async function openFromAddress() {
  const warning = await restoreFromAddress();
  await refresh();
  // After refresh, which clears the status line when all went well.
  if (warning) setStatus(warning.text, warning.kind);
}

// Shows a project's conversations (null: all) and one conversation (null:
// a new one, created on the server by its first message). `how` is passed
// to remember(); none when the address already says so (Back, Forward).
async function show(project, conversation, how) {
  state.project = project;
  state.conversation = conversation;
  state.view++;
  if (how) remember(how);
  await refresh();
}

function pickProject(p) {
  const same = state.project && state.project.id === p.id;
  return show(same ? null : p, null, "push");
}

async function loadProjects() {
  const page = await apiJson("GET", "/api/projects?limit=200");
  state.projects = page.items;
  if (state.project) {
    // Deleted meanwhile (in another tab): back to all projects.
    state.project = state.projects.find((p) => p.id === state.project.id) || null;
    if (!state.project) remember("replace");
  }
  renderList($("projects"), state.projects, state.project, (p) => p.name, {
    empty: "No projects yet.",
    pick: pickProject,
    rename: async (p) => {
      const name = prompt("New name for the project", p.name);
      if (!name || !name.trim()) return;
      await guarded(() => apiJson("PATCH", "/api/projects/" + encodeURIComponent(p.id), { name: name.trim() }));
      refresh();
    },
    remove: async (p) => {
      if (!confirm(`Delete the project "${p.name}" with all its conversations?`)) return;
      const done = await guarded(() => apiJson("DELETE", "/api/projects/" + encodeURIComponent(p.id)), "Project deleted.");
      if (done !== undefined && state.project && state.project.id === p.id) await show(null, null, "replace");
      else refresh();
    },
  });
}

async function loadConversations() {
  const q = state.project ? "&project_id=" + encodeURIComponent(state.project.id) : "";
  const page = await apiJson("GET", "/api/conversations?limit=200" + q);
  state.conversations = page.items;
  if (state.conversation) {
    const fresh = state.conversations.find((c) => c.id === state.conversation.id);
    if (fresh) state.conversation = fresh;
  }
  $("conv-scope").textContent = state.project ? "in " + state.project.name : "(all projects)";
  renderList($("conversations"), state.conversations, state.conversation, conversationLabel, {
    empty: "No conversations yet: write a message to start one.",
    pick: async (c) => {
      await show(state.project, c, "push");
      closeMenu();
      $("message").focus();
    },
    rename: async (c) => {
      const title = prompt("New title for the conversation", c.title || "");
      if (title === null) return;
      await guarded(() => apiJson("PATCH", "/api/conversations/" + encodeURIComponent(c.id), { title: title.trim() || null }));
      refresh();
    },
    remove: async (c) => {
      if (!confirm(`Delete the conversation "${conversationLabel(c)}"?`)) return;
      const done = await guarded(() => apiJson("DELETE", "/api/conversations/" + encodeURIComponent(c.id)), "Conversation deleted.");
      if (done !== undefined && state.conversation && state.conversation.id === c.id) await show(state.project, null, "replace");
      else refresh();
    },
  });
}

// How a message ended, each outcome marked its own way: words in its meta
// line (for everyone) and a class (for the colour and border); an answer
// that did not end normally also gets a note after its text, so even a
// long one says so at both ends. "cut" is a complete answer whose
// finish_reason is "length" (stopped by the length limit).
const OUTCOMES = {
  streaming: { label: "answering…" },
  partial: { label: "partial answer", note: "The answer stopped before its end; what arrived is kept." },
  error: { label: "no answer" },
  cut: { label: "cut at the length limit", note: "Cut at the length limit: the answer is incomplete." },
};

function messageItem(role, content, status, when, finishReason) {
  const li = document.createElement("li");
  const meta = document.createElement("span");
  meta.className = "meta";
  const text = document.createElement("div");
  text.className = "text";
  li.append(meta, text);
  setMessageStatus(li, role, status || "complete", when, finishReason);
  showText(li, content, status || "complete");
  return li;
}

function setMessageStatus(li, role, status, when, finishReason) {
  if (when) li.dataset.when = when;
  const outcome = status === "complete" && finishReason === "length" ? "cut" : status;
  li.className = `msg ${role} ${status}` + (outcome === "cut" ? " cut" : "");
  const who = role === "user" ? "You" : role === "assistant" ? "Assistant" : "System";
  const meta = li.querySelector(".meta");
  meta.textContent = who;
  if (li.dataset.when) meta.append(" · " + new Date(li.dataset.when).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
  const o = OUTCOMES[outcome];
  if (o) {
    const badge = document.createElement("span");
    badge.className = "badge " + outcome;
    badge.textContent = o.label;
    meta.append(" · ", badge);
  }
  const old = li.querySelector(".end-note");
  if (old) old.remove();
  if (o && o.note) {
    const note = document.createElement("p");
    note.className = "end-note " + outcome;
    note.textContent = o.note;
    li.append(note);
  }
}

// An answer's text as markdown (a partial one may end in the middle of
// something); the person's own words and error sentences as typed.
function showText(li, text, status) {
  const out = li.querySelector(".text");
  const markdown = li.classList.contains("assistant") && status !== "error";
  out.classList.toggle("md", markdown);
  if (!markdown) {
    out.textContent = text;
    return;
  }
  try {
    out.replaceChildren(Markdown.render(text, { streaming: status !== "complete" }));
  } catch (_) {
    // A renderer bug must not cost the answer: show it as text.
    out.textContent = text;
  }
}

function showTitle() {
  $("chat-title").textContent = state.conversation ? conversationLabel(state.conversation) : "New conversation";
}

async function loadMessages() {
  const ol = $("messages");
  showTitle();
  if (!state.conversation) {
    ol.replaceChildren();
    $("empty-chat").hidden = false;
    return;
  }
  const items = [];
  let cursor = null;
  do {
    const page = await apiJson("GET", `/api/conversations/${encodeURIComponent(state.conversation.id)}/messages?limit=200` + (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
    for (const m of page.items) {
      const content = m.status === "error" && !m.content ? "No answer was received." : m.content;
      items.push(messageItem(m.role, content, m.status, m.created_at, m.finish_reason));
    }
    cursor = page.next_cursor;
  } while (cursor);
  ol.replaceChildren(...items);
  $("empty-chat").hidden = items.length > 0;
  scrollToEnd();
}

function scrollToEnd() {
  const ol = $("messages");
  ol.scrollTop = ol.scrollHeight;
}

// Runs fn; shows its error in the status line. Returns undefined on error.
async function guarded(fn, okText) {
  try {
    const r = await fn();
    setStatus(okText || "");
    return r;
  } catch (e) {
    setStatus(e.message, "error");
    return undefined;
  }
}

async function refresh() {
  if (!state.user) return;
  await guarded(async () => { await loadProjects(); await loadConversations(); await loadMessages(); });
  if (/session has ended/.test($("status").textContent)) await whoAmI();
}

// Shows the sign-in form, or who is signed in (with their usage, and the
// usage view's button for admins).
function showSignedIn() {
  const signedIn = !!state.user;
  $("signin-form").hidden = signedIn;
  $("who").hidden = !signedIn;
  $("sign-out").hidden = state.auth !== "session";
  $("open-usage").hidden = !signedIn || state.user.role !== "admin";
  $("who-name").textContent = signedIn ? "Signed in as " + state.user.name : "";
  showMyUsage(signedIn ? state.usage : null);
  if (!signedIn && $("usage-dialog").open) $("usage-dialog").close();
  $("menu").hidden = !signedIn;
  if (!signedIn) setMenu(false);
  document.querySelector("main").hidden = !signedIn;
}

// Whether this page may be signed in: /api/csrf-token (public) says
// whether the request carried a live session (or needs none), so a first
// visit shows the form without a 401 from /api/me in the console. In doubt
// (an older server, a network error): ask /api/me.
async function maybeSignedIn() {
  try {
    const res = await fetch("/api/csrf-token", { headers: { "Accept": "application/json" } });
    if (!res.ok) return true;
    const body = await res.json();
    state.csrf = body.token;
    return body.signed_in !== false;
  } catch (_) {
    return true;
  }
}

// Asks the server who this page is signed in as (nobody: the form).
async function whoAmI() {
  let res = null;
  if (await maybeSignedIn()) {
    try { res = await api("GET", "/api/me"); } catch (_) { /* offline */ }
  }
  if (res && res.ok) {
    const me = await res.json();
    state.user = me.user;
    state.auth = me.auth;
    state.usage = me.usage || null;
  } else {
    state.user = null;
    state.auth = null;
    state.usage = null;
    state.usageUser = null;
    state.project = null;
    state.conversation = null;
    $("projects").replaceChildren();
    $("conversations").replaceChildren();
    $("messages").replaceChildren();
  }
  showSignedIn();
  return !!state.user;
}

// Parses a text/event-stream body as it arrives: onEvent(name, data).
async function readSse(res, onEvent) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue; // ping
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}

function setBusy(busy) {
  $("stop").disabled = !busy;
  $("send").disabled = busy;
  $("messages").setAttribute("aria-busy", busy ? "true" : "false");
}

// Whether the message list is scrolled to (nearly) its end: an answer
// growing below keeps it there, but does not pull back a person who
// scrolled up to read.
function nearEnd() {
  const ol = $("messages");
  return ol.scrollHeight - ol.scrollTop - ol.clientHeight < 48;
}

// Sends a message and streams the answer into a new bubble. Without an
// open conversation, the server creates one (titled from the message, in
// the project shown) and names it in the stream's first event.
async function send(text) {
  const ol = $("messages");
  const view = state.view;
  $("empty-chat").hidden = true;
  const mine = messageItem("user", text, "complete", new Date().toISOString());
  const bubble = messageItem("assistant", "", "streaming", new Date().toISOString());
  ol.append(mine, bubble);
  scrollToEnd();
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  setStatus("Answering… (Stop or Escape ends the answer)");
  const body = { message: text, stream: true };
  // A first message creates its conversation even when the answer then
  // fails before streaming (the server keeps the message); that reply
  // names no conversation, so the page finds the new one in the list.
  const known = state.conversation ? null : new Set((state.conversations || []).map((c) => c.id));
  if (state.conversation) body.conversation_id = state.conversation.id;
  else if (state.project) body.project_id = state.project.id;
  // The answer so far; drawn at most once per frame, since each drawing
  // renders all of it again (so an unclosed fence or emphasis is redrawn
  // right once it closes).
  let answer = "";
  let frame = 0;
  const draw = () => {
    frame = 0;
    const follow = nearEnd();
    showText(bubble, answer, "streaming");
    if (follow) scrollToEnd();
  };
  // The answer's outcome; an error bubble holds the sentence saying why.
  const end = (status, message, kind, finishReason) => {
    if (frame) cancelAnimationFrame(frame);
    frame = 0;
    setMessageStatus(bubble, "assistant", status, undefined, finishReason);
    showText(bubble, status === "error" ? message : answer, status);
    setStatus(message, kind);
  };
  try {
    const res = await api("POST", "/api/chat", body, { signal: controller.signal, stream: true });
    if (!res.ok) {
      const why = await describeError(res);
      if (res.status >= 500 && res.status !== 503) {
        // The server kept the message and recorded the failed answer.
        end("error", why, "error");
        if (known) await adoptNewConversation(known, view);
      } else {
        // Refused before anything was stored: give the text back to retry.
        mine.remove();
        bubble.remove();
        $("message").value = text;
        setStatus(why, "error");
      }
      return;
    }
    let finished = false;
    let failed = false;
    await readSse(res, (name, data) => {
      if (name === "start") {
        // A new conversation now exists: name it in the address and list
        // it (with its title) at once, unless the person moved on.
        if (!state.conversation && state.view === view) {
          state.conversation = { id: data.conversation_id, project_id: state.project ? state.project.id : null, title: null, created_at: new Date().toISOString() };
          remember("replace");
          loadConversations().then(showTitle, () => { /* the list is loaded again at the end */ });
        }
      } else if (name === "delta") {
        answer += data.content;
        if (!frame) frame = requestAnimationFrame(draw);
      } else if (name === "done") {
        finished = true;
        if (data.finish_reason === "length") end("complete", "The answer was cut at the length limit.", "warn", "length");
        else end("complete", "");
      } else if (name === "error") {
        failed = true;
        end(answer ? "partial" : "error", (data.message || "The answer failed.") + " (" + (data.code || "error") + ")", "error");
      }
    });
    if (!finished && !failed) end(answer ? "partial" : "error", "The answer ended early.", "warn");
  } catch (e) {
    if (e.name === "AbortError") end(answer ? "partial" : "error", answer ? "Stopped. The partial answer is kept." : "Stopped before any answer arrived.");
    else end(answer ? "partial" : "error", "Network error: the server could not be reached.", "error");
  } finally {
    state.controller = null;
    setBusy(false);
    const keep = $("status").textContent;
    const kind = $("status").className.replace("status", "").trim();
    await guarded(loadConversations);
    showTitle();
    setStatus(keep, kind);
    // The answer (or a refusal by a budget) changed what is spent.
    await refreshMyUsage();
  }
}

// After a first message whose answer failed before streaming: the one
// conversation that was not in the list before becomes the open one (in
// the address too), so a retry continues it instead of starting another.
async function adoptNewConversation(known, view) {
  try { await loadConversations(); } catch (_) { return; }
  const fresh = state.conversations.filter((c) => !known.has(c.id));
  if (fresh.length !== 1 || state.conversation || state.view !== view) return;
  state.conversation = fresh[0];
  remember("replace");
}

// Copies a code block's text. Without the clipboard API (a page served
// over plain http from another host is not a "secure context") or without
// permission, the code is selected instead and the person told how to
// copy it.
async function copyCode(button) {
  const code = button.closest(".code-block").querySelector("code");
  try {
    await navigator.clipboard.writeText(code.textContent);
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = "Copy"; }, 2000);
    setStatus("The code is copied to the clipboard.");
  } catch (_) {
    const range = document.createRange();
    range.selectNodeContents(code);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    setStatus("The browser did not allow copying: the code is selected, press Ctrl+C (⌘C on a Mac) to copy it.", "warn");
  }
}

// ---- Usage: the signed-in user's budgets, and the admins' view ----

// Numbers in the page's language (English, like its sentences), so a
// figure reads "1,234" whatever the browser's locale.
const NUMBER = new Intl.NumberFormat("en");
const fmt = (n) => NUMBER.format(n);
const total = (item) => item.prompt_tokens + item.completion_tokens;

// A bar for a limited budget. It repeats the words beside it, so screen
// readers skip it. Its width is set through element.style (CSSOM), which
// the page's CSP allows; a style="" attribute would be refused.
function budgetBar(used, limit) {
  const bar = document.createElement("span");
  bar.className = "bar";
  bar.setAttribute("aria-hidden", "true");
  const fill = document.createElement("span");
  const share = Math.min(1, used / limit);
  fill.className = "fill" + (share >= 1 ? " over" : share >= 0.8 ? " near" : "");
  fill.style.width = (share * 100).toFixed(1) + "%";
  bar.append(fill);
  return bar;
}

// "Today 1,234 of 10,000 tokens" and a bar, or "... tokens (no limit)"
// for a limit of 0.
function budgetPart(label, used, limit) {
  const part = document.createElement("span");
  part.className = "budget";
  const words = document.createElement("span");
  words.textContent = limit > 0
    ? `${label} ${fmt(used)} of ${fmt(limit)} tokens`
    : `${label} ${fmt(used)} tokens (no limit)`;
  part.append(words);
  if (limit > 0) part.append(budgetBar(used, limit));
  return part;
}

function showMyUsage(usage) {
  const el = $("my-usage");
  el.hidden = !usage;
  el.classList.remove("error");
  if (!usage) { el.replaceChildren(); return; }
  const sep = document.createElement("span");
  sep.className = "sep";
  sep.setAttribute("aria-hidden", "true");
  sep.textContent = "·";
  el.replaceChildren(
    budgetPart("Today", usage.today.tokens, usage.limits.tokens_per_day),
    sep,
    budgetPart("This month", usage.month.tokens, usage.limits.tokens_per_month));
}

// Asks /api/me again: an answer has just spent tokens. A failure is said in
// the usage line itself, so the status line keeps the answer's outcome.
async function refreshMyUsage() {
  if (!state.user) return;
  try {
    const me = await apiJson("GET", "/api/me");
    state.usage = me.usage || null;
    showMyUsage(state.usage);
  } catch (e) {
    const el = $("my-usage");
    el.hidden = false;
    el.classList.add("error");
    el.textContent = "Your usage could not be shown. " + sentence(e);
  }
}

// The admin view covers the last USAGE_DAYS days, today included.
const USAGE_DAYS = 30;
const DAY_MS = 86400000;

// USAGE_DAYS dates (YYYY-MM-DD), oldest first, ending on the server's
// today: the server counts days in UTC, and the browser's clock or time
// zone may disagree with it.
function lastDays() {
  const today = state.usage ? state.usage.today.day : new Date().toISOString().slice(0, 10);
  const end = Date.parse(today + "T00:00:00Z");
  const days = [];
  for (let i = USAGE_DAYS - 1; i >= 0; i--) days.push(new Date(end - i * DAY_MS).toISOString().slice(0, 10));
  return days;
}

function setUsageStatus(text, kind) {
  const el = $("usage-status");
  el.textContent = text || "";
  el.className = "status" + (kind ? " " + kind : "");
}

async function openUsageView() {
  $("usage-dialog").showModal();
  await refreshMyUsage(); // also moves "today" on if the day has changed
  await loadUsageTable();
}

// One row per user with their totals over the window; users without calls
// show zeros. Then the chart of the user picked before, if any, anew.
async function loadUsageTable() {
  state.usageDays = lastDays();
  const days = state.usageDays;
  $("usage-range").textContent = `${days[0]} to ${days[days.length - 1]} (UTC days)`;
  setUsageStatus("Loading…");
  try {
    const [users, report] = await Promise.all([
      apiJson("GET", "/api/admin/users"),
      apiJson("GET", "/api/admin/usage?group_by=user&since=" + days[0]),
    ]);
    renderUsageTable(users.items, report.items);
    setUsageStatus("");
  } catch (e) {
    setUsageStatus(sentence(e), "error");
    return;
  }
  if (state.usageUser) await showUserChart(state.usageUser);
}

// A user's own limit: null means the server's default, 0 none.
function limitText(v) {
  if (v === null || v === undefined) return "default";
  return v === 0 ? "no limit" : fmt(v);
}

function cell(tag, text) {
  const c = document.createElement(tag);
  c.textContent = text;
  return c;
}

function renderUsageTable(users, items) {
  const zero = { requests: 0, prompt_tokens: 0, completion_tokens: 0 };
  const byUser = new Map(items.map((i) => [i.group, i]));
  const rows = users.map((u) => ({ user: u, sums: byUser.get(u.id) || zero }));
  // A deleted user's calls still count in the totals: a row without a
  // chart (the server no longer knows the user).
  const known = new Set(users.map((u) => u.id));
  for (const i of items) {
    if (i.group && !known.has(i.group)) rows.push({ user: { id: i.group, name: i.group, deleted: true }, sums: i });
  }
  rows.sort((a, b) => total(b.sums) - total(a.sums) || a.user.name.localeCompare(b.user.name));
  $("usage-users").replaceChildren(...rows.map(({ user, sums }) => {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    th.scope = "row";
    if (user.deleted) {
      th.textContent = "deleted user " + user.id;
    } else {
      const pick = button(user.name, "pick", () => showUserChart(user), `Show ${user.name}'s tokens per day`);
      pick.dataset.userId = user.id;
      pick.setAttribute("aria-pressed", "false");
      th.append(pick);
    }
    const tags = [user.role === "admin" ? "admin" : "", user.disabled ? "disabled" : ""].filter(Boolean);
    if (tags.length) th.append(cell("span", " " + tags.join(", ")));
    tr.append(th,
      cell("td", fmt(sums.requests)),
      cell("td", fmt(sums.prompt_tokens)),
      cell("td", fmt(sums.completion_tokens)),
      cell("td", fmt(total(sums))),
      cell("td", user.deleted ? "" : limitText(user.limits.tokens_per_day)),
      cell("td", user.deleted ? "" : limitText(user.limits.tokens_per_month)));
    return tr;
  }));
  markPicked();
}

function markPicked() {
  for (const b of $("usage-users").querySelectorAll("button.pick")) {
    const picked = !!state.usageUser && b.dataset.userId === state.usageUser.id;
    b.setAttribute("aria-pressed", picked ? "true" : "false");
    b.closest("tr").className = picked ? "active" : "";
  }
}

async function showUserChart(user) {
  state.usageUser = user;
  markPicked();
  const days = state.usageDays;
  $("usage-chart-box").hidden = false;
  $("chart-h").textContent = "Tokens per day: " + user.name;
  $("usage-chart").replaceChildren();
  setUsageStatus("Loading…");
  try {
    const report = await apiJson("GET", `/api/admin/usage?group_by=day&user_id=${encodeURIComponent(user.id)}&since=${days[0]}`);
    // A later pick may have answered first: draw only the latest.
    if (state.usageUser !== user) return;
    $("usage-chart").replaceChildren(tokensChart(user.name, days, report.items, $("usage-chart").clientWidth));
    setUsageStatus("");
  } catch (e) {
    if (state.usageUser === user) setUsageStatus(sentence(e), "error");
  }
}

const SVG_NS = "http://www.w3.org/2000/svg";

// An SVG element with attributes (never markup: nothing is parsed).
function svg(tag, attrs, text) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

// The chart's margins and height in CSS pixels. Its width is its box's
// when drawn, so labels keep their size on a phone; it scales from there.
const CHART = { height: 220, left: 64, right: 8, top: 12, bottom: 28, minWidth: 320, width: 640 };

// Stacked bars of prompt and completion tokens, one per day (the report
// lists only days with calls; the others are 0), each with a <title> for
// hover and the whole summed up in the chart's <desc>. Axis labels: the
// first and last day, 0 and the largest day's total.
function tokensChart(name, days, items, width) {
  const byDay = new Map(items.map((i) => [i.group, i]));
  const zero = { requests: 0, prompt_tokens: 0, completion_tokens: 0 };
  const sums = days.map((d) => byDay.get(d) || zero);
  const most = Math.max(0, ...sums.map(total));
  const all = sums.reduce((n, s) => n + total(s), 0);
  const c = { ...CHART, width: Math.max(CHART.minWidth, Math.round(width) || CHART.width) };
  const plotW = c.width - c.left - c.right;
  const plotH = c.height - c.top - c.bottom;
  const base = c.top + plotH;
  const slot = plotW / days.length;
  const barW = slot * 0.7;
  const scale = most > 0 ? plotH / most : 0;

  const chart = svg("svg", { viewBox: `0 0 ${c.width} ${c.height}`, class: "chart", role: "img", "aria-labelledby": "chart-title chart-desc" });
  chart.append(
    svg("title", { id: "chart-title" }, `Tokens per day for ${name}`),
    svg("desc", { id: "chart-desc" }, most > 0
      ? `${days[0]} to ${days[days.length - 1]}: ${fmt(all)} tokens in all; the most in one day ${fmt(most)}, on ${days[sums.findIndex((s) => total(s) === most)]}.`
      : `${days[0]} to ${days[days.length - 1]}: no tokens.`),
    svg("line", { class: "axis", x1: c.left, x2: c.width - c.right, y1: base, y2: base }),
    svg("line", { class: "grid", x1: c.left, x2: c.width - c.right, y1: c.top, y2: c.top }),
    svg("text", { class: "label", x: c.left - 6, y: c.top + 4, "text-anchor": "end" }, fmt(most)),
    svg("text", { class: "label", x: c.left - 6, y: base + 4, "text-anchor": "end" }, "0"),
    svg("text", { class: "label", x: c.left, y: c.height - 8, "text-anchor": "start" }, days[0]),
    svg("text", { class: "label", x: c.width - c.right, y: c.height - 8, "text-anchor": "end" }, days[days.length - 1]));
  days.forEach((day, i) => {
    const s = sums[i];
    const x = c.left + i * slot + (slot - barW) / 2;
    const promptH = s.prompt_tokens * scale;
    const completionH = s.completion_tokens * scale;
    const g = svg("g", { class: "day", "data-day": day });
    g.append(
      svg("title", {}, `${day}: ${fmt(total(s))} tokens (${fmt(s.prompt_tokens)} prompt, ${fmt(s.completion_tokens)} completion) in ${fmt(s.requests)} requests`),
      // A full-height target, so an empty day has a title to hover too.
      svg("rect", { class: "hit", x: c.left + i * slot, y: c.top, width: slot, height: plotH }),
      svg("rect", { class: "prompt", x, y: base - promptH, width: barW, height: promptH }),
      svg("rect", { class: "completion", x, y: base - promptH - completionH, width: barW, height: completionH }));
    chart.append(g);
  });
  return chart;
}

// ---- The lists' drawer (phones) ----

// At most this wide, the lists live in a drawer behind the Menu button
// (the same width as the stylesheet's phone layout).
const PHONE = window.matchMedia("(max-width: 700px)");

// Opens or closes the drawer. While it is open, the rest of the page is
// inert, so Tab and a screen reader stay in the drawer.
function setMenu(open) {
  $("sidebar").classList.toggle("open", open);
  $("menu").setAttribute("aria-expanded", open ? "true" : "false");
  $("scrim").hidden = !open;
  for (const el of [$("skip"), document.querySelector("header.top"), document.querySelector("section.chat")]) el.inert = open;
}

function openMenu() {
  setMenu(true);
  // Start at the open conversation, else where a new one begins.
  ($("conversations").querySelector("[aria-current]") || $("new-conversation")).focus();
}

// Closes the drawer (if open); `focusMenu` gives focus back to the Menu
// button (Escape, Close), else the caller moves it (to the message box).
function closeMenu(focusMenu) {
  if (!$("sidebar").classList.contains("open")) return;
  setMenu(false);
  if (focusMenu) $("menu").focus();
}

function init() {
  // The skip link's "#message" would change the address: focus instead.
  $("skip").addEventListener("click", (ev) => { ev.preventDefault(); (state.user ? $("message") : $("signin-name")).focus(); });
  $("signin-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const name = $("signin-name").value.trim();
    const password = $("signin-password").value;
    const res = await guarded(() => api("POST", "/api/session", { name, password }));
    if (!res) return;
    if (!res.ok) { setStatus(await describeError(res), "error"); $("signin-password").select(); return; }
    $("signin-password").value = "";
    state.csrf = null; // a signed-in page needs a token bound to its session
    if (await whoAmI()) { setStatus(""); await openFromAddress(); $("message").focus(); }
  });
  $("sign-out").addEventListener("click", async () => {
    await guarded(() => apiJson("DELETE", "/api/session"));
    state.csrf = null;
    history.replaceState(null, "", location.pathname);
    await whoAmI();
    setStatus("Signed out.");
    $("signin-name").focus();
  });
  $("new-project").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const name = $("project-name").value.trim();
    if (!name) return;
    const p = await guarded(() => apiJson("POST", "/api/projects", { name }));
    if (p) { $("project-name").value = ""; await show(p, null, "push"); }
  });
  // Only clears the view: the first message creates the conversation, so
  // no empty one is ever left behind.
  $("new-conversation").addEventListener("click", async () => {
    await show(state.project, null, "push");
    closeMenu();
    $("message").focus();
  });
  $("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("message").value.trim();
    if (!text || state.controller) return;
    $("message").value = "";
    send(text);
  });
  $("message").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); $("composer").requestSubmit(); }
    else if (ev.key === "Escape" && state.controller) { ev.preventDefault(); state.controller.abort(); }
  });
  $("stop").addEventListener("click", () => { if (state.controller) state.controller.abort(); $("message").focus(); });
  // Copy buttons are redrawn with their answer: one listener for all.
  $("messages").addEventListener("click", (ev) => {
    const copy = ev.target.closest("button.copy-code");
    if (copy) copyCode(copy);
  });
  $("menu").addEventListener("click", () => ($("sidebar").classList.contains("open") ? closeMenu(true) : openMenu()));
  $("close-menu").addEventListener("click", () => closeMenu(true));
  $("scrim").addEventListener("click", () => closeMenu(true));
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && $("sidebar").classList.contains("open")) { ev.preventDefault(); closeMenu(true); }
  });
  // Grown past phone width: the lists are beside the chat again.
  PHONE.addEventListener("change", () => { if (!PHONE.matches) setMenu(false); });
  $("open-usage").addEventListener("click", openUsageView);
  $("close-usage").addEventListener("click", () => $("usage-dialog").close());
  // Escape closes the dialog too; either way, focus goes back to its button.
  $("usage-dialog").addEventListener("close", () => { if (!$("open-usage").hidden) $("open-usage").focus(); });
  // Back and Forward: show what the address names now.
  window.addEventListener("popstate", () => { if (state.user) openFromAddress(); });
  whoAmI().then((signedIn) => { if (signedIn) openFromAddress(); });
}

document.addEventListener("DOMContentLoaded", init);
