// The retrieval playground: POST /services/retrieval/search through the gateway (recorded).
"use strict";

(() => {
  const { api, el, table, showError, formatValue } = sandbox;
  const result = document.getElementById("search-result");

  function metadataRows(meta, prefix = "") {
    return Object.entries(meta).flatMap(([k, v]) => v && typeof v === "object" && !Array.isArray(v)
      ? metadataRows(v, `${prefix}${k}.`) : [[`${prefix}${k}`, formatValue(v)]]);
  }

  async function loadMetadata() {
    const box = document.getElementById("retrieval-meta");
    try { box.replaceChildren(table(["field", "value"], metadataRows(await api("/services/retrieval/metadata")))); }
    catch (e) { showError(box, e.message); }
  }

  document.getElementById("search-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    result.replaceChildren(el("div", { class: "loading" }, "Searching…"));
    try {
      const reply = await api("/services/retrieval/search", { json: { text: document.getElementById("ticket").value, k: Number(document.getElementById("k").value) } });
      const hits = reply.results || reply.articles || [];
      const columns = hits.length ? Object.keys(hits[0]) : [];
      const versions = Object.entries(reply).filter(([k, v]) => k !== "results" && k !== "articles" && typeof v !== "object");
      result.replaceChildren(
        el("p", { class: "muted small" }, versions.map(([k, v]) => `${k}: ${formatValue(v)}`).join(" · ")),
        hits.length ? table(columns, hits.map((h) => columns.map((c) => h[c]))) : el("p", { class: "muted" }, "No articles."));
    } catch (err) { showError(result, err.message); }
  });
  loadMetadata();
})();
