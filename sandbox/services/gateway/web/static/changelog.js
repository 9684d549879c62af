// The changelog: a timeline of entries by kind, and the entries themselves, newest first.
"use strict";

(() => {
  const { api, el, showError } = sandbox;
  const KIND_COLORS = { deploy: "#2563eb", config: "#7c3aed", upstream: "#d97706", incident: "#e11d48", oncall: "#059669" };
  let entries = [];

  function color(kind) { return KIND_COLORS[kind] || "#475569"; }

  function render() {
    const kind = document.getElementById("kind").value;
    const needle = document.getElementById("changelog-q").value.toLowerCase();
    const shown = entries.filter((e) => (!kind || e.kind === kind) &&
      (!needle || `${e.title} ${e.body} ${e.service} ${e.author}`.toLowerCase().includes(needle)));
    const box = document.getElementById("entries");
    box.replaceChildren(...shown.map((e) => el("article", { class: "entry card" },
      el("div", { class: "entry-meta" }, el("span", { class: "badge", style: `background:${color(e.kind)}` }, e.kind),
        el("span", { class: "nowrap" }, sandbox.simTime(e.ts)), el("span", {}, e.service), el("span", { class: "muted" }, e.author)),
      el("h3", {}, e.title), e.body ? el("p", {}, e.body) : null)));
    if (!shown.length) box.replaceChildren(el("p", { class: "muted" }, "No entries match."));
    const kinds = [...new Set(shown.map((e) => e.kind))];
    Plotly.react("timeline", kinds.map((k) => {
      const mine = shown.filter((e) => e.kind === k);
      return { type: "scatter", mode: "markers", name: k, x: mine.map((e) => e.ts), y: mine.map(() => k),
        text: mine.map((e) => e.title), hovertemplate: "%{x}<br>%{text}<extra>%{y}</extra>", marker: { size: 11, color: color(k) } };
    }), { height: 60 + 34 * Math.max(kinds.length, 1), margin: { l: 80, r: 12, t: 8, b: 30 }, showlegend: false,
      xaxis: { type: "date" }, paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)", font: { size: 11 } },
      { displaylogo: false, responsive: true });
  }

  async function load() {
    try {
      entries = await api("/api/changelog");
      const select = document.getElementById("kind");
      for (const k of [...new Set(entries.map((e) => e.kind))].sort()) select.append(el("option", { value: k }, k));
      render();
    } catch (e) { showError(document.getElementById("entries"), e.message); }
  }
  document.getElementById("changelog-form").addEventListener("input", render);
  document.getElementById("changelog-form").addEventListener("submit", (e) => e.preventDefault());
  load();
})();
