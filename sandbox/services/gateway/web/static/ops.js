// The ops console: every action with a form for its parameters; applying one asks the gateway to
// change the running stack. Actions this version cannot apply, or a session with actions off,
// are said so plainly, and their forms cannot be sent.
"use strict";

(() => {
  const { api, el, fill, showError } = sandbox;

  // A parameter that may be left empty is `anyOf` its type and null: its own type and bounds
  // are in the non-null branch.
  function typed(spec) {
    const given = (spec.anyOf || []).find((s) => s.type && s.type !== "null");
    return given ? { ...given, ...spec, type: given.type, format: given.format } : spec;
  }

  function input(name, raw, required) {
    const spec = typed(raw);
    const choices = spec.enum || (spec.anyOf || []).flatMap((s) => s.enum || []);
    const attrs = { name, "data-param": name, required };
    if (choices.length) return el("select", attrs, choices.map((c) => el("option", { value: c, selected: c === spec.default }, c)));
    if (spec.type === "boolean") return el("input", { ...attrs, type: "checkbox", checked: spec.default === true, required: false });
    if (spec.type === "number" || spec.type === "integer") {
      return el("input", { ...attrs, type: "number", step: spec.type === "integer" ? "1" : "any",
        min: spec.minimum ?? spec.exclusiveMinimum, max: spec.maximum ?? spec.exclusiveMaximum, value: spec.default ?? undefined });
    }
    if (spec.format === "date") return el("input", { ...attrs, type: "date", value: spec.default ?? undefined });
    return el("input", { ...attrs, type: "text", value: spec.default ?? undefined, pattern: spec.pattern });
  }

  function params(form, schema) {
    const out = {};
    for (const [name, raw] of Object.entries(schema.properties || {})) {
      const spec = typed(raw);
      const field = form.elements[name];
      if (spec.type === "boolean") out[name] = field.checked;
      else if (field.value === "") continue;
      else out[name] = spec.type === "number" || spec.type === "integer" ? Number(field.value) : field.value;
    }
    return out;
  }

  function card(action, enabled) {
    const schema = action.params_schema;
    const required = new Set(schema.required || []);
    const line = el("p", { class: "small", "data-result": action.id });
    const usable = enabled && action.available;
    const form = el("form", { class: "stack", "data-action": action.id },
      Object.entries(schema.properties || {}).map(([name, spec]) =>
        el("label", {}, `${spec.title || name}${spec.description ? ` — ${spec.description}` : ""} `, input(name, spec, required.has(name)))),
      el("button", { class: "primary", type: "submit", disabled: !usable }, "Apply"), line);
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      try {
        const reply = await api("/api/actions", { json: { action: action.id, params: params(form, schema) } });
        fill(line, el("span", { class: "good" }, reply.message));
        loadApplied();
      } catch (err) { showError(line, err.message); }
    });
    return el("article", { class: "entry card", "data-action-card": action.id },
      el("h3", {}, action.id, " ", action.available ? el("span", { class: "muted small" }, `takes about ${action.delay_minutes} simulated min`)
        : el("span", { class: "badge", "data-unavailable": "true" }, "not available in this version")),
      el("p", {}, action.description), form);
  }

  async function loadApplied() {
    const box = document.getElementById("applied");
    try {
      const events = await api("/api/my/history?kind=action");
      fill(box, events.length ? el("ul", { class: "small" }, events.slice().reverse().map((e) => el("li", {},
        e.detail.requested_at ? el("span", { class: "nowrap" }, sandbox.simTime(e.detail.requested_at)) : null, ` ${e.detail.action} `,
        Object.entries(e.detail.params || {}).map(([k, v]) => `${k}=${v}`).join(", "), ` · ${e.detail.status}`,
        e.detail.effective_at ? ` · in effect from ${sandbox.simTime(e.detail.effective_at)}` : ""))) : el("p", { class: "muted small" }, "None yet."));
    } catch (err) { showError(box, err.message); }
  }

  async function load() {
    try {
      const catalog = await api("/api/actions");
      fill(document.getElementById("ops-state"), catalog.enabled ? null
        : el("div", { class: "card muted", "data-actions-off": "true" }, "Actions are off for this session: you can see what could be done, not do it. Write what you would ship first in the diagnosis."));
      fill(document.getElementById("actions"), catalog.actions.map((a) => card(a, catalog.enabled)));
      if (catalog.enabled) loadApplied();
      else fill(document.getElementById("applied"), el("p", { class: "muted small" }, "Actions are off for this session."));
    } catch (e) { showError(document.getElementById("actions"), e.message); }
  }
  load();
})();
