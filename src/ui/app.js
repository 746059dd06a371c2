// portcullis built-in chat page. No framework, no build step, no inline
// script: served from /ui/app.js under `default-src 'self'`.
"use strict";

const KEY_STORE = "portcullis.apiKey";
const state = { key: sessionStorage.getItem(KEY_STORE) || "", csrf: null, projects: [], project: null, conversations: [], conversation: null, controller: null };
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
  switch (code) {
    case "rate_limited": return `Too many requests: try again in ${res.headers.get("Retry-After") || "a few"} seconds.`;
    case "unauthorized": return "The API key is missing or not valid. Enter a key above.";
    case "upstream_unavailable": return "The model server cannot be reached right now.";
    case "upstream_timeout": return "The model server did not answer in time.";
    case "upstream_error": return "The model server returned an error.";
    case "server_busy": return "The server is busy; try again shortly.";
    case "validation_failed": return `Please check ${err.field || "the input"}: ${err.message || ""}`;
    case "csrf_token_invalid": return "The page's security token expired; please retry.";
    default: return err.message ? `${err.message} (${code})` : `Request failed (${res.status}).`;
  }
}

async function csrfToken(refresh) {
  if (state.csrf && !refresh) return state.csrf;
  const res = await fetch("/api/csrf-token", { headers: { "Accept": "application/json" } });
  if (!res.ok) return null;
  state.csrf = (await res.json()).token;
  return state.csrf;
}

// fetch with the key, JSON and (for unsafe methods) the CSRF token.
async function api(method, path, body, opts) {
  const headers = { "Accept": "application/json" };
  if (state.key) headers["Authorization"] = "Bearer " + state.key;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const unsafe = method !== "GET";
  for (let attempt = 0; attempt < 2; attempt++) {
    if (unsafe) {
      const token = await csrfToken(attempt > 0);
      if (token) headers["X-CSRF-Token"] = token;
    }
    const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal: opts && opts.signal });
    if (res.status === 403 && unsafe && attempt === 0) {
      const copy = res.clone();
      try { if ((await copy.json()).error.code === "csrf_token_invalid") continue; } catch (_) { /* fall through */ }
    }
    return res;
  }
  throw new Error("unreachable");
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

function renderList(ul, items, current, label, pick, rename, remove) {
  ul.replaceChildren();
  for (const item of items) {
    const li = document.createElement("li");
    if (current && current.id === item.id) li.className = "active";
    const name = label(item);
    const p = button(name, "pick", () => pick(item), "Open " + name);
    if (current && current.id === item.id) p.setAttribute("aria-current", "true");
    li.append(p, button("Rename", "small", () => rename(item), "Rename " + name), button("Delete", "small", () => remove(item), "Delete " + name));
    ul.append(li);
  }
}

async function loadProjects() {
  const page = await apiJson("GET", "/api/projects?limit=200");
  state.projects = page.items;
  renderList($("projects"), state.projects, state.project, (p) => p.name,
    (p) => { state.project = state.project && state.project.id === p.id ? null : p; state.conversation = null; refresh(); },
    async (p) => {
      const name = prompt("New name for the project", p.name);
      if (!name) return;
      await guarded(() => apiJson("PATCH", "/api/projects/" + encodeURIComponent(p.id), { name }));
      refresh();
    },
    async (p) => {
      if (!confirm(`Delete project "${p.name}" with all its conversations?`)) return;
      await guarded(() => apiJson("DELETE", "/api/projects/" + encodeURIComponent(p.id)));
      if (state.project && state.project.id === p.id) { state.project = null; state.conversation = null; }
      refresh();
    });
}

async function loadConversations() {
  const q = state.project ? "&project_id=" + encodeURIComponent(state.project.id) : "";
  const page = await apiJson("GET", "/api/conversations?limit=200" + q);
  state.conversations = page.items;
  $("conv-scope").textContent = state.project ? "in " + state.project.name : "(all)";
  renderList($("conversations"), state.conversations, state.conversation, (c) => c.title || "Untitled " + c.created_at.slice(0, 16).replace("T", " "),
    (c) => { state.conversation = c; refresh(); },
    async (c) => {
      const title = prompt("New title for the conversation", c.title || "");
      if (title === null) return;
      await guarded(() => apiJson("PATCH", "/api/conversations/" + encodeURIComponent(c.id), { title: title || null }));
      refresh();
    },
    async (c) => {
      if (!confirm("Delete this conversation?")) return;
      await guarded(() => apiJson("DELETE", "/api/conversations/" + encodeURIComponent(c.id)));
      if (state.conversation && state.conversation.id === c.id) state.conversation = null;
      refresh();
    });
}

function messageItem(role, content, status, when) {
  const li = document.createElement("li");
  li.className = `msg ${role} ${status || "complete"}`;
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = (role === "user" ? "You" : role === "assistant" ? "Assistant" : "System") + (when ? " · " + when.slice(11, 19) : "");
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = content;
  li.append(meta, text);
  return li;
}

async function loadMessages() {
  const ol = $("messages");
  ol.replaceChildren();
  if (!state.conversation) { $("chat-title").textContent = "No conversation selected"; return; }
  $("chat-title").textContent = state.conversation.title || "Conversation";
  let cursor = null;
  do {
    const page = await apiJson("GET", `/api/conversations/${encodeURIComponent(state.conversation.id)}/messages?limit=200` + (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
    for (const m of page.items) ol.append(messageItem(m.role, m.content, m.status, m.created_at));
    cursor = page.next_cursor;
  } while (cursor);
  ol.scrollTop = ol.scrollHeight;
}

async function guarded(fn) {
  try { const r = await fn(); setStatus(""); return r; } catch (e) { setStatus(e.message, "error"); return null; }
}

async function refresh() {
  await guarded(async () => { await loadProjects(); await loadConversations(); await loadMessages(); });
}

// Parses a text/event-stream body incrementally: calls onEvent(name, data).
async function readSse(res, onEvent) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let name = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue; // ping
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (data) onEvent(name, JSON.parse(data));
    }
  }
}

async function send(text) {
  const ol = $("messages");
  ol.append(messageItem("user", text, "complete", new Date().toISOString()));
  const bubble = messageItem("assistant", "", "partial", new Date().toISOString());
  const out = bubble.querySelector(".text");
  ol.append(bubble);
  ol.scrollTop = ol.scrollHeight;
  const controller = new AbortController();
  state.controller = controller;
  $("stop").disabled = false;
  $("send").disabled = true;
  setStatus("Answering…");
  const body = { message: text, stream: true };
  if (state.conversation) body.conversation_id = state.conversation.id;
  else if (state.project) body.project_id = state.project.id;
  try {
    const res = await api("POST", "/api/chat", body, { signal: controller.signal });
    if (!res.ok) { bubble.className = "msg assistant error"; setStatus(await describeError(res), "error"); return; }
    let finished = false;
    await readSse(res, (name, data) => {
      if (name === "start" && !state.conversation) state.conversation = { id: data.conversation_id, title: null, created_at: new Date().toISOString() };
      else if (name === "delta") { out.textContent += data.content; ol.scrollTop = ol.scrollHeight; }
      else if (name === "done") { finished = true; bubble.className = "msg assistant complete"; setStatus(""); }
      else if (name === "error") { bubble.className = "msg assistant " + (out.textContent ? "partial" : "error"); setStatus(data.message || "The answer failed.", "error"); }
    });
    if (!finished && !$("status").classList.contains("error")) setStatus("The answer ended early.", "warn");
  } catch (e) {
    if (e.name === "AbortError") { bubble.className = "msg assistant partial"; setStatus("Stopped."); }
    else { bubble.className = "msg assistant error"; setStatus("Network error: " + e.message, "error"); }
  } finally {
    state.controller = null;
    $("stop").disabled = true;
    $("send").disabled = false;
    guarded(async () => { await loadConversations(); });
  }
}

function init() {
  $("api-key").value = state.key;
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.key = $("api-key").value.trim();
    sessionStorage.setItem(KEY_STORE, state.key);
    refresh();
  });
  $("forget-key").addEventListener("click", () => { state.key = ""; sessionStorage.removeItem(KEY_STORE); $("api-key").value = ""; setStatus("Key forgotten."); });
  $("new-project").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const name = $("project-name").value.trim();
    if (!name) return;
    const p = await guarded(() => apiJson("POST", "/api/projects", { name }));
    if (p) { $("project-name").value = ""; state.project = p; state.conversation = null; refresh(); }
  });
  $("new-conversation").addEventListener("click", async () => {
    const c = await guarded(() => apiJson("POST", "/api/conversations", state.project ? { project_id: state.project.id } : {}));
    if (c) { state.conversation = c; refresh(); $("message").focus(); }
  });
  $("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("message").value.trim();
    if (!text || state.controller) return;
    $("message").value = "";
    send(text);
  });
  $("message").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("composer").requestSubmit(); }
  });
  $("stop").addEventListener("click", () => { if (state.controller) state.controller.abort(); });
  refresh();
}

document.addEventListener("DOMContentLoaded", init);
