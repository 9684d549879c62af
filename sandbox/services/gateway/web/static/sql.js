// The SQL console: a highlighted editor, the schema browser, the results grid with CSV export,
// and the candidate's own history to re-run. Queries go to POST /api/sql (recorded there), one at
// a time, with how their text reached the editor (`sandbox.composition`).
"use strict";

(() => {
  const { api, el, fill, table, showError, composition } = sandbox;
  const textarea = document.getElementById("sql");
  const highlight = document.getElementById("highlight");
  const status = document.getElementById("status");
  const grid = document.getElementById("grid");
  const csvButton = document.getElementById("csv");
  const runButton = document.getElementById("run");
  const STORAGE_KEY = "sandbox.sql.draft";
  let last = null;
  let running = false;
  const typing = composition(textarea);

  const KEYWORDS = new Set(("select from where group by order having limit offset join left right full inner outer cross on using as and or not in is null " +
    "case when then else end with distinct union all intersect except between like ilike asc desc over partition window filter " +
    "qualify exists cast true false interval describe summarize explain analyze pivot unpivot asof lateral any some recursive nulls first last").split(" "));

  function escapeHtml(s) { return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;"); }

  // A small tokenizer is enough for highlighting: comments, strings, numbers, keywords, words.
  function highlighted(sql) {
    const token = /(--[^\n]*|\/\*[\s\S]*?(?:\*\/|$))|('(?:[^']|'')*'?)|("(?:[^"]|"")*"?)|(\b\d+(?:\.\d+)?\b)|([A-Za-z_][A-Za-z0-9_]*)|([\s\S])/g;
    let out = "";
    for (const m of sql.matchAll(token)) {
      const [text, comment, string, quoted, number, word] = m;
      const safe = escapeHtml(text);
      if (comment) out += `<span class="tok-comment">${safe}</span>`;
      else if (string) out += `<span class="tok-string">${safe}</span>`;
      else if (quoted) out += `<span class="tok-ident">${safe}</span>`;
      else if (number) out += `<span class="tok-number">${safe}</span>`;
      else if (word && KEYWORDS.has(word.toLowerCase())) out += `<span class="tok-keyword">${safe}</span>`;
      else if (word && sql[m.index + text.length] === "(") out += `<span class="tok-function">${safe}</span>`;
      else out += safe;
    }
    return out + "\n";
  }

  function syncHighlight() {
    highlight.innerHTML = highlighted(textarea.value);
    highlight.parentElement.scrollTop = textarea.scrollTop;
    highlight.parentElement.scrollLeft = textarea.scrollLeft;
    localStorage.setItem(STORAGE_KEY, textarea.value);
  }

  // The page's own changes to the text: counted as inserted by the page.
  function setText(text) {
    textarea.value = text;
    typing.inserted(text.length);
    syncHighlight();
  }

  async function run() {
    const sql = textarea.value.trim();
    if (!sql || running) return;  // one statement at a time: the gateway counts two as a script's
    running = true;
    const composed = typing.take();
    runButton.disabled = true;
    status.className = "status muted";
    status.textContent = "Running…";
    grid.replaceChildren();
    csvButton.disabled = true;
    try {
      const result = await api("/api/sql", { json: { sql, composition: composed } });
      last = result;
      const rows = result.rows.length.toLocaleString();
      status.className = "status";
      fill(status,
        el("span", {}, `${rows} row${result.rows.length === 1 ? "" : "s"} · ${result.elapsed_ms} ms`),
        result.truncated ? el("span", { class: "warning" }, ` · results truncated: showing the first ${rows} rows; aggregate or add LIMIT to see the rest`) : null,
      );
      grid.replaceChildren(table(result.columns, result.rows));
      csvButton.disabled = false;
    } catch (e) {
      last = null;
      status.className = "status";
      showError(status, e.message);
    } finally {
      running = false;
      runButton.disabled = false;
      if (!document.getElementById("history").hidden) loadHistory();
    }
  }

  function csvCell(v) {
    if (v === null || v === undefined) return "";
    const s = typeof v === "object" ? JSON.stringify(v) : String(v);
    return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  }

  function downloadCsv() {
    if (!last) return;
    const lines = [last.columns.map(csvCell).join(","), ...last.rows.map((r) => r.map(csvCell).join(","))];
    const blob = new Blob([lines.join("\n") + "\n"], { type: "text/csv" });
    const link = el("a", { href: URL.createObjectURL(blob), download: "query-result.csv" });
    document.body.append(link);
    link.click();
    link.remove();
  }

  function insert(text, byKey = false) {
    const { selectionStart: a, selectionEnd: b, value } = textarea;
    textarea.value = value.slice(0, a) + text + value.slice(b);
    textarea.selectionStart = textarea.selectionEnd = a + text.length;
    if (byKey) typing.typed(text.length); else typing.inserted(text.length);
    textarea.focus();
    syncHighlight();
  }

  async function loadSchema() {
    const tree = document.getElementById("schema-tree");
    try {
      const tables = await api("/api/schema");
      fill(tree, tables.map((t) => el("details", { class: "table-node", "data-table": t.table },
        el("summary", {}, el("span", { class: "table-name", title: "Click to insert", onclick: (e) => { if (e.detail === 2) insert(t.table); } }, t.table),
          el("button", { class: "link small", title: `SELECT * FROM ${t.table} LIMIT 100`, onclick: (e) => { e.preventDefault(); setText(`SELECT *\nFROM ${t.table}\nLIMIT 100`); } }, "preview")),
        t.description ? el("p", { class: "muted small" }, t.description) : null,
        el("ul", {}, t.columns.map((c) => el("li", { title: c.description || c.name, onclick: () => insert(c.name) },
          el("code", {}, c.name), el("span", { class: "type" }, c.type.toLowerCase()),
          c.description ? el("span", { class: "desc" }, c.description) : null))))));
    } catch (e) { showError(tree, e.message); }
  }

  function filterSchema() {
    const needle = document.getElementById("schema-filter").value.toLowerCase();
    for (const node of document.querySelectorAll(".table-node")) {
      const hit = !needle || node.textContent.toLowerCase().includes(needle);
      node.hidden = !hit;
      node.open = Boolean(needle) && hit && !node.dataset.table.includes(needle);
    }
  }

  async function loadHistory() {
    const list = document.getElementById("history-list");
    try {
      const events = await api("/api/my/history?kind=sql");
      if (!events.length) { list.replaceChildren(el("p", { class: "muted" }, "No queries yet.")); return; }
      list.replaceChildren(el("ol", { class: "history" }, events.slice().reverse().map((e) => el("li", {},
        el("div", { class: "history-meta" }, el("span", {}, new Date(e.ts + "Z").toLocaleTimeString()),
          e.detail.error ? el("span", { class: "bad" }, "error") : el("span", {}, `${e.detail.rows} rows · ${e.detail.elapsed_ms} ms`),
          el("button", { class: "link", onclick: () => { setText(e.detail.sql); showTab("results"); run(); } }, "run again"),
          el("button", { class: "link", onclick: () => { setText(e.detail.sql); showTab("results"); } }, "edit")),
        el("pre", {}, e.detail.sql)))));
    } catch (e) { showError(list, e.message); }
  }

  function showTab(name) {
    for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.tab === name);
    document.getElementById("results").hidden = name !== "results";
    document.getElementById("history").hidden = name !== "history";
    if (name === "history") loadHistory();
  }

  textarea.addEventListener("input", syncHighlight);
  textarea.addEventListener("scroll", syncHighlight);
  textarea.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); run(); }
    if (e.key === "Tab") { e.preventDefault(); insert("  ", true); }
  });
  runButton.addEventListener("click", run);
  csvButton.addEventListener("click", downloadCsv);
  document.getElementById("schema-filter").addEventListener("input", filterSchema);
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showTab(tab.dataset.tab));

  const fromLink = new URLSearchParams(location.search).get("q");
  setText(fromLink || localStorage.getItem(STORAGE_KEY) || "-- The tables are on the left. For example:\nSELECT *\nFROM serving.predictions\nLIMIT 100");
  if (fromLink) history.replaceState(null, "", location.pathname);
  loadSchema();
})();
