"""Stage 9: the ops changelog — deploys, config changes, upstream notices, incidents, on-call notes.

Most entries are the ordinary churn of a production system; they make a realistic haystack.
"""

from __future__ import annotations

import polars as pl

from sandbox.clock import Calendar
from sandbox.faults.base import FaultSet
from sandbox.product import APP_RELEASES

# (day, hour, kind, service, title, body, author)
ROUTINE: list[tuple[int, float, str, str, str, str, str]] = [
    (
        -52,
        10.5,
        "config",
        "feature-job",
        "feature-job: worker memory 4Gi -> 6Gi",
        "OOM-kill on the 28-day window once last quarter; headroom.",
        "data-platform",
    ),
    (
        -30,
        15.0,
        "config",
        "batch-scoring",
        "batch-scoring moved to 06:00 UTC",
        "So the retention team gets the list before EU morning standup.",
        "ml-platform",
    ),
    (
        -21,
        11.0,
        "upstream",
        "billing",
        "payments: provider maintenance window Sat 01:00-03:00 UTC",
        "Card authorizations may be retried; no action expected.",
        "payments-team",
    ),
    (
        -3,
        9.0,
        "deploy",
        "model-server",
        "model-server image 2.4.1 (uvicorn bump)",
        "Dependency refresh; no behaviour change.",
        "ml-platform",
    ),
    (
        0,
        16.0,
        "deploy",
        "churn-model",
        "churn-model trained on 8 weeks; promoted to champion",
        "Holdout metrics in the registry run. Deploys with tomorrow's batch.",
        "ml-team",
    ),
    (
        4,
        14.0,
        "oncall",
        "all",
        "on-call handoff: quiet week",
        "Two latency pages at evening peak, self-resolved.",
        "oncall",
    ),
    (
        12,
        13.5,
        "config",
        "model-server",
        "model-server: autoscaling max replicas 4 -> 6",
        "Evening peak p99 creeping up; more room.",
        "ml-platform",
    ),
    (
        18,
        2.0,
        "upstream",
        "billing",
        "payments: card network incident (EU), 40 minutes",
        "Some authorizations declined and retried automatically.",
        "payments-team",
    ),
    (
        11,
        14.0,
        "oncall",
        "all",
        "on-call handoff",
        "Retention team asked why flagged counts vary by weekday; it is the weekly cycle.",
        "oncall",
    ),
    (
        20,
        10.0,
        "config",
        "retrieval",
        "retrieval: request timeout 800 ms -> 500 ms",
        "Aligning with the support UI's budget.",
        "search-team",
    ),
    (
        25,
        14.0,
        "oncall",
        "all",
        "on-call handoff",
        "Nothing notable. Dashboard for support suggestions moved to the shared folder.",
        "oncall",
    ),
    (
        26,
        19.5,
        "incident",
        "cdn",
        "INC-2231: CDN degradation in eu-west, 25 minutes",
        "Video start times up in EU; resolved by the provider.",
        "sre",
    ),
    (
        29,
        11.0,
        "deploy",
        "feature-job",
        "feature-job 1.8.0: pandas -> polars for window aggregates",
        "Same outputs on the backfill comparison; 3x faster.",
        "data-platform",
    ),
    (
        32,
        14.0,
        "oncall",
        "all",
        "on-call handoff",
        "Quiet. One flaky alert on model-server latency.",
        "oncall",
    ),
    (
        37,
        10.0,
        "config",
        "labels",
        "label job: delay raised from 12 to 14 days",
        "Matches the churn definition in the model card.",
        "ml-team",
    ),
    (
        39,
        14.0,
        "oncall",
        "all",
        "on-call handoff",
        "Business review flagged churn; ML asked to take a look.",
        "oncall",
    ),
]


def changelog(calendar: Calendar, faults: FaultSet) -> pl.DataFrame:
    rows = [
        {"day": d, "hour": h, "kind": k, "service": s, "title": t, "body": b, "author": a}
        for d, h, k, s, t, b, a in ROUTINE
    ]
    for version, release_day in APP_RELEASES[1:]:
        rows.append(
            {
                "day": release_day,
                "hour": 9.0,
                "kind": "deploy",
                "service": "mobile-apps",
                "title": f"apps {version} staged rollout started",
                "body": "iOS, Android and TV apps; auto-update over about a week.",
                "author": "apps-team",
            }
        )
    rows += faults.changelog(calendar)
    frame = pl.DataFrame(rows).filter(
        (pl.col("day") >= calendar.first_day) & (pl.col("day") <= calendar.last_visible_day)
    )
    midnights = [calendar.midnight(d) for d in frame["day"]]
    return (
        frame.with_columns(
            (
                pl.Series(midnights, dtype=pl.Datetime("us"))
                + pl.duration(minutes=(pl.col("hour") * 60).round(0).cast(pl.Int64))
            ).alias("ts")
        )
        .sort("ts", "title")
        .with_row_index("entry_id", offset=1)
        .select(
            pl.col("entry_id").cast(pl.Int64), "ts", "kind", "service", "title", "body", "author"
        )
    )
