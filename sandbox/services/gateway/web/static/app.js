// Shared by every page: the API helper, the clocks in the top bar, small DOM helpers.
"use strict";

const sandbox = (() => {
  // The page's token: the gateway tells the workspace's own requests from other clients' by it.
  const pageMeta = document.querySelector('meta[name="sandbox-page"]');
  const pageToken = pageMeta ? pageMeta.content : null;

  async function api(path, options = {}) {
    const init = { credentials: "same-origin", ...options, headers: { ...(options.headers || {}) } };
    if (pageToken) init.headers["X-Sandbox-Page"] = pageToken;
    if (options.json !== undefined) {
      init.method = init.method || "POST";
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.json);
      delete init.json;
    }
    const reply = await fetch(path, init);
    const type = reply.headers.get("content-type") || "";
    const body = type.includes("application/json") ? await reply.json() : await reply.text();
    if (!reply.ok) {
      const detail = body && (body.error || body.detail || body.message);
      const message = typeof detail === "string" ? detail : describeDetail(detail) || reply.statusText;
      const error = new Error(message);
      error.status = reply.status;
      error.body = body;
      throw error;
    }
    return body;
  }

  // FastAPI's 422 detail is a list of {loc, msg}: name the field.
  function describeDetail(detail) {
    if (!Array.isArray(detail)) return detail ? JSON.stringify(detail) : "";
    return detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".")}: ${d.msg}`).join("; ");
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function formatValue(value) {
    if (value === null || value === undefined) return "NULL";
    if (typeof value === "number") {
      if (Number.isInteger(value)) return String(value);
      return Math.abs(value) >= 1000 || Math.abs(value) < 0.001 && value !== 0
        ? value.toPrecision(6) : String(Math.round(value * 1e6) / 1e6);
    }
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  // A results grid: header row, one row per result row, NULLs dimmed.
  function table(columns, rows, { links = {} } = {}) {
    const head = el("tr", {}, columns.map((c) => el("th", {}, c)));
    const body = rows.map((row) => el("tr", {}, row.map((v, i) => {
      const text = formatValue(v);
      const template = links[columns[i]];
      const cell = template && v !== null
        ? el("a", { href: template.replace("{value}", encodeURIComponent(String(v).slice(0, 10))), target: "_blank" }, text)
        : text;
      return el("td", { class: v === null ? "null" : typeof v === "number" ? "num" : "" }, cell);
    })));
    return el("table", { class: "grid" }, el("thead", {}, head), el("tbody", {}, body));
  }

  // replaceChildren would print a null child as the text "null".
  function fill(container, ...children) {
    container.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
  }

  function showError(container, message) {
    container.replaceChildren(el("div", { class: "error", role: "alert" }, message));
  }

  function simTime(iso) {
    return iso.replace("T", " ").slice(0, 16);
  }

  // The top bar's clocks: simulated time advances locally between polls of /api/clock.
  let clock = null;
  const clockListeners = [];
  function simNow() {
    if (!clock) return null;
    const elapsed = (Date.now() - clock.fetchedAt) / 1000;
    return new Date(Date.parse(clock.now + "Z") + elapsed * clock.speed * 1000);
  }
  async function refreshClock() {
    try {
      const reply = await api("/api/clock");
      clock = { ...reply, fetchedAt: Date.now() };
      clockListeners.forEach((f) => f(clock));
    } catch (e) { /* the stack may be restarting; the next poll retries */ }
  }
  function tick() {
    const now = simNow();
    const simEl = document.getElementById("sim-now");
    if (now && simEl) simEl.textContent = simTime(now.toISOString());
    const timer = document.getElementById("session-timer");
    if (clock && clock.session_started && timer) {
      const seconds = Math.max(0, Math.floor((Date.now() - Date.parse(clock.session_started)) / 1000));
      const h = Math.floor(seconds / 3600), m = Math.floor(seconds / 60) % 60, s = seconds % 60;
      timer.textContent = (h ? `${h}:${String(m).padStart(2, "0")}` : `${m}`) + `:${String(s).padStart(2, "0")}`;
    } else if (clock && !clock.session_started) {
      const wrap = document.getElementById("session-timer-wrap");
      if (wrap) wrap.hidden = true;
    }
  }
  if (document.getElementById("sim-now")) {
    refreshClock().then(tick);
    setInterval(refreshClock, 30000);
    setInterval(tick, 1000);
  }

  // Time away from the workspace tab is an integrity signal for the interviewer, never a verdict.
  const AWAY_MIN_S = 30;
  let hiddenAt = null;
  if (document.body.dataset.role === "candidate") {
    document.addEventListener("visibilitychange", () => {
      if (document.hidden) { hiddenAt = Date.now(); return; }
      if (hiddenAt === null) return;
      const seconds = (Date.now() - hiddenAt) / 1000;
      hiddenAt = null;
      if (seconds >= AWAY_MIN_S) api("/api/events", { json: { kind: "away", seconds } }).catch(() => {});
    });
  }

  // How the text of an editor (a textarea) came to be, for the interviewer's review: characters
  // typed, pasted, put there by the page itself, already there when counting began, and the time
  // from the first keystroke or paste to the send. `take()` is what goes with a run or a save; it
  // starts the count again. Never the text itself: only counts.
  const MAX_CHARS = 1000000, MAX_COMPOSE_MS = 86400000;
  function composition(editor) {
    let counts, firstAt, lastLength = editor.value.length, pendingPaste = null;
    function reset(kept) { counts = { typed: 0, pasted: 0, inserted: 0, kept }; firstAt = null; }
    reset(0);
    function started() { if (firstAt === null) firstAt = performance.now(); }
    editor.addEventListener("paste", (e) => { pendingPaste = ((e.clipboardData && e.clipboardData.getData("text")) || "").length; });
    editor.addEventListener("drop", (e) => { pendingPaste = ((e.dataTransfer && e.dataTransfer.getData("text")) || "").length; });
    editor.addEventListener("compositionend", (e) => { counts.typed += (e.data || "").length; started(); });
    editor.addEventListener("input", (e) => {
      const grown = Math.max(0, editor.value.length - lastLength);
      lastLength = editor.value.length;
      const type = e.inputType || "";
      if (type.startsWith("insertFrom")) {
        counts.pasted += pendingPaste !== null ? pendingPaste : grown;
        pendingPaste = null;
        started();
      } else if (type === "insertCompositionText") {
        // counted once the composition ends: its text is sent again with every change
      } else if (type.startsWith("insert")) {
        counts.typed += e.data ? e.data.length : 1;
        started();
      } else if (type.startsWith("history")) {
        counts.typed += grown;  // an undo or redo is a keystroke bringing text back
      }
    });
    return {
      // Text the page put into the editor itself (an example, a history entry, a restored draft).
      inserted(chars) { counts.inserted += chars; lastLength = editor.value.length; },
      // Text typed through a key the page handles itself (Tab).
      typed(chars) { counts.typed += chars; lastLength = editor.value.length; started(); },
      // What was counted until now, and counting again from the editor's current text.
      take() {
        const taken = { ...counts, compose_ms: firstAt === null ? 0 : Math.round(performance.now() - firstAt) };
        for (const key of Object.keys(taken)) taken[key] = Math.min(taken[key], key === "compose_ms" ? MAX_COMPOSE_MS : MAX_CHARS);
        reset(editor.value.length);
        lastLength = editor.value.length;
        return taken;
      },
      // A send that failed: its counts belong to the next one.
      giveBack(taken) {
        for (const key of ["typed", "pasted", "inserted"]) counts[key] += taken[key];
        counts.kept = taken.kept;
        if (taken.compose_ms) firstAt = Math.min(firstAt === null ? Infinity : firstAt, performance.now() - taken.compose_ms);
      },
      active() { return counts.typed + counts.pasted + counts.inserted > 0; },
    };
  }

  function onClock(f) { clockListeners.push(f); if (clock) f(clock); }
  function clockInfo() { return clock; }

  return { api, el, fill, table, formatValue, showError, simTime, simNow, onClock, clockInfo, refreshClock, composition };
})();
