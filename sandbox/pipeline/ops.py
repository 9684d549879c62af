"""Stage 9: the ops changelog — deploys, config changes, upstream notices, incidents, on-call notes.

Most entries are the ordinary churn of a production system; they make a realistic haystack. An
entry that states a fact the tables can show (a schedule, a duration, a training window, a
label delay) states it from the same constants the pipeline runs on, so the log and the data
agree.
"""

from __future__ import annotations

import polars as pl

from sandbox.clock import Calendar
from sandbox.faults.base import FaultSet
from sandbox.pipeline.features import FAST_RELEASE, FAST_RELEASE_DAY, FAST_RELEASE_SPEEDUP
from sandbox.pipeline.release import (
    INITIAL_RELEASE,
    LABEL_GAP_DAYS,
    SNAPSHOT_SPACING_DAYS,
    TRAINING_HOUR,
    TRAINING_SNAPSHOTS,
)
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
        32,
        14.0,
        "oncall",
        "all",
        "on-call handoff",
        "Quiet. One flaky alert on model-server latency.",
        "oncall",
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


def _pipeline_facts(calendar: Calendar) -> list[tuple[int, float, str, str, str, str, str]]:
    """Entries about the pipeline's own stages, worded from what the stages do."""
    window_weeks = SNAPSHOT_SPACING_DAYS * (TRAINING_SNAPSHOTS - 1) // 7
    horizon = calendar.label_horizon_days
    return [
        (
            INITIAL_RELEASE.trained_at_day(),
            TRAINING_HOUR,
            "deploy",
            "churn-model",
            f"churn-model trained on {TRAINING_SNAPSHOTS} score dates over {window_weeks} "
            "weeks; promoted to champion",
            f"Newest score date {LABEL_GAP_DAYS} days before training. "
            "Holdout metrics in the registry run. Deploys with tomorrow's batch.",
            "ml-team",
        ),
        (
            FAST_RELEASE_DAY,
            11.0,
            "deploy",
            "feature-job",
            f"feature-job {FAST_RELEASE}: pandas -> polars for window aggregates",
            "Same outputs on the backfill comparison; "
            f"{FAST_RELEASE_SPEEDUP:.0f}x faster. First run on it tonight.",
            "data-platform",
        ),
        (
            37,
            10.0,
            "config",
            "labels",
            f"label job: churn labels audited, horizon stays {horizon} days",
            f"Every label is joined {horizon} days after its score date, as the churn "
            "definition in the model card says. No change to the job.",
            "ml-team",
        ),
    ]


def changelog(calendar: Calendar, faults: FaultSet) -> pl.DataFrame:
    rows = [
        {"day": d, "hour": h, "kind": k, "service": s, "title": t, "body": b, "author": a}
        for d, h, k, s, t, b, a in [*ROUTINE, *_pipeline_facts(calendar)]
    ]
    for version, release_day in APP_RELEASES[1:]:
        rows.append(
            {
                "day": release_day,
                "hour": 9.0,
                "kind": "deploy",
                "service": "mobile-apps",
                "title": f"apps {version} staged rollout started",
                "body": "iOS, Android and TV apps; auto-update over about two weeks.",
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
