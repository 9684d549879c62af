// The model-server playground: POST /services/model/predict through the gateway (recorded).
"use strict";

(() => {
  const { api, el, table, showError, formatValue } = sandbox;
  const form = document.getElementById("predict-form");
  const output = document.getElementById("predict-result");
  const status = document.getElementById("predict-status");
  let features = [];

  function mode() { return form.elements.mode.value; }
  function syncMode() {
    for (const node of document.querySelectorAll(".mode-customer")) node.hidden = mode() !== "customer";
    document.querySelector(".mode-payload").hidden = mode() !== "payload";
  }

  // A few ids the online store holds, one click to put in the request.
  async function loadExamples() {
    const box = document.getElementById("customer-examples");
    const input = document.getElementById("customer-id");
    try {
      const ids = await api("/api/customers/examples");
      box.append(...ids.map((id) => el("button", {
        type: "button", class: "chip", "data-customer": String(id),
        onclick: () => { input.value = String(id); input.focus(); },
      }, String(id))));
      // Not while the field has focus: someone (or a script) typing in it keeps what they typed.
      const untouched = input.value === "1" && document.activeElement !== input;
      if (ids.length && untouched && !ids.includes(1)) input.value = String(ids[0]);
    } catch (e) { box.hidden = true; }
  }

  async function loadMetadata() {
    const box = document.getElementById("model-meta");
    try {
      const meta = await api("/services/model/metadata");
      features = meta.features || [];
      const rows = Object.entries(meta).filter(([k]) => k !== "features").map(([k, v]) => [k, formatValue(v)]);
      rows.push(["features", features.join(", ")]);
      box.replaceChildren(table(["field", "value"], rows));
      const payload = document.getElementById("payload");
      if (!payload.value) payload.value = JSON.stringify({ features: Object.fromEntries(features.map((f) => [f, 0])) }, null, 2);
    } catch (e) { showError(box, e.message); }
  }

  form.addEventListener("change", syncMode);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    let body;
    if (mode() === "customer") body = { customer_id: Number(document.getElementById("customer-id").value) };
    else {
      try { body = JSON.parse(document.getElementById("payload").value); }
      catch (err) { status.textContent = ""; output.hidden = false; output.className = "response bad"; output.textContent = `Not valid JSON: ${err.message}`; return; }
    }
    status.textContent = "Sending…";
    const started = performance.now();
    try {
      const reply = await api("/services/model/predict", { json: body });
      output.className = "response";
      output.textContent = JSON.stringify(reply, null, 2);
      status.textContent = `200 · ${Math.round(performance.now() - started)} ms`;
    } catch (err) {
      output.className = "response bad";
      output.textContent = `${err.status || ""} ${err.message}`;
      status.textContent = `${err.status || "error"} · ${Math.round(performance.now() - started)} ms`;
    }
    output.hidden = false;
  });
  syncMode();
  loadMetadata();
  loadExamples();
})();
