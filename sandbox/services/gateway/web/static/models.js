// The model registry, read through the MLflow REST API behind the gateway: models, versions and
// aliases, and for a version its training run (params, holdout metrics, feature importances).
"use strict";

(() => {
  const { api, el, fill, table, showError } = sandbox;
  const MLFLOW = "/services/mlflow/ajax-api/2.0/mlflow";
  const list = document.getElementById("model-list");
  const detail = document.getElementById("model-detail");
  const versionDetail = document.getElementById("version-detail");

  function when(ms) { return ms ? new Date(Number(ms)).toISOString().replace("T", " ").slice(0, 16) : ""; }
  function tagMap(tags) { return Object.fromEntries((tags || []).map((t) => [t.key, t.value])); }

  async function loadModels() {
    try {
      const reply = await api(`${MLFLOW}/registered-models/search?max_results=100`);
      const models = reply.registered_models || [];
      list.replaceChildren(...models.map((m) => el("a", { href: `#${encodeURIComponent(m.name)}`, "data-model": m.name }, m.name)));
      const wanted = decodeURIComponent(location.hash.slice(1).split("/")[0]) || (models[0] && models[0].name);
      if (wanted) showModel(wanted);
    } catch (e) { showError(list, e.message); }
  }

  async function showModel(name) {
    for (const a of list.querySelectorAll("a")) a.classList.toggle("active", a.dataset.model === name);
    versionDetail.replaceChildren();
    try {
      const [model, versions] = await Promise.all([
        api(`${MLFLOW}/registered-models/get?name=${encodeURIComponent(name)}`),
        api(`${MLFLOW}/model-versions/search?filter=${encodeURIComponent(`name='${name.replace(/'/g, "''")}'`)}&max_results=200`),
      ]);
      const aliases = {};
      for (const a of model.registered_model.aliases || []) (aliases[a.version] ||= []).push(a.alias);
      const rows = (versions.model_versions || []).sort((a, b) => Number(b.version) - Number(a.version)).map((v) => {
        const tags = tagMap(v.tags);
        return [v.version, (aliases[v.version] || []).join(", "), Object.entries(tags).map(([k, t]) => `${k}=${t}`).join(", "), v.status, v.run_id];
      });
      const grid = table(["version", "aliases", "tags", "status", "run"], rows);
      grid.querySelectorAll("tbody tr").forEach((tr, i) => {
        const version = rows[i][0];
        tr.classList.add("clickable");
        tr.addEventListener("click", () => { location.hash = `${encodeURIComponent(name)}/${version}`; showVersion(name, version); });
      });
      fill(detail,
        el("h1", {}, name),
        model.registered_model.description ? el("p", {}, model.registered_model.description) : null,
        el("p", { class: "muted small" }, "Click a version to see its training run."),
        el("div", { class: "table-wrap" }, grid));
      const wantedVersion = location.hash.slice(1).split("/")[1];
      if (wantedVersion) showVersion(name, wantedVersion);
    } catch (e) { showError(detail, e.message); }
  }

  async function showVersion(name, version) {
    versionDetail.replaceChildren(el("div", { class: "card" }, el("div", { class: "loading" }, "Loading…")));
    try {
      const { model_version: v } = await api(`${MLFLOW}/model-versions/get?name=${encodeURIComponent(name)}&version=${encodeURIComponent(version)}`);
      const { run } = await api(`${MLFLOW}/runs/get?run_id=${encodeURIComponent(v.run_id)}`);
      const params = (run.data.params || []).map((p) => [p.key, p.value]).sort();
      const metrics = (run.data.metrics || []).filter((m) => !m.key.startsWith("importance_")).map((m) => [m.key, m.value]).sort();
      const importances = (run.data.metrics || []).filter((m) => m.key.startsWith("importance_"))
        .map((m) => [m.key.slice("importance_".length), m.value]).sort((a, b) => a[1] - b[1]);
      const tags = Object.entries(tagMap(run.data.tags)).filter(([k]) => !k.startsWith("mlflow.")).sort();
      const chart = el("div", { class: "plot", id: "importances" });
      versionDetail.replaceChildren(el("div", { class: "card version", "data-version": version },
        el("h2", {}, `${name} · version ${version}`),
        el("p", { class: "muted small" }, `run ${v.run_id} · ${run.info.run_name || ""} · source ${v.source}`),
        el("div", { class: "grid-2" },
          el("div", {}, el("h3", {}, "Holdout metrics"), table(["metric", "value"], metrics),
            el("h3", {}, "Parameters"), table(["param", "value"], params)),
          el("div", {}, el("h3", {}, "Feature importances"), importances.length ? chart : el("p", { class: "muted" }, "None logged."),
            el("h3", {}, "Tags"), table(["tag", "value"], tags)))));
      if (importances.length) {
        Plotly.react(chart, [{ type: "bar", orientation: "h", x: importances.map((r) => r[1]), y: importances.map((r) => r[0]), marker: { color: "#2563eb" }, hovertemplate: "%{y}: %{x:.4f}<extra></extra>" }],
          { margin: { l: 170, r: 10, t: 4, b: 30 }, height: 26 * importances.length + 50, paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)", font: { size: 11 } },
          { displaylogo: false, responsive: true });
      }
    } catch (e) { showError(versionDetail, e.message); }
  }

  window.addEventListener("hashchange", () => {
    const [name, version] = location.hash.slice(1).split("/").map(decodeURIComponent);
    if (name && !version) showModel(name);
  });
  loadModels();
})();
