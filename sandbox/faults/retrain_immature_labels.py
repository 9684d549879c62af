"""A retrain uses score dates whose labels have not matured: recent churners are labelled loyal.

Story: to make the model "fresher", the retraining job's window was moved up to the most recent
days. The label is "cancelled within 14 days of the score date", so for any score date in the last
14 days most churners have not cancelled *yet* and count as negatives. The new version learns from
a world where almost nobody churns: its scores drop across the board, it learns only the customers
already on their way out that day, and it misses the slower leavers. The retrain ran and
registered like any other; the holdout, cut from the same immature window, looks fine.

Its trail by difficulty: guided's changelog entry says the training window moved to the most
recent days and its run is tagged `window=recent`; standard's entry says only that a retrain was
promoted to keep up with the catalogue; hard logs no entry and tags nothing, but a scheduled
retrain on the usual matured window serves the week before, logged as usual, so the bad retrain is
found only by joining its training rows to the labels as they matured.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import duckdb
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
from sandbox.faults.measure import only_version, quality_around, versions_around
from sandbox.faults.toolkit import flagged_share, mean_score, num, window
from sandbox.pipeline.release import (
    LABEL_GAP_DAYS,
    TRAINING_SNAPSHOTS,
    Release,
)
from sandbox.pipeline.release import SNAPSHOT_SPACING_DAYS as ROUTINE_SPACING_DAYS

TRAINING_TABLE = "training.churn_training_set"
LABELS_TABLE = "labels.churn_labels"
SNAPSHOT_SPACING_DAYS = 1
# At hard, a scheduled retrain on the usual matured window serves from this many days before onset.
ROUTINE_RETRAIN_DAYS_BEFORE = 7
# The same training rows' labels, once matured, churn at least this many times as often.
UNDER_LABELLED = 1.5
TITLES: dict[Tier, str | None] = {
    "guided": "churn-model retrain: training window moved to the most recent days",
    "standard": "churn-model refresh promoted to champion",
    "hard": None,  # no entry: the retrain is logged nowhere but the registry
}
ROUTINE_TITLE = "churn-model: scheduled retrain promoted to champion"
# Tells: each alone would point at the cause at the tiers that hide it.
STANDARD_TELLS = (
    "training window moved",
    "most recent days",
    "freshest snapshots",
    "immature",
    "censor",
)
HARD_TELLS = (*STANDARD_TELLS, "churn-model refresh", "spring catalogue")


class Params(FaultParams):
    ramp_days: int = Field(0, ge=0, le=0, description="A release is a step change.")
    newest_label_age_days: int = Field(
        1,
        ge=0,
        le=7,
        description="Days between the newest training score date and the retrain (a matured "
        "label needs 14).",
    )


class RetrainImmatureLabels(Fault[Params]):
    id: ClassVar[str] = "retrain-immature-labels"
    actions: ClassVar[dict[str, Verdict]] = {
        "rollback-deploy": "mitigates",
        "pin-served-version": "mitigates",
        "move-alias": "mitigates",
        "retrain": "harmful",
        "set-decision-threshold": "no effect",
        "set-imputation-fill": "no effect",
    }
    title: ClassVar[str] = "Retraining on labels that have not matured"
    rating: ClassVar[Literal["easy", "medium", "hard"]] = "hard"
    observation: ClassVar[str] = (
        "After a routine retrain, scores drop across the board and production quality slips; "
        "the new run's holdout metrics look ordinary."
    )

    def score_days(self) -> tuple[int, ...]:
        newest = self.params.onset_day - 1 - self.params.newest_label_age_days
        return tuple(newest - SNAPSHOT_SPACING_DAYS * k for k in range(TRAINING_SNAPSHOTS))

    @property
    def _routine_day(self) -> int | None:
        """At hard, the first serving day of the scheduled retrain before onset (None: none)."""
        day = self.params.onset_day - ROUTINE_RETRAIN_DAYS_BEFORE
        return day if self.tier == "hard" and day >= 2 else None

    @hook("train.releases")
    def add_release(self, value: list[Release], ctx: HookContext) -> list[Release]:
        onset = self.params.onset_day
        # Guided tags the run with its window; the other tiers register it like any retrain.
        tags = {"window": "recent"} if self.tier == "guided" else {}
        release = Release(
            day=onset,
            score_days=self.score_days(),
            run_name=f"churn-gbm-{ctx.calendar.date(onset - 1):%Y%m%d}",
            tags=tags,
            note="retrain on recent data",
        )
        kept = [r for r in value if r.day != onset]
        routine = self._routine_day
        if routine is not None and all(r.day != routine for r in kept):
            # The usual window: its newest score date's label has matured.
            kept.append(Release(day=routine))
        return [*kept, release]

    def tells(self, tier: Tier) -> tuple[str, ...]:
        return {"guided": (), "standard": STANDARD_TELLS, "hard": HARD_TELLS}[tier]

    def changelog(self, calendar: Calendar) -> list[dict[str, Any]]:
        title = TITLES[self.tier]
        if title is None:
            return self._routine_changelog()
        body = {
            "guided": "Retrained on the freshest snapshots so the model keeps up with the "
            "spring catalogue; promoted to champion, live with tomorrow's batch.",
            "standard": "So the model keeps up with the spring catalogue; live with tomorrow's "
            "batch.",
        }[self.tier]
        return [
            {
                "day": self.params.onset_day - 1,
                "hour": 17.0,
                "kind": "deploy",
                "service": "churn-model",
                "title": title,
                "body": body,
                "author": "ml-team",
            }
        ]

    def _routine_changelog(self) -> list[dict[str, Any]]:
        """The scheduled retrain's entry, stating its window as the training set shows it."""
        routine = self._routine_day
        if routine is None:
            return []
        weeks = ROUTINE_SPACING_DAYS * (TRAINING_SNAPSHOTS - 1) // 7
        return [
            {
                "day": routine - 1,
                "hour": 17.0,
                "kind": "deploy",
                "service": "churn-model",
                "title": ROUTINE_TITLE,
                "body": f"Usual window: {TRAINING_SNAPSHOTS} score dates over {weeks} weeks, "
                f"newest {LABEL_GAP_DAYS} days before training. Live with tomorrow's batch.",
                "author": "ml-team",
            }
        ]

    def _changelog_evidence(self, calendar: Calendar) -> list[Evidence]:
        title = TITLES[self.tier]
        if title is None:
            return []
        w = window(calendar, self.params.onset_day)
        trained = calendar.date(self.params.onset_day - 1)
        return [
            w.changelog("retrain-note", title, "the retrain that moved the window", start=trained)
        ]

    def symptoms(self, calendar: Calendar) -> list[Symptom]:
        return [mean_score(), flagged_share()]

    def answer_key(self, calendar: Calendar) -> AnswerKey:
        onset = self.params.onset_day
        w = window(calendar, onset)
        start = w.start
        trained = calendar.date(onset - 1)
        days = self.score_days()
        first, last = calendar.date(min(days)), calendar.date(max(days))
        return AnswerKey(
            fault_id=self.id,
            title=self.title,
            root_cause=(
                f"The retrain on {trained} used score dates {first} to {last}, the newest only "
                f"{self.params.newest_label_age_days + 1} day(s) before training. The label needs "
                "14 days to mature, so most churners in that window were still subscribed at "
                "training time and were labelled as staying. The new version learned a far lower "
                "churn rate and only the most imminent leavers; it scores everyone lower and "
                "ranks slow leavers worse, while its holdout (same immature window) looks normal."
                + (
                    f" The scheduled retrain serving from {calendar.date(self._routine_day)} "
                    "trained on the usual matured window and is not the cause."
                    if self._routine_day is not None
                    else ""
                )
            ),
            propagation=[
                "training job: window moved to the most recent score dates",
                "labels: churners who cancel after the training day are labelled 0",
                "model: learns a much lower base rate and only imminent churn",
                f"serving from {start}: scores fall; the quantile threshold keeps the flagged "
                "share, but the wrong customers fill it",
                "labels (14 days later): production AUC and precision slip",
            ],
            evidence=[
                w.column(
                    "immature-training-labels",
                    f"{TRAINING_TABLE}.label_available_at",
                    "most of the new training set's labels were not available at training time",
                    start=trained,
                ),
                w.column(
                    "training-churn-rate",
                    f"{TRAINING_TABLE}.churned",
                    "the new training set's churn rate is a fraction of the old one",
                    start=trained,
                ),
                w.column(
                    "matured-labels",
                    f"{LABELS_TABLE}.churned",
                    "the new training rows' matured labels churn far more often than the "
                    "training set says",
                    start=trained,
                ),
                w.metric("score-drop", "score_p90", "batch score quantiles drop at the release"),
                *self._changelog_evidence(calendar),
            ],
            acceptable_fixes=[
                "Roll back to the previous version.",
                "Train only on score dates whose label window has closed (score date + 14 days "
                "before the training cut-off); make the pipeline enforce it from "
                "label_available_at.",
                "If freshness matters, use a shorter label horizon for the recent rows or "
                "survival-style censoring, not zero labels.",
                "Add a release gate: training churn rate and score distribution against the "
                "previous version.",
            ],
            probes=[
                "Why did the new run's holdout metrics not reveal the problem?",
                "How did you tell this apart from genuine drift after a retrain?",
                "What would you ship first?",
                "What is the next experiment you would run to pick a safe training window?",
            ],
        )

    def investigation(self, calendar: Calendar) -> list[Step]:
        return [
            Step(
                question="Did scores change when a new model version arrived?",
                sql="""
                    SELECT model_version, min(request_ts)::DATE AS first_day,
                           round(avg(score), 5) AS mean_score,
                           round(quantile_cont(score, 0.9), 5) AS p90
                    FROM serving.predictions WHERE source = 'batch'
                    GROUP BY 1 ORDER BY first_day""",
                evidence="score-drop",
                finding="the new version's scores are a fraction of the old ones",
                found=lambda f: f.height >= 2 and f["mean_score"][-1] < 0.75 * f["mean_score"][0],
            ),
            Step(
                question="How does each version's training set compare?",
                sql=f"""
                    SELECT model_version, min(score_date) AS first_score_date,
                           max(score_date) AS last_score_date,
                           round(avg(churned), 4) AS churn_rate, count(*) AS rows
                    FROM {TRAINING_TABLE} GROUP BY 1 ORDER BY 1""",
                evidence="training-churn-rate",
                finding="the new training set's churn rate is far below the old one's",
                found=lambda f: f.height >= 2 and f["churn_rate"][-1] < 0.7 * f["churn_rate"][0],
            ),
            Step(
                question="Were the labels known when the new version was trained?",
                sql=f"""
                    WITH served AS (
                        SELECT model_version, min(request_ts) AS first_served
                        FROM serving.predictions WHERE source = 'batch' GROUP BY 1)
                    SELECT t.model_version, s.first_served,
                           max(t.label_available_at) AS last_label_available,
                           round(avg((t.label_available_at > s.first_served)::INT), 3)
                               AS share_labels_after_release
                    FROM {TRAINING_TABLE} t JOIN served s USING (model_version)
                    GROUP BY 1, 2 ORDER BY 1""",
                evidence="immature-training-labels",
                finding="labels of the new training set became available after its newest "
                "score date, i.e. after training"
                + (
                    "; the scheduled retrain the week before trained on labels that had all matured"
                    if self._routine_day is not None
                    else ""
                ),
                found=lambda f: num(f["share_labels_after_release"].max()) >= 0.5,
            ),
            Step(
                question="Do the training labels agree with the churn that has matured since?",
                sql=f"""
                    SELECT t.model_version, count(*) AS rows,
                           round(avg(t.churned), 4) AS training_churn_rate,
                           round(avg(l.churned), 4) AS matured_churn_rate
                    FROM {TRAINING_TABLE} t JOIN {LABELS_TABLE} l USING (customer_id, score_date)
                    GROUP BY 1 ORDER BY 1""",
                evidence="matured-labels",
                finding="the same customers and score dates, labelled once their 14 days had "
                "passed, churn several times as often as the new training set says: recent "
                "churners were trained on as staying",
                found=lambda f: (
                    f.height > 0
                    and any(
                        m >= UNDER_LABELLED * t and m > 0
                        for t, m in zip(
                            f["training_churn_rate"].to_list(),
                            f["matured_churn_rate"].to_list(),
                            strict=True,
                        )
                    )
                ),
            ),
        ]

    def verify(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> list[Check]:
        onset = self.params.onset_day
        trained_at = calendar.at(onset - 1, 16)
        versions = con.execute(
            f"""
            SELECT model_version, avg((label_available_at > ?)::INT), avg(churned)
            FROM {TRAINING_TABLE} GROUP BY 1 ORDER BY 1
            """,
            [trained_at],
        ).fetchall()
        immature = {v: (share, rate) for v, share, rate in versions}
        new_version = only_version(versions_around(con, calendar, onset)[1])
        share, rate = immature.get(new_version, (0.0, None)) if new_version else (0.0, None)
        checks = [
            Check(
                name="the serving version was trained on immature labels",
                passed=share >= 0.5,
                detail=f"version {new_version} serves from day {onset}; {share:.0%} of its "
                "training labels matured after it was trained",
            )
        ]
        old_rates = [r for v, (s, r) in immature.items() if v != new_version]
        name = "its training churn rate is far below the previous version's"
        if old_rates and rate is not None:
            checks.append(
                Check(
                    name=name,
                    passed=rate < 0.7 * old_rates[0],
                    detail=f"training churn rate {rate:.4f} vs {old_rates[0]:.4f} before",
                )
            )
        else:
            checks.append(
                Check(
                    name=name,
                    outcome="not measurable",
                    detail="not measurable: "
                    + (
                        f"no training set for the version serving from day {onset}"
                        if rate is None
                        else f"no version before {new_version} to compare with"
                    ),
                )
            )
        old, after = quality_around(con, calendar, onset)
        name = "scores drop across the board with the new version"
        if old.mean_score is not None and after.mean_score is not None:
            checks.append(
                Check(
                    name=name,
                    passed=after.mean_score < 0.75 * old.mean_score,
                    detail=f"mean batch score {old.mean_score:.4f} before, "
                    f"{after.mean_score:.4f} after",
                )
            )
        else:
            checks.append(
                Check(
                    name=name,
                    outcome="not measurable",
                    detail="not measurable yet (labels mature 14 days late): before "
                    f"{old.describe()}; after {after.describe()}",
                )
            )
        return checks
