"""The walk-through review of one session, as plain data: the timeline with idle stretches
compressed, per planted fault how strongly and when its evidence was reached (shown, queried,
cited: `strengths`) and whether the diagnosis names it, the decoys the candidate looked at, the
dead ends, the diagnosis versions with their changes and the claims of the final one traced to
the events that showed them (`claims`), the rubric and the walk-through probes (`probes`).

Pure functions over what the gateway recorded; the pages and the exports draw the result.
"""

from __future__ import annotations

import datetime as dt
import difflib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sandbox.review import actions, claims, probes, rubric, strengths
from sandbox.review.cited import SeenIndex
from sandbox.review.export import clock
from sandbox.review.fills import FillReference
from sandbox.review.signals import signals
from sandbox.review.thresholds import ThresholdReference
from sandbox.review.times import naive_utc
from sandbox.review.versions import FirstServed

IDLE_GAP_S = 180  # a pause longer than this is shown compressed
DEAD_END_EVENTS = 6  # this many reads in a row that touch no evidence make a dead end
EXPLORING = {"sql", "panel", "log_search", "service", "changelog", "report"}
DIAGNOSIS_FIELDS = ("root_cause", "evidence", "fix", "ship_first", "next_experiment")
GENERIC_PROBES = (
    "What is the next experiment you would run, and what result would change your mind?",
    "What would you ship first, and how would you know it worked?",
    "What would you monitor so this cannot happen silently again?",
)


def build(
    session: dict[str, Any],
    history: list[dict[str, Any]],
    diagnoses: list[dict[str, Any]],
    answer_key: dict[str, Any],
    scores: dict[str, dict[str, Any]],
    world: dict[str, Any],
    schema: Mapping[str, Sequence[str]] | None = None,
    fills: Callable[[], FillReference | None] | None = None,
    thresholds: Callable[[], ThresholdReference | None] | None = None,
    versions: Callable[[], FirstServed | None] | None = None,
) -> dict[str, Any]:
    """`session`: id, candidate, state, created_at, started_at (ISO, may be None); `history`:
    the recorded events oldest first; `diagnoses`: version, ts, fields, submitted; `world`: the
    manifest of the world the session ran on (which variant: name, seed, scale, content hash);
    `schema`: the world's candidate tables (`schema.table`) and their column names, for the
    claims (with the tables and columns the events read, whether given or not); `fills` and
    `thresholds`: what a new fill value or threshold is judged against, `versions` when each model
    version first served, what a pin or a move of champion is (each reads the world's when
    needed)."""
    start = _start(session, history)
    timeline = _timeline(history, start)
    final = diagnoses[-1]["fields"] if diagnoses else dict.fromkeys(DIAGNOSIS_FIELDS, "")
    seen = SeenIndex()
    faults = [_fault(key, timeline, final, seen) for key in answer_key.get("faults", [])]
    decoys = [_decoy(decoy, timeline, seen) for decoy in answer_key.get("decoys", [])]
    found_claims = claims.claims(final, timeline, claims.with_history(schema or {}, history), seen)
    acted = actions.review(timeline, answer_key, fills, thresholds, versions)
    verdicts = {a["seq"]: a["verdict"] for a in acted["list"]}
    for item in timeline:
        if item.get("seq") in verdicts:
            item["verdict"] = verdicts[item["seq"]]
    closing = [
        ("answer_key", p) for key in answer_key.get("faults", []) for p in key.get("probes", [])
    ] + [("generic", p) for p in GENERIC_PROBES]
    walk_through = probes.walk_through(timeline, faults, decoys, found_claims, closing, clock)
    return {
        "session": session,
        "world": {
            **{k: world.get(k) for k in ("name", "seed", "scale", "content_hash")},
            # Worlds built before difficulty tiers showed every trail, as guided does.
            "difficulty": world.get("difficulty", "guided"),
        },
        # What each event showed backs the strengths and claims above; the review itself (which
        # the review page polls) leaves those values out: they run to thousands per query.
        "timeline": [{k: v for k, v in item.items() if k != "seen"} for item in timeline],
        "faults": faults,
        "decoys": decoys,
        "dead_ends": _dead_ends(timeline),
        "signals": signals(timeline),
        "actions": acted["list"],
        "action_summary": {k: v for k, v in acted.items() if k != "list"},
        # The symptom's recovery after the actions (`recovery`): the gateway charts it from the
        # live telemetry; a review read without a running stack has none.
        "actions_recovery": [],
        "diagnosis": {"final": final, "versions": _versions(diagnoses, start)},
        "claims": found_claims,
        "counts": _counts(timeline),
        "rubric": {
            "dimensions": rubric.as_json(),
            "levels": {str(k): v for k, v in rubric.LEVELS.items()},
            "scores": scores,
            "summary": rubric.summary(scores),
        },
        "probes": walk_through,
    }


def _start(session: dict[str, Any], history: list[dict[str, Any]]) -> dt.datetime | None:
    if session.get("started_at"):
        return naive_utc(session["started_at"])
    return naive_utc(history[0]["ts"]) if history else None


def _timeline(history: list[dict[str, Any]], start: dt.datetime | None) -> list[dict[str, Any]]:
    items = []
    previous: dt.datetime | None = None
    for event in history:
        ts = naive_utc(event["ts"])
        gap = (ts - previous).total_seconds() if previous else 0.0
        items.append(
            {
                **event,
                "offset_s": round((ts - start).total_seconds(), 1) if start else 0.0,
                "idle_before_s": round(gap) if gap > IDLE_GAP_S else 0,
                "summary": summarize(event),
            }
        )
        previous = ts
    return items


def summarize(event: dict[str, Any]) -> str:
    """One line a person reads in the timeline."""
    d = event["detail"]
    kind = event["kind"]
    if kind == "page":
        return f"opened {d.get('dashboard') or d.get('page')}"
    if kind == "panel":
        span = f"{str(d.get('start', ''))[:16]} → {str(d.get('end', ''))[:16]}"
        return f"panel {d.get('dashboard')}/{d.get('panel')} · {span}"
    if kind == "sql":
        first = " ".join(str(d.get("sql", "")).split())[:160]
        outcome = f"error: {d['error']}" if d.get("error") else f"{d.get('rows', 0)} rows"
        return f"{first} · {outcome}"
    if kind == "log_search":
        filters = ", ".join(f"{k}={d[k]}" for k in ("service", "level", "q") if d.get(k))
        return f"log search {filters or '(all)'} · {d.get('rows', 0)} lines"
    if kind == "service":
        return f"{d.get('method')} {d.get('service')}/{d.get('path')} → {d.get('status')}"
    if kind == "diagnosis":
        return (
            f"diagnosis {'submitted' if d.get('submitted') else 'saved'} (version {d['version']})"
        )
    if kind == "report":
        return f"opened the {d.get('report')} report of {d.get('day')}"
    if kind == "changelog":
        return "read the changelog"
    if kind == "paste":
        return f"pasted {d.get('chars', 0)} characters into {d.get('field', 'the diagnosis')}"
    if kind == "refused":
        return f"refused: {d.get('method', 'GET')} {d.get('path')} ({d.get('refused')})"
    if kind == "action":
        params = ", ".join(f"{k}={v}" for k, v in (d.get("params") or {}).items())
        return f"action {d.get('action')} ({params or 'no parameters'}) · {d.get('status')}"
    if kind == "away":
        seconds = d.get("seconds", 0)
        shown = round(seconds) if isinstance(seconds, int | float) else seconds
        return f"left the workspace tab for {shown} s"
    return kind


def _fault(
    key: dict[str, Any], timeline: list[dict[str, Any]], final: dict[str, str], seen: SeenIndex
) -> dict[str, Any]:
    """The fault's evidence, each with its strength and the first event per strength
    (`first_seq` and `first_offset_s` are the first event that showed it)."""
    written = [final.get(field, "") for field in DIAGNOSIS_FIELDS]
    evidence = []
    for e in key["evidence"]:
        reached = strengths.of_evidence(e, timeline, written, tagged=True, seen=seen)
        shown = reached["strengths"]["shown"]
        evidence.append(
            {
                **e,
                **reached,
                "first_seq": shown["seq"] if shown else None,
                "first_offset_s": shown["offset_s"] if shown else None,
            }
        )
    offsets = [e["first_offset_s"] for e in evidence if e["first_offset_s"] is not None]
    time_to_first: dict[str, float | None] = {}
    reached_count: dict[str, int] = {}
    for strength in strengths.STRENGTHS:
        at = [e["strengths"][strength]["offset_s"] for e in evidence if e["strengths"][strength]]
        time_to_first[strength] = min(at) if at else None
        reached_count[strength] = len(at)
    mentions = diagnosis_mentions(key, final)
    return {
        "fault_id": key["fault_id"],
        "title": key["title"],
        "difficulty": key.get("difficulty", "guided"),
        "root_cause": key["root_cause"],
        "propagation": key.get("propagation", []),
        "acceptable_fixes": key.get("acceptable_fixes", []),
        "evidence": evidence,
        "evidence_found": sum(e["first_seq"] is not None for e in evidence),
        "time_to_first_evidence_s": min(offsets) if offsets else None,
        "time_to_first_s": time_to_first,
        "evidence_reached": reached_count,
        "diagnosis_mentions": mentions,
        "named_in_diagnosis": "yes" if len(mentions) >= 2 else "partly" if mentions else "no",
    }


def diagnosis_mentions(key: dict[str, Any], fields: dict[str, str]) -> list[str]:
    """The fault's own vocabulary (the columns, metrics and changes its evidence points at) that
    the diagnosis uses: a hint for the interviewer, who judges the diagnosis."""
    text = strengths.normal(" ".join(fields.get(f, "") for f in ("root_cause", "evidence", "fix")))
    found = []
    for term in _terms(key):
        if strengths.normal(term) in text and term not in found:
            found.append(term)
    return found


def _terms(key: dict[str, Any]) -> list[str]:
    terms = [strengths.term(e) for e in key["evidence"]]
    return [t for t in terms if t is not None and len(t) >= 4]


def _decoy(decoy: Any, timeline: list[dict[str, Any]], seen: SeenIndex) -> Any:
    """A decoy of the answer key with the events that showed or queried its evidence."""
    if not isinstance(decoy, dict):
        return decoy
    trail = probes.decoy_trail(decoy, timeline, seen)
    return {
        **decoy,
        "looked_at": [i["seq"] for i in trail],
        "first_offset_s": trail[0]["offset_s"] if trail else None,
    }


def _dead_ends(timeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Long runs of reads that touched no evidence, ended by evidence or the session's end.
    Page views do not end a run (they are navigation); a diagnosis save does not either."""
    found = []
    run: list[dict[str, Any]] = []

    def close() -> None:
        if len(run) >= DEAD_END_EVENTS:
            found.append(
                {
                    "from_seq": run[0]["seq"],
                    "to_seq": run[-1]["seq"],
                    "from_offset_s": run[0]["offset_s"],
                    "seconds": round(run[-1]["offset_s"] - run[0]["offset_s"]),
                    "events": len(run),
                    "tables": sorted({t for i in run for t in i["detail"].get("tables", [])}),
                }
            )
        run.clear()

    for item in timeline:
        if item["evidence"]:
            close()
        elif item["kind"] in EXPLORING and not _same_dashboard_load(run, item):
            run.append(item)
    close()
    return found


def _same_dashboard_load(run: list[dict[str, Any]], item: dict[str, Any]) -> bool:
    """A dashboard draws all its panels at once: one look, however many panels."""
    if item["kind"] != "panel" or not run or run[-1]["kind"] != "panel":
        return False
    key = ("dashboard", "start", "end")
    return all(run[-1]["detail"].get(k) == item["detail"].get(k) for k in key)


def _versions(diagnoses: list[dict[str, Any]], start: dt.datetime | None) -> list[dict[str, Any]]:
    out = []
    previous = dict.fromkeys(DIAGNOSIS_FIELDS, "")
    for d in diagnoses:
        changes = {}
        for field in DIAGNOSIS_FIELDS:
            before, after = previous.get(field, ""), d["fields"].get(field, "")
            if before != after:
                changes[field] = [
                    line
                    for line in difflib.unified_diff(
                        before.splitlines(), after.splitlines(), lineterm="", n=1
                    )
                    if not line.startswith(("---", "+++", "@@"))
                ]
        ts = naive_utc(d["ts"])
        out.append(
            {
                "version": d["version"],
                "ts": d["ts"],
                "offset_s": round((ts - start).total_seconds(), 1) if start else 0.0,
                "submitted": d["submitted"],
                "changes": changes,
            }
        )
        previous = d["fields"]
    return out


def _counts(timeline: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in timeline:
        counts[item["kind"]] = counts.get(item["kind"], 0) + 1
    return counts
