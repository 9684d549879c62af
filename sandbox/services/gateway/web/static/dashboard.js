// A dashboard: every panel's query runs through /api/dashboards/…/panels/… for the picked time
// range and segment, and is drawn with plotly. The page marks when the last panel is drawn.
"use strict";

(() => {
  const { api, el, table, formatValue, showError } = sandbox;
  const board = JSON.parse(document.getElementById("board").textContent);
  const form = document.getElementById("range-form");
  const rangeSelect = document.getElementById("range");
  const params = new URLSearchParams(location.search);
  const PRESET_HOURS = { "14d": 336, "7d": 168, "2d": 48, "1d": 24 };
  const REFRESH_MS = 30000;
  const COLORS = ["#2563eb", "#e11d48", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d", "#475569", "#ea580c"];
  let generation = 0;

  // Restore the controls from the address bar, so a view can be shared and reloaded.
  rangeSelect.value = params.get("range") || "whole";
  for (const name of ["start", "end"]) if (params.get(name)) form.elements[name].value = params.get(name);
  for (const select of form.querySelectorAll("select.variable")) select.value = params.get(select.name) || "";
  syncCustom();

  function syncCustom() {
    form.classList.toggle("show-custom", rangeSelect.value === "custom");
  }

  function isoLocal(date) { return date.toISOString().slice(0, 16); }

  function range(clock) {
    const now = new Date(Date.parse(clock.now + "Z"));
    const choice = rangeSelect.value;
    if (choice === "custom") {
      return { start: form.elements.start.value || isoLocal(new Date(clock.history_start + "Z")), end: form.elements.end.value || isoLocal(now) };
    }
    if (choice === "live") return { start: clock.live_start.slice(0, 16), end: null };
    if (PRESET_HOURS[choice]) return { start: isoLocal(new Date(now - PRESET_HOURS[choice] * 3600e3)), end: null };
    return { start: clock.history_start.slice(0, 16), end: null };
  }

  function query(clock) {
    const q = new URLSearchParams();
    const r = range(clock);
    q.set("start", r.start);
    if (r.end) q.set("end", r.end);
    for (const select of form.querySelectorAll("select.variable")) if (select.value) q.set(select.name, select.value);
    return q;
  }

  function saveToAddressBar() {
    const q = new URLSearchParams();
    q.set("range", rangeSelect.value);
    if (rangeSelect.value === "custom") {
      if (form.elements.start.value) q.set("start", form.elements.start.value);
      if (form.elements.end.value) q.set("end", form.elements.end.value);
    }
    for (const select of form.querySelectorAll("select.variable")) if (select.value) q.set(select.name, select.value);
    history.replaceState(null, "", `${location.pathname}?${q}`);
  }

  function traces(panel, data) {
    const xi = data.columns.indexOf(panel.x);
    const kind = panel.chart === "bar" ? "bar" : "scatter";
    const base = { type: kind, mode: panel.chart === "bar" ? undefined : "lines", hovertemplate: `%{y:.4~g}${panel.unit ? " " + panel.unit : ""}<extra>%{fullData.name}</extra>` };
    if (panel.chart === "area") base.fill = "tozeroy";
    const out = [];
    if (panel.series) {
      const si = data.columns.indexOf(panel.series);
      const yi = data.columns.indexOf(panel.y[0]);
      const groups = new Map();
      for (const row of data.rows) {
        const key = String(row[si]);
        if (!groups.has(key)) groups.set(key, { x: [], y: [] });
        groups.get(key).x.push(row[xi]);
        groups.get(key).y.push(row[yi]);
      }
      for (const [name, g] of groups) out.push({ ...base, name, x: g.x, y: g.y });
    } else {
      for (const column of panel.y) {
        const yi = data.columns.indexOf(column);
        out.push({ ...base, name: column, x: data.rows.map((r) => r[xi]), y: data.rows.map((r) => r[yi]) });
      }
    }
    out.forEach((t, i) => { t.line = { color: COLORS[i % COLORS.length], width: 1.6 }; t.marker = { color: COLORS[i % COLORS.length] }; });
    return out;
  }

  function draw(panel, figure, data) {
    const body = figure.querySelector(".panel-body");
    figure.querySelector(".panel-meta").textContent = `${data.rows.length} rows · ${Math.round(data.elapsed_ms)} ms`;
    if (!data.rows.length) {
      body.replaceChildren(el("div", { class: "empty" }, "No data in this time range."));
      return;
    }
    if (panel.chart === "table") {
      body.replaceChildren(el("div", { class: "table-wrap" }, table(data.columns, data.rows, { links: panel.links })));
      return;
    }
    if (panel.chart === "stat") {
      const row = data.rows[data.rows.length - 1];
      body.replaceChildren(el("div", { class: "stats" }, panel.y.map((column) => {
        const v = row[data.columns.indexOf(column)];
        return el("div", { class: "stat" }, el("b", {}, formatValue(v)), el("span", {}, `${column}${panel.unit ? " (" + panel.unit + ")" : ""}`));
      })));
      return;
    }
    const plot = el("div", { class: "plot" });
    body.replaceChildren(plot);
    const layout = {
      margin: { l: 48, r: 12, t: 8, b: 32 }, height: 240, showlegend: true,
      legend: { orientation: "h", y: -0.2, font: { size: 11 } }, hovermode: "x unified",
      xaxis: { type: "date", gridcolor: "#eef0f3" }, yaxis: { gridcolor: "#eef0f3", title: { text: panel.unit, font: { size: 11 } }, rangemode: "tozero" },
      paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)", font: { family: "system-ui, sans-serif", size: 11 },
      barmode: "group",
    };
    Plotly.react(plot, traces(panel, data), layout, { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"] });
  }

  async function load(refresh = false) {
    const clock = sandbox.clockInfo() || (await sandbox.refreshClock(), sandbox.clockInfo());
    if (!clock) { setTimeout(load, 1000); return; }
    const mine = ++generation;
    const q = query(clock);
    if (refresh) q.set("refresh", "true");
    document.body.dataset.panelsDrawn = "0";
    let drawn = 0;
    await Promise.all(board.panels.map(async (panel) => {
      const figure = document.querySelector(`[data-panel="${panel.id}"]`);
      try {
        const data = await api(`/api/dashboards/${board.id}/panels/${panel.id}?${q}`);
        if (mine !== generation) return;
        draw(panel, figure, data);
      } catch (e) {
        if (mine !== generation) return;
        showError(figure.querySelector(".panel-body"), e.message);
      }
      drawn += 1;
      document.body.dataset.panelsDrawn = String(drawn);
    }));
    if (mine === generation) {
      window.lastPanelDrawnAt = performance.now();
      document.body.dataset.dashboardReady = "true";
    }
  }

  form.addEventListener("change", () => { syncCustom(); saveToAddressBar(); load(); });
  form.addEventListener("submit", (e) => e.preventDefault());
  setInterval(() => {
    if (document.getElementById("auto-refresh").checked && rangeSelect.value !== "custom" && !document.hidden) {
      sandbox.refreshClock().then(() => load(true));
    }
  }, REFRESH_MS);
  load();
})();
