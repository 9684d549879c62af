"""The recovery after the candidate's actions: each planted fault's symptom, as the live services
served it, from some hours before the first applied action to the simulated now, with every
applied action's effective time marked and the level before the fault began for reference.

A fault declares its symptom in its answer key (`symptoms`, `sandbox.faults.base.Symptom`): one
or more series, each an SQL aggregate over rows of the candidate's tables that the running stack
adds to (what the model server served, the searches the retrieval service answered, the drift
monitor's reports, the exported metrics). A fault that declares none gets no chart.

Pure functions: `plan` says what to chart for a review, `queries` are the SQL for a plan (one
per source its series read), `assemble` turns their rows into what the review shows
(`actions_recovery`). The gateway runs the queries over the live telemetry, as the interviewer,
with the session's own rows included (a session with actions on is its stack's only one, so
these are everything the live services did).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sandbox.faults.base import Symptom
from sandbox.review.times import naive_utc

# How far before the first applied action the chart begins, and the coarsest-but-one point.
LOOKBACK = dt.timedelta(hours=12)
BUCKET_S = 3600
MAX_POINTS = 400
# The reference level: this long before the fault's onset (its evidence's earliest window).
BASELINE = dt.timedelta(days=7)


@dataclass(frozen=True)
class Plan:
    fault_id: str
    title: str
    series: list[Symptom]
    start: dt.datetime
    end: dt.datetime
    bucket_s: int
    baseline: tuple[dt.datetime, dt.datetime] | None
    marks: list[dict[str, Any]]


@dataclass(frozen=True)
class Query:
    """The SQL for the series of a plan that read one source: rows of (t, n, own, *series ids);
    the baseline's is the row whose t is NULL."""

    series: tuple[str, ...]
    sql: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Result:
    """A query's answer, or the error that stopped it."""

    columns: list[str]
    rows: list[list[Any]]
    error: str | None = None


def onset(key: dict[str, Any]) -> dt.datetime | None:
    """When the fault began: the earliest window of its evidence in the data (a changelog entry
    may announce it a day early)."""
    starts = [
        naive_utc(str(e["window_start"]))
        for e in key.get("evidence", [])
        if e.get("window_start") and e.get("kind") != "changelog"
    ]
    return min(starts) if starts else None


def plan(
    actions: Sequence[dict[str, Any]], answer_key: dict[str, Any], now: dt.datetime
) -> list[Plan]:
    """What to chart for the review's `actions` (as `review.actions` lists them) at `now`: one
    plan per planted fault that declares a symptom, none before an action is applied."""
    applied = [a for a in actions if a.get("status") == "applied" and a.get("effective_at")]
    if not applied:
        return []
    first = min(naive_utc(str(a.get("at") or a["effective_at"])) for a in applied)
    start = first - LOOKBACK
    end = max(now, start + dt.timedelta(seconds=BUCKET_S))
    span = (end - start).total_seconds()
    bucket = BUCKET_S * max(1, -(-int(span) // (BUCKET_S * MAX_POINTS)))
    plans = []
    for key in answer_key.get("faults", []):
        declared = [Symptom.model_validate(s) for s in key.get("symptoms", [])]
        if not declared:
            continue
        began = onset(key)
        marks = [
            {
                "seq": a["seq"],
                "action": a["id"],
                "effective_at": a["effective_at"],
                "verdict": next(
                    (v["verdict"] for v in a.get("verdicts", []) if v["id"] == key["fault_id"]),
                    a.get("verdict"),
                ),
            }
            for a in applied
        ]
        plans.append(
            Plan(
                fault_id=str(key["fault_id"]),
                title=str(key.get("title", key["fault_id"])),
                series=declared,
                start=start,
                end=end,
                bucket_s=bucket,
                baseline=(began - BASELINE, began) if began else None,
                marks=marks,
            )
        )
    return plans


def _sources(p: Plan) -> dict[tuple[str, str, str, str | None], list[Symptom]]:
    """The plan's series by what rows they read: one query each."""
    grouped: dict[tuple[str, str, str, str | None], list[Symptom]] = {}
    for s in p.series:
        grouped.setdefault((s.source, s.time, s.where, s.own), []).append(s)
    return grouped


def queries(p: Plan) -> list[Query]:
    """The SQL for the plan's points and baseline, a query per source its series read."""
    made = []
    for (source, time, where, own), series in _sources(p).items():
        at = f"({time})::TIMESTAMP"
        values = ", ".join(f"{s.value} AS {s.id}" for s in series)
        owned = f"count(*) FILTER (WHERE {own})" if own else "0"
        points = (
            f"SELECT time_bucket(to_seconds($bucket), {at}) AS t, count(*) AS n, {owned} AS own, "
            f"{values} FROM {source} WHERE ({where}) AND {at} >= $start AND {at} < $end "
            "GROUP BY ALL"
        )
        params: dict[str, Any] = {"bucket": p.bucket_s, "start": p.start, "end": p.end}
        if p.baseline is not None:
            points += (
                f" UNION ALL SELECT NULL::TIMESTAMP AS t, count(*) AS n, 0 AS own, {values} "
                f"FROM {source} WHERE ({where}) AND {at} >= $base_start AND {at} < $base_end"
            )
            params |= {"base_start": p.baseline[0], "base_end": p.baseline[1]}
        sql = f"SELECT * FROM ({points}) ORDER BY t NULLS FIRST"
        made.append(Query(tuple(s.id for s in series), sql, params))
    return made


def recovered(baseline: float | None, before: float | None, after: float | None) -> float | None:
    """How far the series came back, once the actions took effect, from its level before them
    toward its level before the fault: 1 all the way, 0 not at all, below 0 further away, above
    1 past it. None when a level is missing or the fault had not moved it."""
    if baseline is None or before is None or after is None:
        return None
    gap = before - baseline
    if abs(gap) <= 1e-9 * max(abs(before), abs(baseline), 1.0):
        return None
    return round((before - after) / gap, 3)


def recovered_text(share: float) -> str:
    """`recovered` in words, as the review says it."""
    if share < 0:
        return f"{round(-share * 100)}% further from the level before the fault"
    return f"back {round(share * 100)}% of the way to the level before the fault"


def _weighted(points: list[dict[str, Any]], key: str) -> float | None:
    held = [(p[key], p["rows"]) for p in points if p[key] is not None and p["rows"]]
    total = sum(n for _, n in held)
    return round(sum(v * n for v, n in held) / total, 6) if total else None


def assemble(p: Plan, answers: Sequence[tuple[Query, Result]]) -> dict[str, Any]:
    """The plan's chart as the review shows it, from each of `queries(p)` with its result: per
    series its points (t, value, rows) on the times any series has, its level before the fault,
    before the first action took effect and after the last one did, and how far it came back
    (in words too). The chart's row counts are those of the first series' source."""
    first_effect = min(naive_utc(m["effective_at"]) for m in p.marks)
    last_effect = max(naive_utc(m["effective_at"]) for m in p.marks)

    def when(r: dict[str, Any]) -> dt.datetime:
        t = r["t"]
        return t if isinstance(t, dt.datetime) else naive_utc(str(t))

    answered: dict[str, tuple[dict[dt.datetime, dict[str, Any]], dict[str, Any] | None]] = {}
    errors = []
    for query, result in answers:
        if result.error:
            errors.append(result.error)
        got = [dict(zip(result.columns, row, strict=False)) for row in result.rows]
        base = next((r for r in got if r.get("t") is None), None)
        points = {when(r): r for r in got if r.get("t") is not None}
        for sid in query.series:
            answered[sid] = (points, base)
    times = sorted({t for points, _ in answered.values() for t in points})

    series = []
    for s in p.series:
        points, base = answered.get(s.id, ({}, None))
        shown = []
        for t in times:
            r = points.get(t)
            value = None if r is None or r[s.id] is None else round(float(r[s.id]), 6)
            shown.append({"t": t.isoformat(), "value": value, "rows": int(r["n"]) if r else 0})
        # A bucket counts as after the change only if it begins once the change is in effect.
        before = [x for x, t in zip(shown, times, strict=True) if t + _b(p) <= first_effect]
        after = [x for x, t in zip(shown, times, strict=True) if t >= last_effect]
        level = None if base is None or base[s.id] is None else round(float(base[s.id]), 6)
        level_before, level_after = _weighted(before, "value"), _weighted(after, "value")
        back = recovered(level, level_before, level_after)
        series.append(
            {
                "id": s.id,
                "title": s.title,
                "unit": s.unit,
                "rows_label": s.rows,
                "points": shown,
                "baseline": level,
                "before": level_before,
                "after": level_after,
                "recovered": back,
                "recovered_text": None if back is None else recovered_text(back),
            }
        )
    head_points, head_base = answered.get(p.series[0].id, ({}, None)) if p.series else ({}, None)
    return {
        "fault_id": p.fault_id,
        "title": p.title,
        "start": p.start.isoformat(),
        "end": p.end.isoformat(),
        "bucket_s": p.bucket_s,
        "baseline": None
        if p.baseline is None
        else {
            "start": p.baseline[0].isoformat(),
            "end": p.baseline[1].isoformat(),
            "rows": int(head_base["n"]) if head_base else 0,
        },
        "marks": p.marks,
        "rows_label": p.series[0].rows if p.series else "",
        "rows": sum(int(r["n"]) for r in head_points.values()),
        "own_rows": sum(int(r["own"]) for r in head_points.values()),
        "series": series,
        "error": "; ".join(errors) or None,
    }


def _b(p: Plan) -> dt.timedelta:
    return dt.timedelta(seconds=p.bucket_s)


def sparkline(points: Sequence[dict[str, Any]], width: int = 480, height: int = 80) -> str:
    """The points as an SVG polyline's `points` attribute, for the export (no scripts there)."""
    held = [(i, p["value"]) for i, p in enumerate(points) if p["value"] is not None]
    if not held:
        return ""
    low, high = min(v for _, v in held), max(v for _, v in held)
    spread = (high - low) or 1.0
    last = max(len(points) - 1, 1)
    return " ".join(
        f"{round(i / last * width, 1)},{round(height - (v - low) / spread * height, 1)}"
        for i, v in held
    )
