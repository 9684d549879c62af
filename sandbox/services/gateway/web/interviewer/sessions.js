// The interviewer's session list: create a session (showing its links once), revoke one.
"use strict";

(() => {
  const { api, el, showError } = sandbox;
  const body = document.querySelector("#sessions tbody");

  function when(iso) { return iso ? sandbox.simTime(iso) : "—"; }

  function policyText(policy) {
    if (!policy) return "—";
    return `help ${policy.assistance.replace("-", " ")}${policy.workspace_only ? " · workspace only" : ""}`;
  }

  async function load() {
    try {
      const sessions = await api("/api/sessions");
      body.replaceChildren(...sessions.slice().reverse().map((s) => el("tr", { "data-session": s.id },
        el("td", {}, s.candidate), el("td", {}, el("span", { class: `state state-${s.state.replace(" ", "-")}` }, s.state)),
        el("td", { class: "nowrap" }, when(s.created_at)), el("td", { class: "nowrap" }, when(s.started_at)),
        el("td", {}, s.time_limit_min ? `${s.time_limit_min} min` : "—"),
        el("td", { class: "small" }, policyText(s.policy)),
        el("td", {}, s.actions ? "on" : "off"),
        el("td", { class: "nowrap" }, el("a", { href: `/interviewer/sessions/${s.id}` }, "Review"), " ",
          s.state === "revoked" ? null : el("button", { class: "link", onclick: () => revoke(s) }, "Revoke")))));
      if (!sessions.length) body.replaceChildren(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "No sessions yet.")));
    } catch (e) { showError(body, e.message); }
  }

  async function revoke(s) {
    if (!confirm(`Revoke ${s.candidate}'s session? Their link stops working at once.`)) return;
    try { await api(`/api/sessions/${s.id}/revoke`, { method: "POST" }); }
    catch (e) { alert(`Not revoked: ${e.message}`); }
    load();
  }

  document.getElementById("new-session").addEventListener("submit", async (e) => {
    e.preventDefault();
    const form = e.target;
    const out = document.getElementById("new-links");
    const limit = form.elements.time_limit_min.value;
    try {
      const made = await api("/api/sessions", { json: {
        candidate: form.elements.candidate.value, time_limit_min: limit ? Number(limit) : null,
        assistance: form.elements.assistance.value, workspace_only: form.elements.workspace_only.checked,
        actions: form.elements.actions.checked,
      } });
      const link = (label, url) => el("p", {}, el("b", {}, label), el("br"), el("input", { type: "text", readonly: true, value: url, class: "copy", onclick: (ev) => ev.target.select() }));
      out.replaceChildren(el("p", { class: "muted small" }, "Send the candidate link to the candidate; keep the interviewer link. They are shown once."),
        link("Candidate link", made.candidate_url), link("Interviewer link", made.interviewer_url));
      form.reset();
      load();
    } catch (err) { showError(out, err.message); }
  });
  load();
  setInterval(load, 10000);
})();
