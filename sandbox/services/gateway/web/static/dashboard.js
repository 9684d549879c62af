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

  const PERIOD_DAYS = { week: 7 };
  const FACET_ROW_PX = 130;

  // One trace per y column (its legend is the panel's label for it) or per value of the series
  // column (the value reads as its legend).
  function series(panel, data, rows = data.rows) {
    const xi = data.columns.indexOf(panel.x);
    if (panel.series) {
      const si = data.columns.indexOf(panel.series);
      const yi = data.columns.indexOf(panel.y[0]);
      const groups = new Map();
      for (const row of rows) {
        const key = String(row[si]);
        if (!groups.has(key)) groups.set(key, { name: key, x: [], y: [] });
        groups.get(key).x.push(row[xi]);
        groups.get(key).y.push(row[yi]);
      }
      return [...groups.values()];
    }
    return panel.y.map((column) => {
      const yi = data.columns.indexOf(column);
      return { name: (panel.labels || {})[column] || column, x: rows.map((r) => r[xi]), y: rows.map((r) => r[yi]) };
    });
  }

  function facets(panel, data) {
    if (!panel.facet) return [];
    const fi = data.columns.indexOf(panel.facet);
    const groups = new Map();
    for (const row of data.rows) {
      const key = String(row[fi]);
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(row);
    }
    return [...groups.entries()];
  }

  function hover(panel, extra = "") {
    return `%{y:.4~g}${panel.unit ? " " + panel.unit : ""}${extra}<extra>%{fullData.name}</extra>`;
  }

  // A period the range covers only in part is drawn apart: its points hollow on a dashed line,
  // and the hover says how much of it the range holds, so an unfinished week is not a drop.
  function withPartial(panel, data, trace, style) {
    const partial = data.partial || {};
    const isPartial = trace.x.map((x) => x in partial);
    if (!isPartial.some(Boolean)) return [{ ...trace, ...style }];
    const days = PERIOD_DAYS[panel.period];
    const label = `partial ${panel.period}`;
    const held = (x) => (partial[x] >= 1 ? `${partial[x]} of ${days} days` : `${partial[x] * 24 < 1 ? "under an hour" : Math.round(partial[x] * 24) + " h"} of ${days} days`);
    if (style.type === "bar") {
      return [{
        ...trace, ...style,
        marker: { ...style.marker, opacity: isPartial.map((p) => (p ? 0.4 : 1)) },
        customdata: trace.x.map((x) => (x in partial ? ` · ${label}: ${held(x)}` : "")),
        hovertemplate: hover(panel, "%{customdata}"),
      }];
    }
    const near = (i) => isPartial[i] || isPartial[i - 1] || isPartial[i + 1];
    const full = { ...trace, ...style, y: trace.y.map((y, i) => (isPartial[i] ? null : y)) };
    const dashed = {
      ...style, x: trace.x, y: trace.y.map((y, i) => (near(i) ? y : null)), name: trace.name,
      line: { ...style.line, dash: "dot" }, mode: "lines", hoverinfo: "skip", showlegend: false, legendgroup: trace.name,
    };
    const marks = {
      ...style, name: trace.name, mode: "markers", showlegend: false, legendgroup: trace.name,
      x: trace.x.filter((_, i) => isPartial[i]), y: trace.y.filter((_, i) => isPartial[i]),
      marker: { ...style.marker, symbol: "circle-open", size: 8 },
      customdata: trace.x.filter((_, i) => isPartial[i]).map((x) => `${label}: ${held(x)} in range`),
      hovertemplate: hover(panel, " · %{customdata}"),
      meta: "partial",
    };
    full.legendgroup = trace.name;
    return [full, dashed, marks];
  }

  function traces(panel, data) {
    const kind = panel.chart === "bar" ? "bar" : "scatter";
    return series(panel, data).flatMap((t, i) => {
      const color = COLORS[i % COLORS.length];
      const style = {
        type: kind, mode: kind === "bar" ? undefined : "lines", hovertemplate: hover(panel),
        line: { color, width: 1.6 }, marker: { color },
      };
      if (panel.chart === "area") style.fill = "tozeroy";
      return withPartial(panel, data, t, style);
    });
  }

  // The range's partial periods, shaded, with a note at the top of the chart.
  function partialShapes(panel, data) {
    const partial = Object.keys(data.partial || {});
    if (!partial.length) return { shapes: [], annotations: [] };
    const days = PERIOD_DAYS[panel.period] * 864e5;
    const iso = (d) => new Date(d).toISOString().slice(0, 19);
    // The server's times are UTC without a zone; a DATE is its midnight.
    const at = (x) => Date.parse(/^\d{4}-\d\d-\d\d$/.test(x) ? `${x}T00:00:00Z` : /[zZ]|[+-]\d\d:\d\d$/.test(x) ? x : x + "Z");
    const shapes = [], annotations = [];
    for (const x of partial) {
      const from = Math.max(at(x), at(data.start)), to = Math.min(at(x) + days, at(data.end));
      shapes.push({ type: "rect", xref: "x", yref: "paper", x0: iso(from), x1: iso(to), y0: 0, y1: 1, fillcolor: "#94a3b8", opacity: 0.12, line: { width: 0 }, layer: "below" });
      annotations.push({ xref: "x", yref: "paper", x: iso((from + to) / 2), y: 1, yanchor: "bottom", showarrow: false, text: `partial ${panel.period}`, font: { size: 10, color: "#64748b" } });
    }
    return { shapes, annotations };
  }

  // Small multiples: one chart per facet value on its own y axis, the x axes zooming together.
  function facetFigure(panel, data, groups, layout) {
    const columns = Math.min(groups.length, panel.width === 2 ? 4 : 2);
    const rows = Math.ceil(groups.length / columns);
    const out = [], annotations = [];
    groups.forEach(([name, subset], i) => {
      const n = i === 0 ? "" : String(i + 1);
      series(panel, data, subset).forEach((t, j) => {
        const color = COLORS[j % COLORS.length];
        out.push({ ...t, type: "scatter", mode: "lines", xaxis: `x${n}`, yaxis: `y${n}`, showlegend: false, line: { color, width: 1.4 }, marker: { color }, hovertemplate: hover(panel) });
      });
      layout[`xaxis${n}`] = { type: "date", gridcolor: "#eef0f3", matches: i ? "x" : undefined, showticklabels: i >= groups.length - columns, tickfont: { size: 9 } };
      layout[`yaxis${n}`] = { gridcolor: "#eef0f3", tickfont: { size: 9 }, nticks: 4 };
      annotations.push({ xref: `x${n} domain`, yref: `y${n} domain`, x: 0, y: 1, xanchor: "left", yanchor: "bottom", showarrow: false, text: name, font: { size: 10 } });
    });
    Object.assign(layout, {
      grid: { rows, columns, pattern: "independent", ygap: 0.45, xgap: 0.12 },
      height: rows * FACET_ROW_PX + 40, showlegend: false, annotations, hovermode: "closest",
      margin: { l: 40, r: 8, t: 18, b: 28 },
    });
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
        return el("div", { class: "stat" }, el("b", {}, formatValue(v)), el("span", {}, `${(panel.labels || {})[column] || column.replaceAll("_", " ")}${panel.unit ? " (" + panel.unit + ")" : ""}`));
      })));
      return;
    }
    const plot = el("div", { class: "plot" });
    body.replaceChildren(plot);
    const layout = {
      margin: { l: 48, r: 12, t: 14, b: 32 }, height: 240, showlegend: true,
      legend: { orientation: "h", y: -0.2, font: { size: 11 } }, hovermode: "x unified",
      xaxis: { type: "date", gridcolor: "#eef0f3" }, yaxis: { gridcolor: "#eef0f3", title: { text: panel.unit, font: { size: 11 } }, rangemode: "tozero" },
      paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)", font: { family: "system-ui, sans-serif", size: 11 },
      barmode: "group",
    };
    const groups = facets(panel, data);
    let drawn;
    if (groups.length > 1) {
      delete layout.xaxis;
      delete layout.yaxis;
      drawn = facetFigure(panel, data, groups, layout);
    } else {
      drawn = traces(panel, data);
      Object.assign(layout, partialShapes(panel, data));
    }
    plot.dataset.facets = String(groups.length > 1 ? groups.length : 0);
    Plotly.react(plot, drawn, layout, { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"] });
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
