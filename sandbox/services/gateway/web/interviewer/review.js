// The walk-through review: the candidate's timeline with evidence marks (refreshed while the
// session runs), per-fault findings by strength (shown, queried, cited), the diagnosis next to
// the answer key with its claims traced to events, the rubric, probes from the trail.
"use strict";

(() => {
  const { api, el, fill, showError } = sandbox;
  const root = document.querySelector(".review");
  const sessionId = root.dataset.session;
  const hiddenKinds = new Set();
  const REFRESH_MS = 4000;
  let lastSeq = -1;
  let rubricDrawn = false;
  let latest = null; // the newest review: the kind filters redraw from it

  function clock(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const t = Math.max(0, Math.round(seconds));
    const h = Math.floor(t / 3600), m = Math.floor(t / 60) % 60, s = t % 60;
    return (h ? `${h}:${String(m).padStart(2, "0")}` : `${m}`) + `:${String(s).padStart(2, "0")}`;
  }

  const STRENGTHS = ["shown", "queried", "cited"];
  const EVENT_LABELS = { sql: "query", log_search: "log search", customer_examples: "customer list" };
  const PROBE_LABELS = { decisive_query: "query", ruled_out: "ruled out", unbacked_claim: "unbacked claim", answer_key: "answer key", generic: "closing" };

  function eventLink(seq) {
    return el("a", { href: `#event-${seq}` }, `#${seq}`);
  }

  function eventLinks(seqs) {
    return seqs.flatMap((seq, n) => [n ? ", " : "", eventLink(seq)]);
  }

  function reachedAt(hit) {
    return hit ? [clock(hit.offset_s), " (", eventLink(hit.seq), ")"] : ["—"];
  }

  function drawFaults(r) {
    fill(document.getElementById("faults"), r.faults.map((f) => el("div", { class: "fault", "data-fault": f.fault_id },
      el("h3", {}, f.title, el("span", { class: "muted small" }, ` · ${f.difficulty}`)),
      el("p", { class: "small" },
        el("b", {}, `${f.evidence_found} / ${f.evidence.length}`), " evidence touched",
        ...STRENGTHS.flatMap((s) => [` · first ${s} `, el("b", { "data-first": s }, clock(f.time_to_first_s[s])), ` (${f.evidence_reached[s]})`]),
        " · named in the diagnosis: ", el("b", { class: f.named_in_diagnosis === "yes" ? "good" : f.named_in_diagnosis === "no" ? "bad" : "" }, f.named_in_diagnosis),
        f.diagnosis_mentions.length ? ` (${f.diagnosis_mentions.join(", ")})` : ""),
      el("ul", { class: "evidence-list small" }, f.evidence.map((e) => el("li", { "data-evidence": e.id, "data-strength": e.strength || "" },
        e.strength ? el("span", { class: "good" }, `✔ ${e.strength} `) : el("span", { class: "bad" }, "✘ "),
        el("code", {}, e.ref), ` — ${e.description}`,
        e.strength ? el("div", { class: "muted" },
          "shown ", ...reachedAt(e.strengths.shown), " · queried ", ...reachedAt(e.strengths.queried), " · cited ",
          ...(e.strengths.cited ? [`“${e.strengths.cited.value}”, seen `, ...reachedAt(e.strengths.cited)] : ["—"])) : null))))));
    const decoys = r.decoys.filter((d) => d && d.looked_at);
    fill(document.getElementById("decoys"), decoys.length ? [el("h3", {}, "Decoys"), el("ul", { class: "small" }, decoys.map((d) =>
      el("li", { "data-decoy": d.decoy_id }, el("b", {}, d.title), " — ",
        d.looked_at.length ? [`looked at from ${clock(d.first_offset_s)}: `, ...eventLinks(d.looked_at)] : "not looked at")))] : []);
    const signals = document.getElementById("signals");
    fill(signals, r.signals.length ? [el("h3", {}, "Signals"), el("ul", { class: "small" }, r.signals.map((s) =>
      el("li", { "data-signal": s.kind }, el("b", {}, s.kind), ` — ${s.summary} · events `,
        ...s.events.flatMap((seq, n) => [n ? ", " : "", el("a", { href: `#event-${seq}` }, `#${seq}`)]))))] : []);
    const dead = document.getElementById("dead-ends");
    fill(dead, r.dead_ends.length ? [el("h3", {}, "Dead ends"), el("ul", { class: "small" }, r.dead_ends.map((d) =>
      el("li", {}, `from ${clock(d.from_offset_s)}: ${clock(d.seconds)} over ${d.events} reads of ${d.tables.join(", ") || "pages and services"}, no evidence`)))] : []);
  }

  const VERDICT_CLASS = { fixes: "good", mitigates: "good", harmful: "bad" };

  function drawActions(r) {
    const box = document.getElementById("actions");
    if (!r.session.actions) {
      fill(box, el("p", { class: "muted small" }, "Actions are off for this session: the candidate's ops console only lists them."));
      return;
    }
    const first = r.action_summary.time_to_first_mitigation_s;
    fill(box,
      el("p", { class: "small" }, `${r.action_summary.applied} applied · first that mitigates or fixes: `, el("b", { id: "first-mitigation" }, first === null ? "none" : clock(first))),
      r.actions.length ? el("table", { class: "grid small", id: "actions-table" }, el("tbody", {}, r.actions.map((a) => el("tr", { "data-action": a.id },
        el("td", {}, eventLink(a.seq), ` ${clock(a.offset_s)}`), el("td", {}, a.id),
        el("td", {}, Object.entries(a.params).map(([k, v]) => `${k}=${v}`).join(", ")),
        el("td", {}, a.status, a.effective_at ? ` · from ${sandbox.simTime(a.effective_at)}` : ""),
        el("td", {}, a.verdict ? el("b", { class: `verdict ${VERDICT_CLASS[a.verdict] || ""}`, "data-verdict": a.verdict }, a.verdict) : "—",
          a.verdict_note ? el("div", { class: "muted verdict-note" }, a.verdict_note) : null))))) : el("p", { class: "muted small" }, "No action yet."));
  }

  // The fault's symptom from before the first action to now, drawn like a dashboard panel: the
  // level before the fault dashed, each action's effective time a vertical line.
  let recoveryDrawn = "";

  function drawRecovery(r) {
    const box = document.getElementById("recovery");
    const charts = r.actions_recovery || [];
    const signature = JSON.stringify(charts);
    if (signature === recoveryDrawn) return;
    recoveryDrawn = signature;
    if (!charts.length) { fill(box); return; }
    const at = (iso) => iso.slice(0, 19);
    const plots = [];
    fill(box, charts.map((c) => el("div", { class: "recovery", "data-recovery": c.fault_id },
      el("h3", {}, `Recovery · ${c.title}`),
      el("p", { class: "muted small" }, `${c.rows} ${c.rows_label} from ${sandbox.simTime(c.start)} to ${sandbox.simTime(c.end)} (${c.own_rows} of them the candidate's own), per ${Math.round(c.bucket_s / 60)} min`,
        c.baseline ? ` · dashed: the week before the fault began (${c.baseline.rows} ${c.rows_label})` : "", c.error ? ` · ${c.error}` : ""),
      c.series.map((s) => {
        const plot = el("div", { class: "plot", "data-series": s.id });
        const summary = el("p", { class: "small", "data-levels": s.id },
          `${s.title}: before the fault `, el("b", {}, s.baseline ?? "—"), " · before the first action took effect ", el("b", { "data-level": "before" }, s.before ?? "—"),
          " · after the last one did ", el("b", { "data-level": "after" }, s.after ?? "—"),
          s.recovered_text ? el("span", { "data-recovered": s.recovered }, ` · ${s.recovered_text}`) : "");
        const x = s.points.map((p) => at(p.t));
        const traces = [{ type: "scatter", mode: "lines+markers", name: s.title, x, y: s.points.map((p) => p.value), customdata: s.points.map((p) => p.rows),
          hovertemplate: `%{y:.4~g}${s.unit ? " " + s.unit : ""} · %{customdata} ${s.rows_label}<extra></extra>`, line: { color: "#2563eb", width: 1.6 }, marker: { color: "#2563eb", size: 4 } }];
        if (s.baseline !== null) traces.push({ type: "scatter", mode: "lines", name: "before the fault", x: [at(c.start), at(c.end)], y: [s.baseline, s.baseline], line: { color: "#059669", dash: "dash", width: 1.2 }, hoverinfo: "skip" });
        const shapes = c.marks.map((m) => ({ type: "line", xref: "x", yref: "paper", x0: at(m.effective_at), x1: at(m.effective_at), y0: 0, y1: 1, line: { color: VERDICT_CLASS[m.verdict] === "bad" ? "#e11d48" : "#475569", width: 1, dash: "dot" } }));
        const annotations = c.marks.map((m) => ({ xref: "x", yref: "paper", x: at(m.effective_at), y: 1, yanchor: "bottom", showarrow: false, text: `#${m.seq} ${m.action}`, font: { size: 10, color: "#475569" } }));
        const layout = {
          margin: { l: 48, r: 12, t: 22, b: 32 }, height: 220, showlegend: true, legend: { orientation: "h", y: -0.25, font: { size: 11 } },
          xaxis: { type: "date", gridcolor: "#eef0f3", range: [at(c.start), at(c.end)] }, yaxis: { gridcolor: "#eef0f3", title: { text: s.unit, font: { size: 11 } } },
          paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)", font: { family: "system-ui, sans-serif", size: 11 }, shapes, annotations,
        };
        plots.push([plot, traces, layout]);
        return el("div", {}, summary, plot);
      }))));
    // Plotted once in the page, so that it takes the card's width.
    for (const [plot, traces, layout] of plots) Plotly.react(plot, traces, layout, { displaylogo: false, responsive: true });
  }

  async function forward(hours) {
    const line = document.getElementById("forward-line");
    try {
      const reply = await api(`/api/sessions/${sessionId}/clock/forward`, { method: "POST", json: { hours } });
      line.textContent = `simulated time now ${sandbox.simTime(reply.now)}${reply.at_end ? " (the end of the world's last day)" : ""}`;
    } catch (e) { showError(line, e.message); }
  }

  document.querySelectorAll("[data-forward]").forEach((b) => b.addEventListener("click", () => forward(Number(b.dataset.forward))));

  function drawTimeline(r) {
    const filters = document.getElementById("kind-filters");
    const labels = Object.entries(r.counts).map(([kind, n]) => `${kind} (${n})`).join();
    if (filters.dataset.labels !== labels) {
      filters.dataset.labels = labels;
      fill(filters, Object.entries(r.counts).map(([kind, n]) => el("label", { class: "check" },
        el("input", { type: "checkbox", checked: !hiddenKinds.has(kind), onchange: (e) => { e.target.checked ? hiddenKinds.delete(kind) : hiddenKinds.add(kind); drawTimeline(latest); } }),
        `${kind} (${n})`)));
    }
    const marks = {};
    for (const s of r.signals) for (const seq of s.events) (marks[seq] = marks[seq] || []).push(s.kind);
    const rows = [];
    for (const i of r.timeline) {
      if (hiddenKinds.has(i.kind)) continue;
      if (i.idle_before_s) rows.push(el("tr", { class: "idle" }, el("td", { colspan: 4 }, `— idle ${clock(i.idle_before_s)} —`)));
      rows.push(el("tr", { id: `event-${i.seq}`, class: i.evidence.length ? "evidence" : "", "data-seq": i.seq, "data-kind": i.kind },
        el("td", { class: "nowrap" }, clock(i.offset_s)), el("td", { class: "kind" }, i.kind),
        el("td", { class: "what", title: [i.detail.sql, i.detail.user_agent && `from ${i.detail.client}: ${i.detail.user_agent}`].filter(Boolean).join("\n") }, i.summary, i.verdict ? [" ", el("b", { class: `verdict ${VERDICT_CLASS[i.verdict] || ""}`, "data-verdict": i.verdict }, i.verdict)] : null),
        el("td", {}, i.evidence.map((e) => el("span", { class: "mark" }, e)),
          (marks[i.seq] || []).map((k) => el("span", { class: "signal", "data-signal": k }, k)))));
    }
    fill(document.querySelector("#timeline tbody"), rows.length ? rows : [el("tr", {}, el("td", { class: "muted" }, "Nothing recorded yet."))]);
  }

  function drawDiagnosis(r) {
    const names = { root_cause: "Root cause", evidence: "Evidence", fix: "Proposed fix", ship_first: "Ship first", next_experiment: "Next experiment" };
    const versions = r.diagnosis.versions;
    const last = versions[versions.length - 1];
    fill(document.getElementById("diagnosis"),
      el("p", { class: "muted small" }, versions.length ? `${versions.length} versions${last.submitted ? `, submitted at ${clock(last.offset_s)}` : ", not submitted"}` : "Nothing written yet."),
      el("div", { class: "grid-2" },
        el("div", {}, el("h3", {}, "Candidate"), Object.entries(r.diagnosis.final).map(([k, v]) => el("p", { class: "small" }, el("b", {}, names[k] || k), el("br"), v || "—"))),
        el("div", {}, el("h3", {}, "Answer key"), r.faults.map((f) => el("div", { class: "small" }, el("p", {}, el("b", {}, f.title), el("br"), f.root_cause),
          el("p", { class: "muted" }, "Fixes: ", f.acceptable_fixes.join(" · ")))))),
      versions.length ? el("details", {}, el("summary", {}, "Versions and changes"), versions.map((v) => el("div", { class: "small" },
        el("p", {}, el("b", {}, `Version ${v.version}`), ` at ${clock(v.offset_s)}${v.submitted ? " (submitted)" : ""}`),
        Object.entries(v.changes).map(([field, lines]) => el("pre", { class: "diff" }, `${names[field] || field}\n${lines.join("\n")}`))))) : null);
  }

  function drawClaims(r) {
    const unbacked = r.claims.filter((c) => !c.backed_by.length);
    const backed = r.claims.filter((c) => c.backed_by.length);
    fill(document.getElementById("claims"),
      r.claims.length ? null : el("p", { class: "muted small" }, "No numbers, dates or schema names in the diagnosis."),
      unbacked.length ? [el("h3", {}, "Not backed by anything the candidate ran"), el("ul", { class: "small", id: "unbacked-claims" }, unbacked.map((c) =>
        el("li", { "data-claim": c.kind }, el("span", { class: "bad" }, `“${c.text}”`), " — nothing the candidate ran showed ", el("code", {}, c.value), el("span", { class: "muted" }, ` (${c.kind})`))))] : null,
      backed.length ? [el("h3", {}, "Backed"), el("ul", { class: "small", id: "backed-claims" }, backed.map((c) => {
        const b = c.backed_by[0];
        return el("li", { "data-claim": c.kind }, el("code", {}, c.value), el("span", { class: "muted" }, ` (${c.kind})`), ` — seen in ${EVENT_LABELS[b.kind] || b.kind} `, eventLink(b.seq), ` at ${clock(b.offset_s)} `,
          el("span", { class: "muted" }, `(${b.summary})${c.backed_count > 1 ? ` and ${c.backed_count - 1} more` : ""}`), `: “${c.text}”`);
      }))] : null);
  }

  function drawProbes(r) {
    fill(document.getElementById("probes"), r.probes.map((p) => el("li", { "data-probe": p.kind },
      el("span", { class: "kind" }, PROBE_LABELS[p.kind] || p.kind), " ", p.text,
      p.events.length ? el("span", { class: "muted" }, " (", ...eventLinks(p.events), ")") : null)));
  }

  function drawRubric(r) {
    const form = document.getElementById("rubric");
    if (!rubricDrawn) {
      fill(form, r.rubric.dimensions.map((d) => {
        const s = r.rubric.scores[d.id] || {};
        return el("div", { class: "dimension", "data-dimension": d.id },
          el("label", {}, el("b", {}, d.title + (d.must_have ? " (must-have)" : "")),
            el("select", { name: d.id }, el("option", { value: "" }, "not scored"),
              Object.entries(d.anchors).map(([level, text]) => { const o = el("option", { value: level, title: text }, `${level} · ${r.rubric.levels[level]} — ${text}`); if (String(s.level) === level) o.selected = true; return o; }))),
          el("textarea", { name: `${d.id}-note`, rows: 2, placeholder: "Notes" }, s.note || ""));
      }));
      form.addEventListener("change", (e) => save(e.target.closest(".dimension")));
      rubricDrawn = true;
    }
    drawSummary(r.rubric.summary);
  }

  function drawSummary(summary) {
    document.getElementById("rubric-summary").textContent = summary.level
      ? `Summary: ${summary.level} · ${summary.label} (limited by ${summary.limited_by.join(", ")})`
      : `Summary: not scored yet (${summary.missing.length} must-have dimension${summary.missing.length === 1 ? "" : "s"} left)`;
  }

  async function save(box) {
    const dimension = box.dataset.dimension;
    const level = box.querySelector("select").value;
    const note = box.querySelector("textarea").value;
    try {
      const reply = await api(`/api/sessions/${sessionId}/rubric`, { method: "PUT", json: { dimension, level: level ? Number(level) : null, note } });
      drawSummary(reply.summary);
      box.dataset.saved = "true";
    } catch (e) { showError(document.getElementById("rubric-summary"), e.message); }
  }

  async function load() {
    try {
      const r = await api(`/api/sessions/${sessionId}/review`);
      latest = r;
      const s = r.session;
      document.getElementById("session-line").textContent = `world ${r.world.name} seed ${r.world.seed} · ${s.state} · started ${s.started_at ? sandbox.simTime(s.started_at) : "—"}${s.time_limit_min ? ` · limit ${s.time_limit_min} min` : ""} · ${r.timeline.length} events`;
      const policy = s.policy || {};
      document.getElementById("policy-line").textContent = `Policy stated to the candidate: outside help ${(policy.assistance || "allowed").replace("-", " ")} · ${policy.workspace_only ? "only the workspace's pages answered" : "scripts and other clients answered too"}`;
      const seq = r.timeline.length ? r.timeline[r.timeline.length - 1].seq : 0;
      if (seq !== lastSeq) {
        lastSeq = seq;
        drawFaults(r);
        drawActions(r);
        drawTimeline(r);
        drawDiagnosis(r);
        drawClaims(r);
        drawProbes(r);
      }
      drawRecovery(r);
      drawRubric(r);
      root.dataset.ready = "true";
    } catch (e) { showError(document.getElementById("faults"), e.message); }
  }

  load();
  setInterval(() => { if (!document.hidden) load(); }, REFRESH_MS);
})();
