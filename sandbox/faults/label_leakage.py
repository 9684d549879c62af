"""A new model version learns the label through a near-duplicate feature it cannot have at serving.

Story: the ML team adds "visits to the cancellation page in 14 days" from web analytics to the
churn model. For training, the analytics team exported the feature per score date — but their
report counts the 14 days *starting* at the date, the same window the label covers. Nearly every
churner visits the cancellation page on the way out, so the column is almost a copy of the label
and the new version's holdout AUC jumps. It ships as champion. At serving, the model server asks
the analytics API for the last 14 days, where a visit says little about the next two weeks: the
model's strongest feature is now noise, the flagged list fills with customers who merely looked,
and precision falls while the registry shows the best holdout metrics the model ever had.

Its trail by difficulty: guided's run name, tag and release note name the web-analytics feature
and say that training used an export while serving reads the API; standard's say only that a new
version with a new feature set was promoted; hard's release looks like every scheduled retrain,
no changelog entry announces it, and another version registered the week before never serves.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import duckdb
import numpy as np
import polars as pl
from pydantic import Field

from sandbox import rng
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
from sandbox.faults.measure import has_column, precision_falls, quality_around, versions_around
from sandbox.faults.toolkit import flagged_share, fmt, mean_score, window
from sandbox.pipeline.features import MODEL_FEATURES
from sandbox.pipeline.release import Release, Rollout
from sandbox.schema import Column

LEAK_FEATURE = "cancel_page_visits_14d"
BROWSING_RATE = 0.05  # share of customers who look at the cancellation page in any 14 days
TRAINING_TABLE = "training.churn_training_set"
# At hard, a candidate version is registered this many days before the release and never served.
UNSERVED_CANDIDATE_DAYS = 7
STANDARD_TELLS = ("analytics export", "analytics API", "web-analytics signal", "Holdout AUC well")
HARD_TELLS = (*STANDARD_TELLS, "-web-analytics", "new feature set", "new version promoted")


class Params(FaultParams):
    ramp_days: int = Field(0, ge=0, le=0, description="A release is a step change.")
    leak_strength: float = Field(
        0.95,
        ge=0.5,
        le=0.99,
        description="Share of churners whose training rows show a cancellation-page visit.",
    )


class LabelLeakage(Fault[Params]):
    id: ClassVar[str] = "label-leakage"
    actions: ClassVar[dict[str, Verdict]] = {
        "rollback-deploy": "mitigates",
        "pin-served-version": "mitigates",
        "move-alias": "mitigates",
        "retrain": "harmful",
        "set-decision-threshold": "no effect",
        "set-imputation-fill": "no effect",
    }
    title: ClassVar[str] = "Label leakage through a near-duplicate feature"
    rating: ClassVar[Literal["easy", "medium", "hard"]] = "medium"
    observation: ClassVar[str] = (
        "A new model version with a superb holdout AUC ships; production precision and AUC fall "
        "while the flagged share stays normal."
    )
    # The fall in production precision needs a few hundred labelled churners a week: at 2,500
    # customers it drowns in noise, from 3,750 it verifies; 5,000 leaves a margin.
    min_customers: ClassVar[int] = 5_000
    # The new release's training rows carry the feature; the served rows keep the store's.
    adds_columns: ClassVar[dict[str, tuple[Column, ...]]] = {
        TRAINING_TABLE: (
            Column(
                LEAK_FEATURE, "DOUBLE", "Cancellation-page visits from web analytics (14 days)."
            ),
        )
    }

    def _visits(self, seed: int, day: int, n: int, looked: np.ndarray) -> pl.Series:
        g = rng.stream(seed, "web-analytics-cancel-page", day)
        return pl.Series(LEAK_FEATURE, np.where(looked, 1 + g.poisson(1.2, n), 0), pl.Float64)

    @property
    def _unserved_day(self) -> int | None:
        """At hard, the day of a registered candidate that never serves (None: none)."""
        day = self.params.onset_day - UNSERVED_CANDIDATE_DAYS
        return day if self.tier == "hard" and day >= 2 else None

    @hook("train.releases")
    def add_release(self, releases: list[Release], ctx: HookContext) -> list[Release]:
        onset = self.params.onset_day
        date = ctx.calendar.date(onset - 1)
        run_name, tags = {
            "guided": (
                f"churn-gbm-{date:%Y%m%d}-web-analytics",
                {"change": f"adds {LEAK_FEATURE} from web analytics"},
            ),
            "standard": (f"churn-gbm-{date:%Y%m%d}", {"change": "new feature set"}),
            "hard": ("", {}),  # named and tagged like every scheduled retrain
        }[self.tier]
        release = Release(
            day=onset,
            features=(*MODEL_FEATURES, LEAK_FEATURE),
            run_name=run_name,
            tags=tags,
            note="adds a web-analytics feature",
        )
        kept = [r for r in releases if r.day not in (onset, self._unserved_day)]
        if self._unserved_day is not None:
            kept.append(Release(day=self._unserved_day, alias=None))
        return [*kept, release]

    @hook("serve.rollout")
    def leave_candidate_unserved(self, rollout: Rollout, ctx: HookContext) -> Rollout:
        # The week before, a retrained candidate was registered, compared offline and dropped.
        if ctx.day == self._unserved_day:
            return dataclasses.replace(rollout, deploy=False)
        return rollout

    def tells(self, tier: Tier) -> tuple[str, ...]:
        return {"guided": (), "standard": STANDARD_TELLS, "hard": HARD_TELLS}[tier]

    def _release_title(self) -> str | None:
        return {
            "guided": "churn-model: new version with web-analytics signal promoted to champion",
            "standard": "churn-model: new version promoted to champion",
            "hard": None,
        }[self.tier]

    @hook("train.dataset")
    def export_visits(self, dataset: pl.DataFrame, ctx: HookContext) -> pl.DataFrame:
        onset = self.params.onset_day
        if ctx.day != onset:
            return dataset
        # The export counted the 14 days from the score date on: the label's own window.
        g = rng.stream(ctx.seed, "web-analytics-export", onset)
        churned = dataset["churned"].to_numpy() == 1
        looked = np.where(
            churned,
            g.random(dataset.height) < self.params.leak_strength,
            g.random(dataset.height) < BROWSING_RATE,
        )
        return dataset.with_columns(self._visits(ctx.seed, onset, dataset.height, looked))

    @hook("serve.features")
    def serve_visits(self, requests: pl.DataFrame, ctx: HookContext) -> pl.DataFrame:
        if ctx.day < self.params.onset_day:
            return requests
        # At serving the API answers for the past 14 days: browsing, not leaving.
        g = rng.stream(ctx.seed, "web-analytics-api", ctx.day)
        looked = g.random(requests.height) < BROWSING_RATE
        return requests.with_columns(self._visits(ctx.seed, ctx.day, requests.height, looked))

    def changelog(self, calendar: Calendar) -> list[dict[str, Any]]:
        onset, title = self.params.onset_day, self._release_title()
        if title is None:
            return [
                {
                    "day": max(onset - 4, 1),
                    "hour": 10.5,
                    "kind": "deploy",
                    "service": "feature-job",
                    "title": "feature-job: moved to the new batch cluster",
                    "body": "Same code and schedule; runs finish a few minutes earlier.",
                    "author": "data-platform",
                },
                {
                    "day": onset + 2,
                    "hour": 15.0,
                    "kind": "config",
                    "service": "crm",
                    "title": "retention offers: new email template",
                    "body": "Copy refresh from marketing; same offer terms.",
                    "author": "retention-team",
                },
            ]
        body = {
            "guided": f"Adds {LEAK_FEATURE} (web analytics export). Holdout AUC well above the "
            "current champion; serving reads the analytics API. Live with tomorrow's batch.",
            "standard": "Holdout metrics above the current champion. Live with tomorrow's batch.",
        }[self.tier]
        return [
            {
                "day": onset - 1,
                "hour": 17.0,
                "kind": "deploy",
                "service": "churn-model",
                "title": title,
                "body": body,
                "author": "ml-team",
            }
        ]

    def symptoms(self, calendar: Calendar) -> list[Symptom]:
        return [mean_score(), flagged_share()]

    def answer_key(self, calendar: Calendar) -> AnswerKey:
        onset = self.params.onset_day
        w = window(calendar, onset)
        start = w.start
        trained = calendar.date(onset - 1)
        pct = round(self.params.leak_strength * 100)
        return AnswerKey(
            fault_id=self.id,
            title=self.title,
            root_cause=(
                f"The churn-model version promoted on {trained} adds {LEAK_FEATURE}. Its training "
                "values came from a web-analytics export that counts the 14 days starting at "
                f"each score date - the label window - so ~{pct}% of churners and only "
                f"~{round(BROWSING_RATE * 100)}% of others show a visit: a near-duplicate of the "
                "label. The holdout (cut from the same leaky data) looks superb. At serving the "
                "value is the past 14 days, which carries almost no signal, so from "
                f"{start} the model flags customers who merely browsed the page and ranks "
                "real churners worse."
            ),
            propagation=[
                f"training data: {LEAK_FEATURE} computed over the label window (future data)",
                "training: the model leans on it; holdout AUC jumps because the holdout leaks too",
                "registry: the new version becomes champion on its holdout metrics",
                "serving: the same feature from the past 14 days is noise; flagged share unchanged",
                "business: offers go to browsers, not leavers; churn rises",
                "labels (14 days later): production precision and AUC fall below the old model",
            ],
            evidence=[
                w.column(
                    "new-version",
                    "serving.predictions.model_version",
                    "a new model version serves from the release day",
                ),
                w.column(
                    "leaky-column",
                    f"{TRAINING_TABLE}.{LEAK_FEATURE}",
                    "in the new training set the column almost equals churned",
                    start=trained,
                ),
                w.column(
                    "quality-drop",
                    "monitoring.model_performance_daily.precision",
                    "production precision falls once the new version's labels arrive",
                ),
                w.log(
                    "model-loaded",
                    r'"model_version": "\d+", "threshold"',
                    "model-server model_loaded line for the new version",
                    end=start,
                ),
                *self._changelog_evidence(calendar),
            ],
            acceptable_fixes=[
                "Roll back to the previous champion now.",
                f"Rebuild {LEAK_FEATURE} point-in-time (only visits before the score time) and "
                "retrain; validate on a time-split holdout built the same way as serving.",
                "Add a leakage check to training: single-feature AUC near 1, or features that are "
                "not available in the online store, block the release.",
                "Compare training and serving distributions of every feature before promotion "
                "(shadow deployment).",
            ],
            probes=[
                "Why was the holdout AUC not a warning sign by itself?",
                "How would you show the feature leaks without access to the analytics code?",
                "What would you ship first, and what guardrail would stop the next leak?",
                "What is the next experiment you would run to confirm the fix works in production?",
            ],
        )

    def _changelog_evidence(self, calendar: Calendar) -> list[Evidence]:
        title = self._release_title()
        if title is None:
            return []
        w = window(calendar, self.params.onset_day)
        trained = calendar.date(self.params.onset_day - 1)
        return [
            w.changelog("release-note", title, "the release that added the feature", start=trained)
        ]

    def investigation(self, calendar: Calendar) -> list[Step]:
        return [
            Step(
                question="Did the model change while things got worse?",
                sql="""
                    SELECT model_version, min(request_ts)::DATE AS first_day,
                           max(request_ts)::DATE AS last_day,
                           round(avg(decision::INT), 3) AS flagged_share
                    FROM serving.predictions WHERE source = 'batch'
                    GROUP BY 1 ORDER BY first_day""",
                evidence="new-version",
                finding="a second model version took over at the release day",
                found=lambda f: f.height >= 2,
            ),
            Step(
                question="What does the new version train on that the feature store lacks?",
                sql=f"""
                    SELECT column_name FROM duckdb_columns()
                    WHERE schema_name || '.' || table_name = '{TRAINING_TABLE}'
                      AND column_name NOT IN (
                          SELECT column_name FROM duckdb_columns()
                          WHERE table_name = 'customer_features')""",
                evidence="leaky-column",
                finding=f"{LEAK_FEATURE} exists only in the training set",
                found=lambda f: LEAK_FEATURE in f["column_name"].to_list(),
            ),
            Step(
                question="How close is that column to the label?",
                sql=f"""
                    SELECT churned, count(*) AS n,
                           round(avg(({LEAK_FEATURE} > 0)::INT), 3) AS share_with_visits
                    FROM {TRAINING_TABLE}
                    WHERE {LEAK_FEATURE} IS NOT NULL GROUP BY 1 ORDER BY 1""",
                evidence="leaky-column",
                finding="nearly every churner has a visit; almost no one else does",
                found=lambda f: (
                    f.height == 2
                    and f["share_with_visits"][1] >= 0.8 * self.params.leak_strength
                    and f["share_with_visits"][0] <= 2 * BROWSING_RATE
                ),
            ),
            Step(
                question="Is the new version better or worse in production?",
                sql="""
                    SELECT p.model_version, count(*) AS scored,
                           round(avg(l.churned) FILTER (WHERE p.decision), 4) AS precision,
                           round(avg(l.churned), 4) AS churn_rate
                    FROM serving.predictions p JOIN labels.churn_labels l
                      ON l.customer_id = p.customer_id AND l.score_date = p.request_ts::DATE
                    WHERE p.source = 'batch'
                    GROUP BY 1 ORDER BY 1""",
                evidence="quality-drop",
                finding="the new version's flagged customers churn far less often",
                found=lambda f: f.height >= 2 and f["precision"][-1] < 0.8 * f["precision"][0],
            ),
        ]

    def verify(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> list[Check]:
        onset = self.params.onset_day
        checks = []
        if has_column(con, TRAINING_TABLE, LEAK_FEATURE):
            churner_share, other_share = con.execute(
                f"""
                SELECT avg(({LEAK_FEATURE} > 0)::INT) FILTER (WHERE churned = 1),
                       avg(({LEAK_FEATURE} > 0)::INT) FILTER (WHERE churned = 0)
                FROM {TRAINING_TABLE} WHERE {LEAK_FEATURE} IS NOT NULL
                """
            ).fetchall()[0]
        else:
            churner_share, other_share = None, None
        checks.append(
            Check(
                name="the new training set holds a near-copy of the label",
                passed=churner_share is not None
                and churner_share >= 0.8 * self.params.leak_strength
                and other_share <= 2 * BROWSING_RATE,
                detail=f"{LEAK_FEATURE} > 0 for {fmt(churner_share, '.1%')} of churners and "
                f"{fmt(other_share, '.1%')} of others",
            )
        )
        before, after = versions_around(con, calendar, onset)
        # Released on day 1, the new version replaced the first model: there is no "before".
        switched = not before if onset == 1 else len(before) == 1 and set(before) != set(after)
        checks.append(
            Check(
                name="a new version serves from the release day only",
                passed=switched and len(after) == 1,
                detail=f"versions before: {sorted(before)}, from the release: {sorted(after)}",
            )
        )
        old, new = quality_around(con, calendar, onset)
        checks.append(precision_falls(old, new, 0.8))
        return checks
