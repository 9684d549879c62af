// The scenario builder: compose a scenario from the catalog, validate it on the server (errors
// name the field), preview the brief, build a world and follow its progress. Builds run one at a
// time (the builds_at_once setting); the others wait in a queue, and any of them can be cancelled.
// A finished build is started from here or from the Worlds page.
"use strict";

(() => {
  const { api, el, fill, showError } = sandbox;
  const form = document.getElementById("scenario-form");
  const verdict = document.getElementById("verdict");
  let catalog = null;

  function paramInput(prefix, p, value) {
    const name = `${prefix}.${p.name}`;
    const current = value !== undefined ? value : p.default;
    let input;
    if (p.range.includes(" | ")) {
      // A choice that may be left unset (a fault's own difficulty) offers "unset" first.
      const options = (p.default === null ? [""] : []).concat(p.range.split(" | "));
      input = el("select", { name }, options.map((o) => { const opt = el("option", { value: o }, o || "(the scenario's)"); if (String(current ?? "") === o) opt.selected = true; return opt; }));
    } else if (p.type === "integer" || p.type === "number") {
      const [lo, hi] = p.range.split("..");
      input = el("input", { type: "number", name, min: lo || undefined, max: hi || undefined, step: p.type === "integer" ? "1" : "any", value: current ?? "" });
    } else {
      input = el("input", { type: "text", name, value: current ?? "" });
    }
    input.dataset.kind = p.type || "string";
    return el("label", { title: p.description }, `${p.name}${p.range && !p.range.includes(" | ") ? ` (${p.range})` : ""}`, input);
  }

  function entry(kind, item, chosen) {
    const id = kind === "fault" ? item.id : item.kind;
    const box = el("input", { type: "checkbox", name: `${kind}:${id}`, checked: Boolean(chosen) });
    const params = el("div", { class: "params row", hidden: !chosen }, item.parameters.map((p) => paramInput(`${kind}:${id}`, p, chosen ? chosen[p.name] : undefined)));
    box.addEventListener("change", () => { params.hidden = !box.checked; });
    return el("div", { class: "catalog-entry", "data-id": id },
      el("label", { class: "check" }, box, el("b", {}, id), el("span", { class: "muted" }, ` — ${item.title}`)),
      item.rating ? el("p", { class: "muted small" }, `${item.rating} · ${item.observation}`) : null,
      params);
  }

  function fillForm(raw) {
    form.elements.out_name.value = `${raw.world.name}-seed${raw.world.seed}`;
    form.elements.seed.value = raw.world.seed;
    form.elements.scale.value = raw.world.scale ?? 1;
    fill(form.elements.difficulty, catalog.difficulties.map((d) => el("option", { value: d }, d)));
    form.elements.difficulty.value = raw.difficulty ?? catalog.default_difficulty;
    form.elements.brief_title.value = raw.brief.title;
    form.elements.brief_text.value = raw.brief.text.trim();
    const faults = Object.fromEntries((raw.faults || []).map((f) => [f.id, f]));
    const decoys = Object.fromEntries((raw.decoys || []).map((d) => [d.kind, d]));
    fill(document.getElementById("faults"), catalog.faults.map((f) => entry("fault", f, faults[f.id])));
    fill(document.getElementById("decoys"), catalog.decoys.map((d) => entry("decoy", d, decoys[d.kind])));
  }

  function valueOf(input) {
    if (input.value === "") return undefined;
    if (input.dataset.kind === "integer") return parseInt(input.value, 10);
    if (input.dataset.kind === "number") return Number(input.value);
    return input.value;
  }

  function composed() {
    const chosen = (kind) => [...form.querySelectorAll(`input[type=checkbox][name^="${kind}:"]`)].filter((b) => b.checked).map((b) => {
      const id = b.name.split(":")[1];
      const out = kind === "fault" ? { id } : { kind: id };
      for (const input of form.querySelectorAll(`[name^="${kind}:${id}."]`)) {
        const v = valueOf(input);
        if (v !== undefined) out[input.name.split(".").slice(1).join(".")] = v;
      }
      return out;
    });
    return {
      difficulty: form.elements.difficulty.value,
      world: { ...catalog.running.world, seed: Number(form.elements.seed.value), scale: Number(form.elements.scale.value) },
      brief: { title: form.elements.brief_title.value, text: form.elements.brief_text.value },
      faults: chosen("fault"),
      decoys: chosen("decoy"),
    };
  }

  function body() {
    const pasted = document.getElementById("pasted").value.trim();
    return pasted ? { toml: pasted } : { scenario: composed() };
  }

  async function validate() {
    try {
      const reply = await api("/api/builder/validate", { json: body() });
      fill(verdict, el("p", { class: "good" }, `Valid: ${reply.summary}`));
      document.getElementById("preview").hidden = false;
      fill(document.getElementById("brief-preview"), el("h2", {}, reply.brief.title), reply.brief.text.split(/\n\s*\n/).map((p) => el("p", {}, p)));
      document.getElementById("toml-preview").textContent = reply.toml;
      return true;
    } catch (e) {
      showError(verdict, e.message);
      return false;
    }
  }

  async function build() {
    if (!(await validate())) return;
    try {
      const started = await api("/api/builder/builds", { json: { ...body(), name: form.elements.out_name.value } });
      document.getElementById("progress").hidden = false;
      follow(started.id);
    } catch (e) { showError(verdict, e.message); }
  }

  function waiting(status) {
    if (status.status === "queued") {
      return status.ahead ? `Queued: ${status.ahead} queued build(s) start before this one.` : "Queued: it starts when the running build ends.";
    }
    return "Building…";
  }

  async function cancel(id) {
    try { await api(`/api/builder/builds/${id}`, { method: "DELETE" }); }
    catch (e) { showError(document.getElementById("built"), e.message); }
    listBuilds();
  }

  async function listBuilds() {
    let builds;
    try { builds = await api("/api/builder/builds"); }
    catch (e) { showError(document.getElementById("builds"), e.message); return; }
    document.getElementById("builds-card").hidden = builds.length === 0;
    fill(document.getElementById("builds"), builds.map((b) =>
      el("div", { class: "row small", "data-status": b.status },
        el("b", {}, b.name),
        el("span", { class: "muted" }, b.status === "queued" ? `queued (${b.ahead} ahead)` : b.status),
        ["queued", "building"].includes(b.status) ? el("button", { type: "button", onclick: () => cancel(b.id) }, "Cancel") : null)));
  }

  async function follow(id) {
    let status;
    try { status = await api(`/api/builder/builds/${id}`); }
    catch (e) {
      showError(document.getElementById("built"), `Lost track of the build (${e.message}); retrying…`);
      setTimeout(() => follow(id), 5000);
      return;
    }
    listBuilds();
    fill(document.getElementById("stages"), Object.entries(status.stages).map(([stage, s]) =>
      el("div", { class: "stage" }, el("span", {}, stage), el("progress", { max: s.total || 1, value: s.done }), el("span", { class: "muted small" }, `${s.done}/${s.total}`))));
    document.getElementById("build-log").textContent = status.log.join("\n");
    const built = document.getElementById("built");
    if (status.status === "queued" || status.status === "building") {
      fill(built, el("p", { class: "muted" }, waiting(status)), el("button", { type: "button", onclick: () => cancel(id) }, "Cancel build"));
      setTimeout(() => follow(id), 1500);
      return;
    }
    if (status.status === "cancelled") { fill(built, el("p", { class: "muted" }, "The build was cancelled; nothing it wrote was kept.")); return; }
    if (status.status === "failed") { showError(built, "The build failed; see its output above."); return; }
    if (status.status === "interrupted") { showError(built, "The gateway stopped while this build waited or ran; build it again."); return; }
    const started = el("span", { class: "muted small" });
    const start = el("button", { type: "button", class: "primary", onclick: async () => {
      try {
        await api(`/api/worlds/${status.world}/start`, { method: "POST" });
        fill(started, "Starting: follow it on ", el("a", { href: "/interviewer/worlds" }, "Worlds"), ".");
        start.disabled = true;
      } catch (e) { showError(started, e.message); }
    } }, "Start");
    fill(built, el("p", { class: "good" }, `Built into ${status.out} (seed ${status.seed}, ${status.difficulty}).`),
      el("p", { class: "row" }, start, started),
      el("p", { class: "muted small" }, "Or start it by hand with ", el("code", {}, status.up_command)),
      el("details", {}, el("summary", {}, "Answer key"), el("pre", { class: "response small" }, JSON.stringify(status.answer_key, null, 2))));
    document.body.dataset.built = "true";
  }

  document.getElementById("validate").addEventListener("click", validate);
  document.getElementById("build").addEventListener("click", build);
  document.getElementById("from-running").addEventListener("click", () => fillForm(catalog.running));
  document.getElementById("new-seed").addEventListener("click", () => {
    const seed = Math.floor(Math.random() * 1e6);
    form.elements.seed.value = seed;
    form.elements.out_name.value = form.elements.out_name.value.replace(/-seed\d+$/, "") + `-seed${seed}`;
  });
  api("/api/catalog").then((c) => { catalog = c; fillForm(c.running); }).catch((e) => showError(document.getElementById("faults"), e.message));
  listBuilds();
})();
