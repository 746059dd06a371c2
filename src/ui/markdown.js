// A small markdown renderer for the chat page's answers. It builds DOM
// nodes from text with createElement and textContent only: nothing the
// model writes is ever parsed as HTML, so "<img onerror=...>" is shown as
// the characters it is. Links are made only for http(s) and mailto
// addresses (checked by the browser's own URL parser); anything else stays
// text.
//
// The subset: paragraphs (a single newline is a line break, as people
// expect in a chat), headings, emphasis (** __ * _ ~~), inline code,
// fenced code blocks (with a copy button the page wires up), lists
// (nested by indentation), block quotes, rules, simple tables, links and
// bare http(s) addresses.
//
// Answers are re-rendered as they stream in, so incomplete markdown must
// look sensible: an unclosed code fence runs to the end, and with
// { streaming: true } an unclosed emphasis or code span at the end of the
// last block is shown as if closed.
"use strict";

const Markdown = (() => {
  const FENCE = /^( {0,3})(`{3,}|~{3,})[ \t]*([^`\s]*)[^`]*$/;
  const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
  const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
  const QUOTE = /^ {0,3}> ?/;
  const LIST = /^( *)([-*+]|\d{1,9}[.)])(?:[ \t]+(.*))?$/;
  const TABLE_RULE = /^ {0,3}\|?[ \t]*:?-+:?[ \t]*(\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$/;
  // A code fence's language becomes a class name: letters and a few signs.
  const LANGUAGE = /^[\w#+.-]{1,32}$/;
  const SAFE_SCHEMES = ["http:", "https:", "mailto:"];
  const PUNCTUATION = /[!-/:-@[-`{-~]/;
  const WORD = /[\p{L}\p{N}_]/u;
  // Sticky patterns, tried at one position of a line (no slicing).
  const LINK_TARGET = /\(\s*(<[^<>\n]*>|(?:[^\s()]|\((?:[^\s()])*\))*)(?:\s+("[^"]*"|'[^']*'))?\s*\)/y;
  const AUTOLINK = /<((?:https?:\/\/|mailto:)[^\s<>]+)>/y;
  const BARE_URL = /https?:\/\/[^\s<>"'`]+/y;
  // How far a closer (of emphasis, code, a link's label) is looked for,
  // and how deep blocks and emphasis nest: bounds that keep a hostile
  // answer from making each re-render slow or exhausting the stack.
  const MAX_SPAN = 1000;
  const MAX_DEPTH = 16;

  const blank = (line) => line.trim() === "";
  const indentOf = (line) => line.length - line.trimStart().length;

  function el(tag, className, text) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // The address as the browser would follow it, or null when it is not an
  // absolute http(s) or mailto URL ("javascript:", "data:", relative...).
  function safeHref(url) {
    let u;
    try { u = new URL(url); } catch (_) { return null; }
    return SAFE_SCHEMES.includes(u.protocol) ? u.href : null;
  }

  function link(href, parent) {
    const a = el("a");
    a.href = href;
    // A new tab keeps the conversation; rel keeps the other page from
    // reaching back into this one (and from learning where it came from).
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    parent.append(a);
    return a;
  }

  // ---- Blocks ----

  // Whether a line starts a block that ends a paragraph before it. A
  // numbered line does only as "1." ("2024. was a year" is not a list).
  function startsBlock(line) {
    if (FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line)) return true;
    const m = LIST.exec(line);
    return !!m && (!/\d/.test(m[2]) || parseInt(m[2], 10) === 1);
  }

  // Renders lines into parent. `open`: the text may still grow (streaming),
  // so the last block's unclosed inline markup is shown as if closed.
  // Quotes and lists deeper than MAX_DEPTH are shown as paragraphs.
  function blocks(lines, parent, open, depth) {
    const nest = (depth || 0) < MAX_DEPTH;
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      let m;
      if (blank(line)) i++;
      else if ((m = FENCE.exec(line))) i = codeBlock(lines, i, m, parent);
      else if (RULE.test(line)) { parent.append(el("hr")); i++; }
      else if ((m = HEADING.exec(line))) { heading(m, parent, open && i === lines.length - 1); i++; }
      else if (nest && QUOTE.test(line)) i = quote(lines, i, parent, open, (depth || 0) + 1);
      else if (nest && LIST.test(line)) i = list(lines, i, parent, open, (depth || 0) + 1);
      else if (isTable(lines, i)) i = table(lines, i, parent);
      else i = paragraph(lines, i, parent, open);
    }
  }

  // Message headings are h3..h6: the page's own h1 and h2 stay above them.
  function heading(m, parent, open) {
    const h = el("h" + Math.min(6, m[1].length + 2));
    inline(m[2] || "", h, open);
    parent.append(h);
  }

  // A fenced code block, to its closing fence or, unclosed (still being
  // written), to the end. Returns the index after it.
  function codeBlock(lines, start, m, parent) {
    const [, indent, fence, info] = m;
    const body = [];
    let i = start + 1;
    for (; i < lines.length; i++) {
      const close = /^ {0,3}(`{3,}|~{3,})[ \t]*$/.exec(lines[i]);
      if (close && close[1][0] === fence[0] && close[1].length >= fence.length) { i++; break; }
      // Lines lose at most the fence's own indentation.
      body.push(lines[i].slice(Math.min(indent.length, indentOf(lines[i]))));
    }
    const language = LANGUAGE.test(info) ? info : "";
    const box = el("div", "code-block");
    const head = el("div", "code-head");
    head.append(el("span", "code-lang", language || "code"));
    const copy = el("button", "copy-code", "Copy");
    copy.type = "button";
    copy.setAttribute("aria-label", language ? `Copy ${language} code` : "Copy code");
    head.append(copy);
    const pre = el("pre");
    const code = el("code", language ? "language-" + language : "", body.join("\n"));
    pre.append(code);
    box.append(head, pre);
    parent.append(box);
    return i;
  }

  // Lines starting with ">" (their marker removed), rendered as blocks.
  function quote(lines, start, parent, open, depth) {
    const inner = [];
    let i = start;
    while (i < lines.length && QUOTE.test(lines[i])) inner.push(lines[i++].replace(QUOTE, ""));
    const q = el("blockquote");
    blocks(inner, q, open && i === lines.length, depth);
    parent.append(q);
    return i;
  }

  // A list: its items are the marker lines at this level; each item's
  // further lines (indented past its marker, or running on without a blank
  // line) are its own blocks, so nested lists and code blocks come out of
  // blocks(). Models often indent nested lists less than CommonMark asks
  // (two spaces under "1."): any indent past the marker nests.
  function list(lines, start, parent, open, depth) {
    const first = LIST.exec(lines[start]);
    const ordered = /\d/.test(first[2]);
    const l = el(ordered ? "ol" : "ul");
    // A list cut by a code block goes on numbering where it left off.
    if (ordered && parseInt(first[2], 10) !== 1) l.start = parseInt(first[2], 10);
    let i = start;
    while (i < lines.length) {
      const m = LIST.exec(lines[i]);
      if (!m || /\d/.test(m[2]) !== ordered) break;
      const base = m[1].length;
      // Where the item's text starts.
      const width = base + m[2].length + 1;
      const item = [m[3] || ""];
      i++;
      while (i < lines.length) {
        const line = lines[i];
        if (blank(line)) {
          // A blank line ends the item unless what follows is indented
          // into it.
          let j = i;
          while (j < lines.length && blank(lines[j])) j++;
          if (j < lines.length && indentOf(lines[j]) > base) { item.push(...lines.slice(i, j)); i = j; continue; }
          break;
        }
        const indent = indentOf(line);
        if (indent > base) item.push(line.slice(Math.min(indent, width)));
        else if (LIST.test(line) || startsBlock(line)) break; // the next item, or a block after the list
        else item.push(line.trimStart()); // a paragraph running on
        i++;
      }
      const li = el("li");
      blocks(item, li, open && i >= lines.length, depth);
      l.append(li);
      // Blank lines between items keep the list going (a "loose" list).
      let j = i;
      while (j < lines.length && blank(lines[j])) j++;
      if (j >= lines.length || !LIST.test(lines[j])) break;
      i = j;
    }
    parent.append(l);
    return i;
  }

  function isTable(lines, i) {
    return lines[i].includes("|") && i + 1 < lines.length && lines[i + 1].includes("-") &&
      TABLE_RULE.test(lines[i + 1]) && cells(lines[i]).length === cells(lines[i + 1]).length;
  }

  // A table row's cells: pipes split them, except escaped ones ("\|").
  function cells(line) {
    let s = line.trim();
    if (s.startsWith("|")) s = s.slice(1);
    if (s.endsWith("|") && !s.endsWith("\\|")) s = s.slice(0, -1);
    return s.split(/(?<!\\)\|/).map((c) => c.trim());
  }

  function table(lines, start, parent) {
    const aligns = cells(lines[start + 1]).map((c) =>
      c.startsWith(":") && c.endsWith(":") ? "center" : c.endsWith(":") ? "right" : "");
    const row = (line, tag) => {
      const tr = el("tr");
      const values = cells(line);
      aligns.forEach((align, k) => {
        const cell = el(tag, align ? "align-" + align : "");
        if (tag === "th") cell.scope = "col";
        inline(values[k] || "", cell, false);
        tr.append(cell);
      });
      return tr;
    };
    const thead = el("thead");
    thead.append(row(lines[start], "th"));
    const tbody = el("tbody");
    let i = start + 2;
    while (i < lines.length && !blank(lines[i]) && lines[i].includes("|")) tbody.append(row(lines[i++], "td"));
    const t = el("table");
    t.append(thead, tbody);
    // Wide tables scroll inside the answer, not the page.
    const box = el("div", "table-box");
    box.append(t);
    parent.append(box);
    return i;
  }

  // Lines up to a blank line or another block; newlines become <br>.
  function paragraph(lines, start, parent, open) {
    const text = [lines[start].trim()];
    let i = start + 1;
    while (i < lines.length && !blank(lines[i]) && !startsBlock(lines[i]) && !isTable(lines, i)) text.push(lines[i++].trim());
    const p = el("p");
    text.forEach((t, k) => {
      if (k > 0) p.append(el("br"));
      inline(t, p, open && i >= lines.length && k === text.length - 1);
    });
    parent.append(p);
    return i;
  }

  // ---- Inline ----

  const EMPHASIS = [["**", "strong"], ["__", "strong"], ["~~", "del"], ["*", "em"], ["_", "em"]];

  // The length of the run of `ch` starting at i.
  function runAt(text, i, ch) {
    let j = i;
    while (text[j] === ch) j++;
    return j - i;
  }

  // Where the code span opened by `n` backticks before `from` closes (a
  // run of exactly n), or -1.
  function codeEnd(text, from, n) {
    const limit = Math.min(text.length, from + MAX_SPAN);
    for (let j = from; j < limit;) {
      if (text[j] !== "`") { j++; continue; }
      const len = runAt(text, j, "`");
      if (len === n) return j;
      j += len;
    }
    return -1;
  }

  // Where emphasis `d` opened before `from` closes, or -1. A closer is not
  // preceded by a space; "_" does not close inside a word (snake_case); a
  // longer run closes at its end ("***" closes "**" after an "*").
  function emphasisEnd(text, from, d) {
    const limit = Math.min(text.length, from + MAX_SPAN);
    for (let j = from; j < limit;) {
      const c = text[j];
      if (c === "\\") { j += 2; continue; }
      if (c === "`") {
        const n = runAt(text, j, "`");
        const end = codeEnd(text, j + n, n);
        j = end < 0 ? j + n : end + n;
        continue;
      }
      if (c !== d[0]) { j++; continue; }
      const len = runAt(text, j, c);
      const at = j + len - d.length;
      const fits = d.length === 1 ? len !== 2 : len >= 2;
      if (fits && at > from && !/\s/.test(text[j - 1]) && !(c === "_" && WORD.test(text[j + len] || ""))) return at;
      j += len;
    }
    return -1;
  }

  // "[label](url)" at i: {label, url, end} or null.
  function linkAt(text, i) {
    const limit = Math.min(text.length, i + MAX_SPAN);
    let depth = 0;
    let j = i;
    for (; j < limit; j++) {
      if (text[j] === "\\") { j++; continue; }
      if (text[j] === "[") depth++;
      else if (text[j] === "]" && --depth === 0) break;
    }
    if (j >= limit || text[j + 1] !== "(") return null;
    LINK_TARGET.lastIndex = j + 1;
    const m = LINK_TARGET.exec(text);
    if (!m) return null;
    return { label: text.slice(i + 1, j), url: m[1].replace(/^<|>$/g, ""), end: j + 1 + m[0].length };
  }

  // A bare http(s) address at i (after a non-word character), without
  // the punctuation that usually ends a sentence around it.
  function bareUrlAt(text, i) {
    if (!text.startsWith("http", i) || (i > 0 && WORD.test(text[i - 1]))) return null;
    BARE_URL.lastIndex = i;
    const m = BARE_URL.exec(text);
    if (!m) return null;
    let url = m[0].replace(/[.,:;!?*_~]+$/, "");
    // A ")" closing a parenthesis around the address is not part of it.
    while (url.endsWith(")") && (url.match(/\(/g) || []).length < (url.match(/\)/g) || []).length) url = url.slice(0, -1);
    return url;
  }

  // Renders inline markup of `text` into parent. `open`: unclosed markup
  // runs to the end (the text is still arriving). `inLink`: no nested links.
  // Emphasis deeper than MAX_DEPTH is shown as text.
  function inline(text, parent, open, inLink, depth) {
    depth = depth || 0;
    let buf = "";
    const flush = () => { if (buf) { parent.append(document.createTextNode(buf)); buf = ""; } };
    if (depth >= MAX_DEPTH) { buf = text; flush(); return; }
    // Streaming: markup characters at the very end are probably the start
    // of something ("**", "`"); they show once it is clear what.
    const stop = open ? text.length - /[*_~`]*$/.exec(text)[0].length : text.length;
    let i = 0;
    while (i < stop) {
      const c = text[i];
      if (c === "\\" && PUNCTUATION.test(text[i + 1] || "")) { buf += text[i + 1]; i += 2; continue; }
      if (c === "`") {
        const n = runAt(text, i, "`");
        let end = codeEnd(text, i + n, n);
        if (end < 0 && !open) { buf += text.slice(i, i + n); i += n; continue; }
        if (end < 0) end = text.length;
        let code = text.slice(i + n, end);
        if (/^ .*[^ ].* $/.test(code)) code = code.slice(1, -1);
        flush();
        parent.append(el("code", "", code));
        i = Math.min(text.length, end + n);
        continue;
      }
      // A link, or an image: shown as a link to it, so an answer never
      // makes the browser fetch anything by itself.
      const image = c === "!" && text[i + 1] === "[";
      if ((c === "[" || image) && !inLink) {
        const l = linkAt(text, image ? i + 1 : i);
        if (l) {
          const href = safeHref(l.url);
          flush();
          // Only a safe address is a link; any other shows as its source.
          if (href) inline(l.label || l.url, link(href, parent), false, true, depth + 1);
          else buf += text.slice(i, l.end);
          i = l.end;
          continue;
        }
      }
      if (c === "<" && !inLink) {
        AUTOLINK.lastIndex = i;
        const m = AUTOLINK.exec(text);
        const href = m && safeHref(m[1]);
        if (href) { flush(); link(href, parent).textContent = m[1]; i += m[0].length; continue; }
      }
      if (c === "h" && !inLink) {
        const url = bareUrlAt(text, i);
        const href = url && safeHref(url);
        if (href) { flush(); link(href, parent).textContent = url; i += url.length; continue; }
      }
      const emphasis = (c === "*" || c === "_" || c === "~") && EMPHASIS.find(([d]) => text.startsWith(d, i));
      if (emphasis && !(c === "_" && WORD.test(text[i - 1] || "")) && text[i + emphasis[0].length] && !/\s/.test(text[i + emphasis[0].length])) {
        const [d, tag] = emphasis;
        let end = emphasisEnd(text, i + d.length, d);
        if (end >= 0 || open) {
          if (end < 0) end = text.length;
          flush();
          const e = el(tag);
          inline(text.slice(i + d.length, end), e, open && end === text.length, inLink, depth + 1);
          parent.append(e);
          i = Math.min(text.length, end + d.length);
          continue;
        }
      }
      buf += c;
      i++;
    }
    flush();
  }

  // The answer `text` as a fragment of DOM nodes. opts.streaming: the text
  // may end in the middle of something.
  function render(text, opts) {
    const frag = document.createDocumentFragment();
    blocks(String(text).replace(/\r\n?/g, "\n").split("\n"), frag, !!(opts && opts.streaming));
    return frag;
  }

  return { render, safeHref };
})();
