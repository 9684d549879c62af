// The operator's worlds: each world's manifest, state, memory and sessions; start and stop its
// stack; create a session on a running one (its own gateway makes the links).
"use strict";

(() => {
  const { api, el, showError } = sandbox;
  const body = document.querySelector("#worlds tbody");
  const form = document.getElementById("world-session");
  const picker = form.querySelector("select[name=world]");
  const none = document.getElementById("world-none");

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

  // Why there is nothing to pick, and what to do about it.
  function nothingToPick(worlds) {
    const starting = worlds.filter((w) => w.state === "starting").map((w) => w.name);
    if (starting.length) return `No world is running yet (starting: ${starting.join(", ")}): a session can be created once one is running.`;
    if (!worlds.length) return "No world is running: build one with the scenario builder, then start it above.";
    return "No world is running: start one above.";
  }

  function offer(worlds) {
    const running = worlds.filter((w) => w.state === "running");
    const chosen = picker.value;
    // This stack's own world is offered too: its sessions are this gateway's own.
    picker.replaceChildren(...running.map((w) => el("option", { value: w.name, "data-own": w.operator }, w.operator ? `${w.name} (this stack)` : w.name)));
    if (running.some((w) => w.name === chosen)) picker.value = chosen;
    none.textContent = running.length ? "" : nothingToPick(worlds);
    none.hidden = running.length > 0;
    form.querySelector("button[type=submit]").disabled = !running.length;
  }

  async function load() {
    try {
      const worlds = await api("/api/worlds");
      body.replaceChildren(...worlds.map((w) => el("tr", { "data-world": w.name, "data-state": w.state, "data-operator": w.operator },
        el("td", {}, w.url && w.state === "running" ? el("a", { href: w.url, target: "_blank" }, w.name) : w.name),
        el("td", {}, String(w.seed)), el("td", {}, String(w.scale)), el("td", {}, w.difficulty),
        el("td", { class: "mono small", title: w.content_hash || "" }, (w.content_hash || "—").slice(0, 12)),
        el("td", {}, el("span", { class: `state state-${w.state}` }, w.state)),
        el("td", { class: "nowrap memory" }, w.memory_mb === null ? "—" : `${w.memory_mb} MB`),
        el("td", { class: "sessions" }, String(w.sessions)),
        el("td", { class: "nowrap" }, control(w)))));
      if (!worlds.length) body.replaceChildren(el("tr", {}, el("td", { colspan: 9, class: "muted" }, "No built worlds yet: build one with the scenario builder.")));
      offer(worlds);
    } catch (e) { showError(body, e.message); }
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const out = document.getElementById("world-links");
    const limit = form.elements.time_limit_min.value;
    const option = picker.selectedOptions[0];
    if (!option) return;
    const own = option.hasAttribute("data-own");
    try {
      const made = await api(own ? "/api/sessions" : `/api/worlds/${option.value}/sessions`, { json: {
        candidate: form.elements.candidate.value, time_limit_min: limit ? Number(limit) : null,
      } });
      const where = own ? `${option.value} (this stack)` : `${made.world} (${made.gateway})`;
      const link = (label, url) => el("p", {}, el("b", {}, label), el("br"), el("input", { type: "text", readonly: true, value: url, class: "copy", onclick: (ev) => ev.target.select() }));
      out.replaceChildren(el("p", { class: "muted small" }, `A session on ${where}. Send the candidate link to the candidate; keep the interviewer link. They are shown once.`),
        link("Candidate link", made.candidate_url), link("Interviewer link", made.interviewer_url));
      form.elements.candidate.value = "";
      load();
    } catch (err) { showError(out, err.message); }
  });
  load();
  setInterval(load, 5000);
})();
