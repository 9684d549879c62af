// The operator's worlds: each world's manifest, state, memory and sessions; start and stop its
// stack; create a session on a running one (its own gateway makes the links).
"use strict";

(() => {
  const { api, el, showError } = sandbox;
  const body = document.querySelector("#worlds tbody");
  const picker = document.querySelector("#world-session select[name=world]");

  async function act(w, verb) {
    try { await api(`/api/worlds/${w.name}/${verb}`, { method: "POST" }); }
    catch (e) { alert(`Not ${verb === "start" ? "started" : "stopped"}: ${e.message}`); }
    load();
  }

  function control(w) {
    if (w.operator) return el("span", { class: "muted small" }, "this stack");
    if (w.state === "stopped" || w.state === "failed") return el("button", { class: "link", onclick: () => act(w, "start") }, "Start");
    if (w.started_here) return el("button", { class: "link", onclick: () => act(w, "stop") }, "Stop");
    return el("span", { class: "muted small" }, "started elsewhere");
  }

  async function load() {
    try {
      const worlds = await api("/api/worlds");
      body.replaceChildren(...worlds.map((w) => el("tr", { "data-world": w.name, "data-state": w.state },
        el("td", {}, w.url && w.state === "running" ? el("a", { href: w.url, target: "_blank" }, w.name) : w.name),
        el("td", {}, String(w.seed)), el("td", {}, String(w.scale)), el("td", {}, w.difficulty),
        el("td", { class: "mono small", title: w.content_hash || "" }, (w.content_hash || "—").slice(0, 12)),
        el("td", {}, el("span", { class: `state state-${w.state}` }, w.state)),
        el("td", { class: "nowrap" }, w.memory_mb === null ? "—" : `${w.memory_mb} MB`),
        el("td", {}, String(w.sessions)),
        el("td", { class: "nowrap" }, control(w)))));
      if (!worlds.length) body.replaceChildren(el("tr", {}, el("td", { colspan: 9, class: "muted" }, "No built worlds yet: build one with the scenario builder.")));
      const chosen = picker.value;
      picker.replaceChildren(...worlds.filter((w) => w.state === "running" && !w.operator).map((w) => el("option", { value: w.name }, w.name)));
      if (chosen) picker.value = chosen;
    } catch (e) { showError(body, e.message); }
  }

  document.getElementById("world-session").addEventListener("submit", async (e) => {
    e.preventDefault();
    const form = e.target;
    const out = document.getElementById("world-links");
    const limit = form.elements.time_limit_min.value;
    try {
      const made = await api(`/api/worlds/${form.elements.world.value}/sessions`, { json: {
        candidate: form.elements.candidate.value, time_limit_min: limit ? Number(limit) : null,
      } });
      const link = (label, url) => el("p", {}, el("b", {}, label), el("br"), el("input", { type: "text", readonly: true, value: url, class: "copy", onclick: (ev) => ev.target.select() }));
      out.replaceChildren(el("p", { class: "muted small" }, `A session on ${made.world} (${made.gateway}). Send the candidate link to the candidate; keep the interviewer link. They are shown once.`),
        link("Candidate link", made.candidate_url), link("Interviewer link", made.interviewer_url));
      form.elements.candidate.value = "";
      load();
    } catch (err) { showError(out, err.message); }
  });
  load();
  setInterval(load, 5000);
})();
