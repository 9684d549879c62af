"""A retrain's training set reads features as of training time, not as of each score date.

Story: a refactor of the training pipeline moved feature retrieval onto the same "latest values"
reader the model server uses ("one code path for training and serving"). For a past score date that
reader returns what the customer looks like *today*, and a customer who has left since has no
fresh row at all, so those features are missing. The model learns "missing activity means churn"
- from the future; its holdout (built the same way) is excellent. At serving every customer
still has features, the pattern it learned never appears, and it misses the churners it was
built to catch.

Its trail by difficulty: guided's changelog entry says training now reads features through the
serving reader, and the run is tagged with the new pipeline; standard's entry names only a
training pipeline release; hard logs the retrain like any other, next to a scheduled retrain the
week before on the usual point-in-time join, so the leak is found only in the training rows and
the production quality once labels arrive.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import duckdb
import polars as pl
from pydantic import Field

from sandbox.clock import Calendar
from sandbox.difficulty import Tier
from sandbox.faults.base import (
    AnswerKey,
    Check,
    Evidence,
    Fault,
    FaultParams,
    HookContext,
    Step,
    Symptom,
    Verdict,
    hook,
)
from sandbox.faults.measure import only_version, precision_falls, quality_around, versions_around
from sandbox.faults.toolkit import flagged_share, fmt, mean_score, num, window
from sandbox.pipeline import store
from sandbox.pipeline.features import MODEL_FEATURES
from sandbox.pipeline.release import (
    LABEL_GAP_DAYS,
    SNAPSHOT_SPACING_DAYS,
    TRAINING_HOUR,
    TRAINING_SNAPSHOTS,
    Release,
)

TRAINING_TABLE = "training.churn_training_set"
# The pipeline change's changelog entry at each tier (None: not logged).
TITLES: dict[Tier, str | None] = {
    "guided": "training pipeline 3.0: features from the shared feature reader",
    "standard": "training pipeline 3.0",
    "hard": None,
}
BODIES: dict[Tier, str] = {
    "guided": "Training reads features through the same reader as serving: one code path, no "
    "more skew. Retrained and promoted today.",
    "standard": "Pipeline refactor. Retrained and promoted today.",
}
# At hard, a scheduled retrain on the usual point-in-time join serves from this many days before
# onset, and both retrains are logged alike.
ROUTINE_RETRAIN_DAYS_BEFORE = 7
# Tells: each alone would point at the cause at the tiers that hide it.
STANDARD_TELLS = (
    "feature reader",
    "same reader as serving",
    "one code path",
    "no more skew",
)
HARD_TELLS = (*STANDARD_TELLS, "training pipeline 3.0", "pipeline refactor")


# The feature views the new reader serves; the rest still come through the point-in-time join.
FEATURE_VIEWS: dict[str, tuple[str, ...]] = {
    "activity": ("sessions_7d", "sessions_28d", "sessions_trend", "days_since_last_session"),
    "watch_time": ("avg_daily_minutes_7d", "avg_daily_minutes_28d", "minutes_per_session_28d"),
    "all": tuple(MODEL_FEATURES),
}


class Params(FaultParams):
    ramp_days: int = Field(0, ge=0, le=0, description="A release is a step change.")
    feature_view: Literal[tuple(FEATURE_VIEWS)] = Field(  # type: ignore[valid-type]
        "activity", description="The feature view moved onto the new reader."
    )


class TrainingTimeTravel(Fault[Params]):
    id: ClassVar[str] = "training-time-travel"
    actions: ClassVar[dict[str, Verdict]] = {
        "rollback-deploy": "mitigates",
        "pin-served-version": "mitigates",
        "move-alias": "mitigates",
        "retrain": "harmful",
        "set-decision-threshold": "no effect",
        "set-imputation-fill": "no effect",
    }
    title: ClassVar[str] = "Time travel in the training set build"
    rating: ClassVar[Literal["easy", "medium", "hard"]] = "hard"
    observation: ClassVar[str] = (
        "A retrained version with better holdout metrics than ever serves worse than the model it "
        "replaced; nothing in the feature store or the services looks wrong."
    )

    @property
    def _routine_day(self) -> int | None:
        """At hard, the first serving day of the scheduled retrain before onset (None: none)."""
        day = self.params.onset_day - ROUTINE_RETRAIN_DAYS_BEFORE
        return day if self.tier == "hard" and day >= 2 else None

    @hook("train.releases")
    def add_release(self, value: list[Release], ctx: HookContext) -> list[Release]:
        onset = self.params.onset_day
        # Below hard the run carries the new pipeline's tag; at hard it is registered like any
        # retrain.
        tags = {} if self.tier == "hard" else {"pipeline": "3.0"}
        release = Release(
            day=onset,
            run_name=f"churn-gbm-{ctx.calendar.date(onset - 1):%Y%m%d}",
            tags=tags,
            note="retrain with the new training pipeline",
        )
        kept = [r for r in value if r.day != onset]
        routine = self._routine_day
        if routine is not None and all(r.day != routine for r in kept):
            kept.append(Release(day=routine))
        return [*kept, release]

    @hook("train.dataset")
    def read_as_of_now(self, dataset: pl.DataFrame, ctx: HookContext) -> pl.DataFrame:
        """The new pipeline reads the view's features from a reader that answers "as of now"
        (training time), not "as of each row's score time"."""
        if ctx.day != self.params.onset_day:
            return dataset
        trained_at = ctx.calendar.at(ctx.day - 1, TRAINING_HOUR)
        spine = dataset.select("customer_id", "score_date", "score_ts")
        snapshot = store.point_in_time_join(ctx.data, spine, snapshot_at=trained_at)
        view = FEATURE_VIEWS[self.params.feature_view]
        return dataset.with_columns(snapshot.select("feature_event_ts", *view).get_columns())

    def tells(self, tier: Tier) -> tuple[str, ...]:
        return {"guided": (), "standard": STANDARD_TELLS, "hard": HARD_TELLS}[tier]

    def changelog(self, calendar: Calendar) -> list[dict[str, Any]]:
        title = TITLES[self.tier]
        if title is None:
            return self._hard_changelog()
        return [
            {
                "day": self.params.onset_day - 1,
                "hour": 11.0,
                "kind": "deploy",
                "service": "training",
                "title": title,
                "body": BODIES[self.tier],
                "author": "ml-platform",
            }
        ]

    def _hard_changelog(self) -> list[dict[str, Any]]:
        """Both retrains logged as the initial one is (each trained on the usual window of score
        dates), and a routine change to the feature store that alters no value."""
        weeks = SNAPSHOT_SPACING_DAYS * (TRAINING_SNAPSHOTS - 1) // 7
        onset = self.params.onset_day
        routine = self._routine_day
        retrains = [d for d in (routine, onset) if d is not None]
        entries = [
            {
                "day": day - 1,
                "hour": TRAINING_HOUR,
                "kind": "deploy",
                "service": "churn-model",
                "title": f"churn-model trained on {TRAINING_SNAPSHOTS} score dates over {weeks} "
                "weeks; promoted to champion",
                "body": f"Newest score date {LABEL_GAP_DAYS} days before training. "
                "Holdout metrics in the registry run. Deploys with tomorrow's batch.",
                "author": "ml-team",
            }
            for day in retrains
        ]
        entries.append(
            {
                "day": max(onset - 4, 1),
                "hour": 13.0,
                "kind": "config",
                "service": "feature-server",
                "title": "offline store: older partitions compacted",
                "body": "Storage housekeeping; no change to any stored value.",
                "author": "data-platform",
            }
        )
        return entries

    def _changelog_evidence(self, calendar: Calendar) -> list[Evidence]:
        title = TITLES[self.tier]
        if title is None:
            return []
        w = window(calendar, self.params.onset_day)
        trained = calendar.date(self.params.onset_day - 1)
        return [
            w.changelog(
                "pipeline-change",
                title,
                "the pipeline change that dropped the point-in-time join",
                start=trained,
            )
        ]

    def symptoms(self, calendar: Calendar) -> list[Symptom]:
        return [mean_score(), flagged_share()]

    def answer_key(self, calendar: Calendar) -> AnswerKey:
        onset = self.params.onset_day
        w = window(calendar, onset)
        start = w.start
        trained = calendar.date(onset - 1)
        return AnswerKey(
            fault_id=self.id,
            title=self.title,
            root_cause=(
                f"The version trained on {trained} was built by a new pipeline that joins each "
                "training row to the customer's latest feature values at training time instead "
                "of the values known at the row's score time (no point-in-time join). Rows from "
                "weeks ago carry features from after their score date, and customers who "
                "cancelled since then have no fresh row, so their "
                f"{self.params.feature_view} features are NULL. The model learns that missing "
                "values mean churn - from the future - and the holdout "
                f"agrees because it leaks the same way. From {start} every served customer has "
                "features, so the model misses churn it has never seen coming."
                + (
                    f" The scheduled retrain serving from {calendar.date(self._routine_day)} "
                    "was built by the old pipeline and is not the cause."
                    if self._routine_day is not None
                    else ""
                )
            ),
            propagation=[
                "training pipeline: features joined as of training time, not score time",
                "training set: feature_event_ts after score_ts; churners' features NULL",
                "model: holdout AUC well above the previous version's",
                "serving: features are current; the leaked pattern is absent",
                "labels (14 days later): production AUC and precision fall",
            ],
            evidence=[
                w.column(
                    "future-features",
                    f"{TRAINING_TABLE}.feature_event_ts",
                    "feature timestamps after the rows' score times",
                    start=trained,
                ),
                w.column(
                    "new-version",
                    "serving.predictions.model_version",
                    "the retrained version serves from the release day",
                ),
                w.column(
                    "quality-drop",
                    "monitoring.model_performance_daily.auc",
                    "production AUC below the previous version's once labels arrive",
                ),
                *self._changelog_evidence(calendar),
            ],
            acceptable_fixes=[
                "Roll back to the previous version.",
                "Restore the point-in-time join (ASOF on event and created timestamps, with TTL) "
                "and retrain.",
                "Add a training-set check: no feature_event_ts after score_ts; fail the build.",
                "Evaluate new versions on a holdout built by the serving path (replay or shadow).",
            ],
            probes=[
                "Why is 'one code path for training and serving' not enough here?",
                "How did you prove the features came from the future?",
                "What would you ship first?",
                "What is the next experiment you would run before promoting the next version?",
            ],
        )

    def investigation(self, calendar: Calendar) -> list[Step]:
        return [
            Step(
                question="Did a new model version arrive when quality slipped?",
                sql="""
                    SELECT model_version, min(request_ts)::DATE AS first_day, count(*) AS scored
                    FROM serving.predictions WHERE source = 'batch'
                    GROUP BY 1 ORDER BY first_day""",
                evidence="new-version",
                finding="a retrained version took over at the release day"
                + (
                    "; a scheduled retrain served the week before"
                    if self._routine_day is not None
                    else ""
                ),
                found=lambda f: f.height >= 2,
            ),
            Step(
                question="Were the training features known at each row's score time?",
                sql=f"""
                    SELECT model_version,
                           round(avg((feature_event_ts > score_ts)::INT), 3) AS share_from_future,
                           max(date_diff('day', score_ts, feature_event_ts)) AS max_days_ahead
                    FROM {TRAINING_TABLE} GROUP BY 1 ORDER BY 1""",
                evidence="future-features",
                finding="the new version's training rows carry features from after their "
                "score time, by weeks"
                + (
                    "; the scheduled retrain's rows do not" if self._routine_day is not None else ""
                ),
                found=lambda f: num(f["share_from_future"].max()) >= 0.9,
            ),
            Step(
                question="Which training rows have no feature values at all?",
                sql=f"""
                    SELECT model_version, churned, count(*) AS n,
                           round(avg((feature_event_ts IS NULL)::INT), 3) AS share_without_features
                    FROM {TRAINING_TABLE} GROUP BY 1, 2 ORDER BY 1, 2""",
                evidence="future-features",
                finding="in the new training set nearly every churner, and almost nobody else, "
                "has no features",
                found=lambda f: (
                    num(f.filter(pl.col("churned") == 1)["share_without_features"].max()) >= 0.5
                ),
            ),
            Step(
                question="How does the new version do in production against the old one?",
                sql="""
                    SELECT p.model_version, count(*) AS scored,
                           round(avg(l.churned) FILTER (WHERE p.decision), 4) AS precision,
                           round(avg(p.score) FILTER (WHERE l.churned = 1)
                                 - avg(p.score) FILTER (WHERE l.churned = 0), 4) AS score_gap
                    FROM serving.predictions p JOIN labels.churn_labels l
                      ON l.customer_id = p.customer_id AND l.score_date = p.request_ts::DATE
                    WHERE p.source = 'batch'
                    GROUP BY 1 ORDER BY 1""",
                evidence="quality-drop",
                finding="the new version's flagged customers churn less often",
                found=lambda f: f.height >= 2 and f["precision"][-1] < 0.85 * f["precision"][0],
            ),
        ]

    def verify(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> list[Check]:
        onset = self.params.onset_day
        new_version = only_version(versions_around(con, calendar, onset)[1]) or ""
        share, days_ahead = con.execute(
            f"""
            SELECT avg((feature_event_ts > score_ts)::INT),
                   median(date_diff('day', score_ts, feature_event_ts))
            FROM {TRAINING_TABLE} WHERE model_version = ?
            """,
            [new_version],
        ).fetchall()[0]
        checks = [
            Check(
                name="the serving version's training features come from after the score time",
                passed=share is not None and share >= 0.9,
                detail=f"version {new_version or 'n/a'}: {fmt(share, '.0%')} of training rows have "
                f"features from after their score time (median {days_ahead} days ahead)",
            )
        ]
        old, after = quality_around(con, calendar, onset)
        checks.append(precision_falls(old, after, 0.85))
        return checks
