// The logs explorer: filters, newest first, pages pinned to the moment of the search, live tail.
"use strict";

(() => {
  const { api, el, showError } = sandbox;
  const form = document.getElementById("log-form");
  const body = document.querySelector("#log-table tbody");
  const status = document.getElementById("log-status");
  const PAGE = 100;
  const TAIL_MS = 5000;
  let search = null; // the filters and the pinned end of the current search
  let offset = 0;
  let newest = null;

  function filters() {
    const q = new URLSearchParams();
    for (const name of ["service", "level", "start", "end", "q"]) {
      const value = form.elements[name].value.trim();
      if (value) q.set(name, value);
    }
    return q;
  }

  function row(line, fresh) {
    return el("tr", { class: `level-${line.level}${fresh ? " fresh" : ""}` },
      el("td", { class: "nowrap" }, sandbox.simTime(line.ts) + line.ts.slice(16, 19)),
      el("td", {}, line.service), el("td", {}, el("span", { class: `badge ${line.level}` }, line.level)),
      el("td", {}, line.event), el("td", { class: "message" }, line.message),
      el("td", { class: "attrs" }, line.attrs || ""));
  }

  async function load(newOffset) {
    offset = newOffset;
    const q = new URLSearchParams(search);
    q.set("offset", offset);
    q.set("limit", PAGE);
    status.textContent = "Searching…";
    try {
      const page = await api(`/api/logs?${q}`);
      if (!search.has("end")) search.set("end", page.end);
      fillServices(page.services);
      body.replaceChildren(...page.lines.map((l) => row(l, false)));
      if (offset === 0) newest = page.lines.length ? page.lines[0].ts : page.end;
      const last = Math.min(offset + page.lines.length, page.total);
      status.textContent = page.total
        ? `${(offset + 1).toLocaleString()}–${last.toLocaleString()} of ${page.total.toLocaleString()} lines, newest first`
        : "No log lines match.";
      document.getElementById("older").disabled = last >= page.total;
      document.getElementById("newer").disabled = offset === 0;
    } catch (e) { showError(status, e.message); }
  }

  function fillServices(services) {
    const select = form.elements.service;
    if (select.options.length > 1) return;
    for (const s of services) select.append(el("option", { value: s }, s));
    const wanted = new URLSearchParams(location.search).get("service");
    if (wanted) select.value = wanted;
  }

  async function tail() {
    // The tail follows "now": a search that ends at a chosen moment has nothing to tail.
    if (!document.getElementById("tail").checked || offset !== 0 || !newest || document.hidden || form.elements.end.value) return;
    const q = new URLSearchParams(search);
    q.delete("end");
    q.set("after", newest);
    q.set("limit", 500);
    try {
      const page = await api(`/api/logs?${q}`);
      if (!page.lines.length) return;
      newest = page.lines[0].ts;
      body.prepend(...page.lines.map((l) => row(l, true)));
      while (body.children.length > PAGE * 3) body.lastElementChild.remove();
      status.textContent = `Live tail: ${page.lines.length} new line${page.lines.length === 1 ? "" : "s"} at ${sandbox.simTime(newest)}`;
    } catch (e) { /* keep tailing; the stack may be restarting */ }
  }

  form.addEventListener("submit", (e) => { e.preventDefault(); search = filters(); load(0); });
  document.getElementById("older").addEventListener("click", () => load(offset + PAGE));
  document.getElementById("newer").addEventListener("click", () => load(Math.max(0, offset - PAGE)));
  setInterval(tail, TAIL_MS);
  const initial = new URLSearchParams(location.search);
  for (const name of ["level", "q"]) if (initial.get(name)) form.elements[name].value = initial.get(name);
  search = filters();
  if (initial.get("service")) search.set("service", initial.get("service"));
  load(0);
})();
