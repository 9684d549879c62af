"""The recovery after the candidate's actions: each planted fault's symptom, as the live services
served it, from some hours before the first applied action to the simulated now, with every
applied action's effective time marked and the level before the fault began for reference.

A fault's symptom is declared here, by fault id (`SYMPTOMS`): one or more series, each an
aggregate over the online rows of `serving.predictions` (what the model server served, request by
request). Only the default world's fault (`feature-nulls-wrong-mean`) and the stale decision
threshold declare one; a fault without a declaration gets no recovery chart.

Pure functions: `plan` says what to query for a review, `sql` is the query, `assemble` turns its
rows into what the review shows (`actions_recovery`). The gateway runs the query over the live
telemetry, as the interviewer, with the session's own rows included (a session with actions on is
its stack's only one, so these are every request the model server served).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sandbox.pipeline.features import MODEL_FEATURES

# How far before the first applied action the chart begins, and the coarsest-but-one point.
LOOKBACK = dt.timedelta(hours=12)
BUCKET_S = 3600
MAX_POINTS = 400
# The reference level: this long before the fault's onset (its evidence's earliest window).
BASELINE = dt.timedelta(days=7)
SOURCE = "serving.predictions"
ONLINE = "source = 'online'"
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


@dataclass(frozen=True)
class Series:
    """One symptom series: `expr` is a SQL aggregate over the online prediction rows."""

    id: str
    title: str
    unit: str
    expr: str


MEAN_SCORE = Series("mean_score", "Mean churn score, online requests", "score", "avg(score)")
FLAGGED_SHARE = Series(
    "flagged_share",
    "Share of online requests flagged",
    "ratio",
    "avg(decision::INTEGER)::DOUBLE",
)


def _served_feature(key: dict[str, Any]) -> list[Series]:
    """The feature whose fill value is wrong (the column of the feature store its evidence points
    at), as served, then the mean score it moves."""
    refs = [str(e.get("ref", "")) for e in key.get("evidence", [])]
    prefix = "feature_store.customer_features."
    feature = next(
        (
            r[len(prefix) :]
            for r in refs
            if r.startswith(prefix) and r[len(prefix) :] in MODEL_FEATURES
        ),
        None,
    )
    if feature is None or not _NAME.match(feature):
        return [MEAN_SCORE]
    served = Series(
        f"served_{feature}", f"Mean served {feature}, online requests", "", f"avg({feature})"
    )
    return [served, MEAN_SCORE]


# Fault id -> its symptom series, given the fault's answer-key entry.
SYMPTOMS: dict[str, Callable[[dict[str, Any]], list[Series]]] = {
    "feature-nulls-wrong-mean": _served_feature,
    "stale-decision-threshold": lambda key: [FLAGGED_SHARE],
}


@dataclass(frozen=True)
class Plan:
    fault_id: str
    title: str
    series: list[Series]
    start: dt.datetime
    end: dt.datetime
    bucket_s: int
    baseline: tuple[dt.datetime, dt.datetime] | None
    marks: list[dict[str, Any]]


def _ts(iso: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return value if value.tzinfo is None else value.astimezone(dt.UTC).replace(tzinfo=None)


def onset(key: dict[str, Any]) -> dt.datetime | None:
    """When the fault began: the earliest window of its evidence in the data (a changelog entry
    may announce it a day early)."""
    starts = [
        _ts(str(e["window_start"]))
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
    first = min(_ts(str(a.get("at") or a["effective_at"])) for a in applied)
    start = first - LOOKBACK
    end = max(now, start + dt.timedelta(seconds=BUCKET_S))
    span = (end - start).total_seconds()
    bucket = BUCKET_S * max(1, -(-int(span) // (BUCKET_S * MAX_POINTS)))
    plans = []
    for key in answer_key.get("faults", []):
        declared = SYMPTOMS.get(str(key.get("fault_id")))
        if declared is None:
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
                series=declared(key),
                start=start,
                end=end,
                bucket_s=bucket,
                baseline=(began - BASELINE, began) if began else None,
                marks=marks,
            )
        )
    return plans


def sql(p: Plan) -> tuple[str, dict[str, Any]]:
    """One query for the plan's points and its baseline: rows of (t, n, own, *series); the
    baseline is the row whose t is NULL."""
    values = ", ".join(f"{s.expr} AS {s.id}" for s in p.series)
    points = (
        f"SELECT time_bucket(to_seconds($bucket), request_ts) AS t, count(*) AS n, "
        f"count(*) FILTER (WHERE client = 'workspace') AS own, {values} "
        f"FROM {SOURCE} WHERE {ONLINE} AND score IS NOT NULL "
        "AND request_ts >= $start AND request_ts < $end GROUP BY ALL"
    )
    params: dict[str, Any] = {"bucket": p.bucket_s, "start": p.start, "end": p.end}
    if p.baseline is not None:
        points += (
            f" UNION ALL SELECT NULL::TIMESTAMP AS t, count(*) AS n, 0 AS own, {values} "
            f"FROM {SOURCE} WHERE {ONLINE} AND score IS NOT NULL "
            "AND request_ts >= $base_start AND request_ts < $base_end"
        )
        params |= {"base_start": p.baseline[0], "base_end": p.baseline[1]}
    return f"SELECT * FROM ({points}) ORDER BY t NULLS FIRST", params


def _weighted(points: list[dict[str, Any]], key: str) -> float | None:
    held = [(p[key], p["rows"]) for p in points if p[key] is not None and p["rows"]]
    total = sum(n for _, n in held)
    return round(sum(v * n for v, n in held) / total, 6) if total else None


def assemble(
    p: Plan, columns: list[str], rows: list[list[Any]], error: str | None = None
) -> dict[str, Any]:
    """The plan's chart as the review shows it: per series its points (t, value, rows), its
    level before the fault, before the first action took effect and after the last one did."""
    got = [dict(zip(columns, row, strict=False)) for row in rows]
    base = next((r for r in got if r.get("t") is None), None)
    points = [r for r in got if r.get("t") is not None]
    first_effect = min(_ts(m["effective_at"]) for m in p.marks)
    last_effect = max(_ts(m["effective_at"]) for m in p.marks)

    def when(r: dict[str, Any]) -> dt.datetime:
        t = r["t"]
        return t if isinstance(t, dt.datetime) else _ts(str(t))

    series = []
    for s in p.series:
        shown = [
            {
                "t": when(r).isoformat(),
                "value": None if r[s.id] is None else round(float(r[s.id]), 6),
                "rows": int(r["n"]),
            }
            for r in points
        ]
        # A bucket counts as after the change only if it begins once the change is in effect.
        before = [x for x, r in zip(shown, points, strict=True) if when(r) + _b(p) <= first_effect]
        after = [x for x, r in zip(shown, points, strict=True) if when(r) >= last_effect]
        series.append(
            {
                "id": s.id,
                "title": s.title,
                "unit": s.unit,
                "points": shown,
                "baseline": None
                if base is None or base[s.id] is None
                else round(float(base[s.id]), 6),
                "before": _weighted(before, "value"),
                "after": _weighted(after, "value"),
            }
        )
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
            "rows": int(base["n"]) if base else 0,
        },
        "marks": p.marks,
        "rows": sum(int(r["n"]) for r in points),
        "own_rows": sum(int(r["own"]) for r in points),
        "series": series,
        "error": error,
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
