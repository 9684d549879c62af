// The diagnosis editor: autosaves a new version a moment after typing stops (PUT /api/diagnosis),
// and submits once (POST /api/diagnosis/submit), after which it is read-only.
"use strict";

(() => {
  const { api } = sandbox;
  const form = document.getElementById("diagnosis-form");
  const state = document.getElementById("save-state");
  const submitButton = document.getElementById("submit");
  const AUTOSAVE_MS = 1500;
  let timer = null;
  let saving = Promise.resolve();
  let dirty = false;

  function fields() {
    return Object.fromEntries([...form.elements].filter((e) => e.name).map((e) => [e.name, e.value]));
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
    saving = saving.then(() => api("/api/diagnosis", { method: "PUT", json: fields() }))
      .then(show)
      .catch((e) => { dirty = true; state.textContent = `Not saved: ${e.message}`; });
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
    try { show(await api("/api/diagnosis/submit", { json: fields() })); }
    catch (e) { state.textContent = `Not submitted: ${e.message}`; }
  });

  api("/api/diagnosis").then((saved) => {
    for (const [name, value] of Object.entries(saved.fields)) if (form.elements[name]) form.elements[name].value = value;
    show(saved);
  }).catch((e) => { state.textContent = e.status === 403 ? "Only the candidate writes the diagnosis." : e.message; });
})();
