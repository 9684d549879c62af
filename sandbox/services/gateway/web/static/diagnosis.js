// The diagnosis editor: autosaves a new version a moment after typing stops (PUT /api/diagnosis),
// and submits once (POST /api/diagnosis/submit), after which it is read-only. Each save carries how
// each changed field's text reached it since the previous save (`sandbox.composition`).
"use strict";

(() => {
  const { api, composition } = sandbox;
  const form = document.getElementById("diagnosis-form");
  const state = document.getElementById("save-state");
  const submitButton = document.getElementById("submit");
  const AUTOSAVE_MS = 1500;
  let timer = null;
  let saving = Promise.resolve();
  let dirty = false;

  const editors = [...form.elements].filter((e) => e.name);
  const typing = Object.fromEntries(editors.map((e) => [e.name, composition(e)]));

  function fields() {
    return Object.fromEntries(editors.map((e) => [e.name, e.value]));
  }

  // The fields and, for each one written in since the previous save, how.
  function body() {
    const composed = Object.fromEntries(Object.entries(typing).filter(([, t]) => t.active()).map(([name, t]) => [name, t.take()]));
    return { ...fields(), composition: composed };
  }

  function giveBack(sent) {
    for (const [name, taken] of Object.entries(sent.composition)) typing[name].giveBack(taken);
  }

  function show(saved) {
    if (saved.submitted) {
      state.textContent = `Submitted (version ${saved.version}).`;
      for (const e of form.elements) e.readOnly = true;
      submitButton.disabled = true;
      document.body.dataset.diagnosis = "submitted";
    } else if (saved.version) {
      state.textContent = `Saved · version ${saved.version} · ${new Date(saved.saved_at).toLocaleTimeString()}`;
    }
  }

  function save() {
    clearTimeout(timer);
    if (!dirty) return saving;
    dirty = false;
    state.textContent = "Saving…";
    saving = saving.then(() => {
      const sent = body();
      return api("/api/diagnosis", { method: "PUT", json: sent })
        .then(show)
        .catch((e) => { giveBack(sent); dirty = true; state.textContent = `Not saved: ${e.message}`; });
    });
    return saving;
  }

  form.addEventListener("input", () => {
    dirty = true;
    state.textContent = "Editing…";
    clearTimeout(timer);
    timer = setTimeout(save, AUTOSAVE_MS);
  });
  form.addEventListener("focusout", save);
  form.addEventListener("paste", (e) => {
    // No more than a field holds: the gateway refuses larger counts as forged.
    const chars = Math.min((e.clipboardData && e.clipboardData.getData("text") || "").length, 20000);
    if (chars) api("/api/events", { json: { kind: "paste", field: e.target.name, chars } }).catch(() => {});
  });
  window.addEventListener("beforeunload", (e) => { if (dirty) { save(); e.preventDefault(); } });

  submitButton.addEventListener("click", async () => {
    if (!confirm("Submit your diagnosis? You cannot change it afterwards.")) return;
    await save();
    const sent = body();
    try { show(await api("/api/diagnosis/submit", { json: sent })); }
    catch (e) { giveBack(sent); state.textContent = `Not submitted: ${e.message}`; }
  });

  api("/api/diagnosis").then((saved) => {
    for (const [name, value] of Object.entries(saved.fields)) if (form.elements[name]) form.elements[name].value = value;
    for (const t of Object.values(typing)) t.take();  // the saved text is what counting starts from
    show(saved);
    document.body.dataset.diagnosisLoaded = "true";
  }).catch((e) => { state.textContent = e.status === 403 ? "Only the candidate writes the diagnosis." : e.message; });
})();
