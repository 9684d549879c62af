"""A retrain changed the model's score scale; the servers kept the old decision threshold.

Story: the churn model's mean score ran above the churn the team observed (the retention offers
prevent some of the churn it predicts), so the ML team retrains it with churners down-weighted in
training — a class weight below 1 — to pull the scores down. The retrain is promoted to champion
as usual, and its MLflow run records the new decision threshold, the score that flags the top 10%
on its holdout. But the model servers take their threshold from their own config, and the release
only swapped the model artifact: from the next morning the servers compare the new, lower scores
against the old cut-off. The ranking is as good as before; the retention team just gets a much
shorter list (or, with churners up-weighted, a much longer one) than its 10% budget, and the flagged
share stays inside the alert band, so nothing pages.

Its trail by difficulty: guided names the class weight and "no server config changes" in the
changelog and tags the run with the change; standard logs the retrain as updated training settings
and tags it so; hard logs and tags nothing, but a routine retrain a week earlier goes out the usual
way, its own threshold copied into the servers' config, so only reading each version's served
threshold against its own scores (and its ranking against the labels) shows which release kept the
old cut-off. The threshold-by-version panel is shown up to standard.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import duckdb
import numpy as np
import polars as pl
from pydantic import Field, field_validator

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
from sandbox.faults.measure import served_versions, versions_around
from sandbox.faults.toolkit import flagged_share, fmt, mean_score, num, window
from sandbox.pipeline.release import Release, Rollout
from sandbox.pipeline.train import FLAGGED_SHARE

# Flagged share under the old threshold by churner class weight, measured on 10k-customer worlds
# (the answer key quotes it; the checks only need the direction and MIN_SHIFT).
MEASURED_SHARE = ((0.5, 0.037), (0.6, 0.048), (0.7, 0.063), (1.0, 0.1), (1.5, 0.16), (2.0, 0.21))
MIN_SHIFT = 0.025  # the flagged share moves at least this far from the ~10% budget
TARGET_BAND = (0.07, 0.13)  # where the flagged share sits while threshold and model agree
QUANTILE_GAP = 0.2  # the new version's own 90th-percentile score differs this much (relative)
# Offers per day move at least this much between versions. (Not a verify check: offers go only to
# customers without a running 30-day offer, so day 1 and day 31 carry bursts in every world.)
OFFERS_CHANGE = 0.2
LOADED_PATTERN = r'"model_version": "([2-9]|[0-9]{2,})", "threshold"'
# Each version's own top 10% by score churns at least this share of the first version's rate:
# the class weight moves the scores, not the ranking.
RANKING_HELD = 0.75
# At hard, a routine (unweighted) retrain goes out this many days before onset, with its own
# threshold.
ROUTINE_RETRAIN_DAYS_BEFORE = 7
# Tells: each alone would point at the cause at the tiers that hide it.
STANDARD_TELLS = (
    "class weight",
    "churners weighted",
    "calibration fix",
    "recall tuning",
    "no server config",
    "above observed churn",
    "retention budget",
    "model artifact",
)
# At hard also the standard entry's words, and the panel that plots each version's threshold.
HARD_TELLS = (*STANDARD_TELLS, "training settings", "Decision threshold by model version")


class Params(FaultParams):
    onset_day: int = Field(
        15,
        ge=2,
        le=42,
        description="First serving day of the retrained model (2..42: a threshold is only stale "
        "if an earlier model set it).",
    )
    ramp_days: int = Field(0, ge=0, le=0, description="A release is a step change.")
    positive_weight: float = Field(
        0.6,
        ge=0.55,
        le=2.0,
        description="Class weight of churners in the retrain (1 = unweighted). Below 1 the scores "
        "fall and the old threshold flags fewer customers (0.6: about 5%); above 1 they rise and "
        "it flags more (2.0: about 20%). The range keeps every day's flagged share inside the "
        "3%..25% alert band.",
    )

    @field_validator("positive_weight")
    @classmethod
    def _must_shift_scores(cls, v: float) -> float:
        if 0.7 < v < 1.4:
            raise ValueError(
                "must be at most 0.7 or at least 1.4: closer to 1 the score scale barely moves "
                "and the old threshold still flags about 10%"
            )
        return v


class StaleDecisionThreshold(Fault[Params]):
    id: ClassVar[str] = "stale-decision-threshold"
    actions: ClassVar[dict[str, Verdict]] = {
        "set-decision-threshold": "mitigates",
        "rollback-deploy": "mitigates",
        "pin-served-version": "no effect",
        "retrain": "no effect",
        "set-imputation-fill": "no effect",
    }
    title: ClassVar[str] = "Retrained model served with the previous model's decision threshold"
    rating: ClassVar[Literal["easy", "medium", "hard"]] = "easy"
    observation: ClassVar[str] = (
        "After a routine retrain the retention list is a fraction (or a multiple) of its usual "
        "length, while the new run's holdout metrics look as good as ever and no alert fires."
    )

    @property
    def fewer(self) -> bool:
        return self.params.positive_weight < 1

    def _title(self, calendar: Calendar) -> str | None:
        """The changelog title of the retrain at this tier (None: not logged)."""
        date = f"{calendar.date(self.params.onset_day - 1):%Y-%m-%d}"
        return {
            "guided": f"churn-model retrain {date}: "
            + ("calibration fix" if self.fewer else "recall tuning")
            + ", promoted to champion",
            "standard": f"churn-model retrain {date}: training settings updated, promoted to "
            "champion",
            "hard": None,
        }[self.tier]

    def _tags(self) -> dict[str, str]:
        return {
            "guided": {
                "change": "churner class weight",
                "reason": "mean score above observed churn"
                if self.fewer
                else "recall at the retention budget",
            },
            "standard": {"change": "training settings"},
            "hard": {},  # tagged like every scheduled retrain
        }[self.tier]

    @property
    def _routine_day(self) -> int | None:
        """At hard, the first serving day of a routine retrain before onset (None: none)."""
        day = self.params.onset_day - ROUTINE_RETRAIN_DAYS_BEFORE
        return day if self.tier == "hard" and day >= 2 else None

    @hook("train.releases")
    def add_release(self, value: list[Release], ctx: HookContext) -> list[Release]:
        onset = self.params.onset_day
        release = Release(
            day=onset,
            alias="champion",
            run_name=f"churn-gbm-{ctx.calendar.date(onset - 1):%Y%m%d}",
            tags=self._tags(),
            note="scheduled retrain with class weights",
        )
        releases = [r for r in value if r.day != onset] + [release]
        routine = self._routine_day
        # A routine retrain, unless something else is released that day: shipped the usual way,
        # with the threshold its own run chose.
        if routine is not None and all(r.day != routine for r in releases):
            releases.append(Release(day=routine, alias="champion"))
        return sorted(releases, key=lambda r: r.day)

    @hook("train.class_weight")
    def weight_churners(self, weight: float, ctx: HookContext) -> float:
        return self.params.positive_weight if ctx.day == self.params.onset_day else weight

    @hook("serve.rollout")
    def keep_server_threshold(self, rollout: Rollout, ctx: HookContext) -> Rollout:
        """The release swaps only the model artifact: the servers' own config keeps its
        threshold."""
        if ctx.day != self.params.onset_day or rollout.current_threshold is None:
            return rollout
        return dataclasses.replace(rollout, threshold=rollout.current_threshold)

    def tells(self, tier: Tier) -> tuple[str, ...]:
        return {"guided": (), "standard": STANDARD_TELLS, "hard": HARD_TELLS}[tier]

    def changelog(self, calendar: Calendar) -> list[dict[str, Any]]:
        if self.tier == "hard":
            return self._routine_entries()
        weight = self.params.positive_weight
        body = {
            "guided": (
                "Mean predicted churn ran above observed churn; churners weighted "
                f"{weight:g} in training to bring the scores in line."
                if self.fewer
                else f"Churners weighted {weight:g} in training to lift recall on the retention "
                "list."
            )
            + " Holdout AUC on par with the current champion. Model artifact rolls out with "
            "tomorrow's 06:00 batch; no server config changes.",
            "standard": "Holdout AUC on par with the current champion. Live with tomorrow's "
            "06:00 batch.",
        }[self.tier]
        return [
            {
                "day": self.params.onset_day - 1,
                "hour": 17.0,
                "kind": "deploy",
                "service": "churn-model",
                "title": self._title(calendar),
                "body": body,
                "author": "ml-team",
            }
        ]

    def _routine_entries(self) -> list[dict[str, Any]]:
        """At hard, the routine retrain before onset, logged as usual."""
        if self._routine_day is None:
            return []
        return [
            {
                "day": self._routine_day - 1,
                "hour": 17.0,
                "kind": "deploy",
                "service": "churn-model",
                "title": "churn-model: scheduled retrain promoted to champion",
                "body": "Retrained on a fresh label window. Live with tomorrow's 06:00 batch.",
                "author": "ml-team",
            }
        ]

    def _routine_note(self, calendar: Calendar) -> str:
        if self._routine_day is None:
            return ""
        return (
            f" (At this difficulty nothing logs or tags the change; a routine retrain serving "
            f"from {calendar.date(self._routine_day)} went out the usual way, with its own "
            "threshold, so a new version alone does not mean a stale cut-off.)"
        )

    def _changelog_evidence(self, calendar: Calendar) -> list[Evidence]:
        title = self._title(calendar)
        if title is None:
            return []
        w = window(calendar, self.params.onset_day)
        return [
            w.changelog(
                "retrain-note",
                title,
                "the retrain with class weights; 'no server config changes'"
                if self.tier == "guided"
                else "the retrain, in words that do not say what changed",
                start=calendar.date(self.params.onset_day - 1),
            )
        ]

    def symptoms(self, calendar: Calendar) -> list[Symptom]:
        return [flagged_share(), mean_score()]

    def answer_key(self, calendar: Calendar) -> AnswerKey:
        onset = self.params.onset_day
        w = window(calendar, onset)
        start = w.start
        trained = calendar.date(onset - 1)
        weight = self.params.positive_weight
        direction = "fewer" if self.fewer else "more"
        level = f"roughly {expected_share(weight):.0%}"
        return AnswerKey(
            fault_id=self.id,
            title=self.title,
            root_cause=(
                f"The churn model retrained on {trained} used a class weight of {weight:g} for "
                f"churners, which moves every score {'down' if self.fewer else 'up'}. Its MLflow "
                "run (param decision_threshold, also the champion version's tag) records a new "
                "threshold that flags the top 10% of its holdout, but the model servers kept the "
                f"previous model's threshold. From the {start} batch the old cut-off flags "
                f"{direction} customers than the retention budget of 10% ({level} instead), so "
                f"{direction} retention offers go out. The ranking (AUC) is unchanged; the "
                "flagged share stays inside the 3%..25% alert band, so nothing fires."
                + self._routine_note(calendar)
            ),
            propagation=[
                f"training: retrain with churner class weight {weight:g}; scores shift "
                f"{'down' if self.fewer else 'up'}",
                "registry: new champion with its own decision_threshold param",
                "model-server: loads the new model, keeps the old threshold (model_loaded log "
                "line shows it)",
                f"batch scoring: positive_rate moves from ~10% to {level}",
                f"retention: {direction} offers per day; "
                + (
                    "at-risk customers go without an offer, churn rises"
                    if self.fewer
                    else "offers go to customers who would have stayed, cost rises"
                ),
            ],
            evidence=[
                w.column(
                    "served-threshold",
                    "serving.predictions.threshold",
                    "the new model version is served with the previous version's threshold",
                ),
                w.metric(
                    "flagged-share",
                    "positive_rate",
                    f"daily positive rate steps from ~10% to {level}",
                ),
                w.metric(
                    "score-quantile",
                    "score_p90",
                    "the 90th-percentile score moves away from the served threshold",
                ),
                w.column(
                    "offers",
                    "crm.retention_offers.offered_at",
                    f"{direction} retention offers per day from onset",
                ),
                w.log(
                    "model-loaded",
                    LOADED_PATTERN,
                    "model_loaded for the new version carries the old threshold",
                ),
                w.column(
                    "ranking-held",
                    "labels.churn_labels.churned",
                    "each version's own top 10% by score churns about as often as before: the "
                    "ranking held, only the cut-off stopped fitting the scores",
                ),
                *self._changelog_evidence(calendar),
            ],
            acceptable_fixes=[
                "Set the servers' threshold to the new run's decision_threshold (or roll back "
                "the model) right away; re-send the missed offers if flagging fewer.",
                "Ship the threshold with the model (a registry tag or the model signature) and "
                "have the server read it on load; refuse a load whose threshold is missing.",
                "Define the decision as a share (top 10% of the day's scores) rather than a fixed "
                "score, or recalibrate scores after weighted training.",
                "Alert on a flagged share outside a tight band around the budget (e.g. 8%..12%), "
                "not only 3%..25%.",
            ],
            probes=[
                "Why did the class weight not change the ranking, yet change the list length?",
                "Why did no alert fire, and what band would you alert on?",
                "What would you ship first, and how would you confirm it worked?",
                "What experiment would you run next to decide between a fixed threshold and a "
                "quantile-based decision?",
                "Whose job is the threshold: the model's release or the server's config?",
            ],
        )

    def investigation(self, calendar: Calendar) -> list[Step]:
        middle = self._hard_steps() if self.tier == "hard" else self._threshold_steps()
        return [self._list_length_step(), *middle, self._offers_step()]

    def _list_length_step(self) -> Step:
        return Step(
            question="Is the daily retention list the usual length?",
            sql="""
                SELECT request_ts::DATE AS day, model_version, any_value(threshold) AS threshold,
                       round(avg(decision::INT), 4) AS flagged_share
                FROM serving.predictions WHERE source = 'batch' GROUP BY 1, 2 ORDER BY 1""",
            evidence="flagged-share",
            finding="the flagged share leaves ~10% the day a new version arrives",
            found=lambda f: (
                f["model_version"].n_unique() >= 2
                and num(f["flagged_share"].max()) - num(f["flagged_share"].min()) >= MIN_SHIFT
            ),
        )

    def _threshold_steps(self) -> list[Step]:
        """Below hard: one version's threshold against its scores, and the load log."""
        return [
            Step(
                question="Does each version's threshold fit its own scores?",
                sql="""
                    SELECT model_version, min(threshold) AS min_threshold,
                           max(threshold) AS max_threshold,
                           round(quantile_cont(score, 0.9), 5) AS score_p90,
                           round(avg(decision::INT), 4) AS flagged_share
                    FROM serving.predictions WHERE source = 'batch' GROUP BY 1 ORDER BY 1""",
                evidence="served-threshold",
                finding="both versions share one threshold, but the new version's 90th-percentile "
                "score is far from it",
                found=lambda f: f.height >= 2 and _stale(f),
            ),
            Step(
                question="What threshold did the servers load with the new model?",
                sql="""
                    SELECT ts, service, event, message, attrs FROM telemetry.logs
                    WHERE event IN ('model_registered', 'model_loaded') ORDER BY ts""",
                evidence="model-loaded",
                finding="the new version was loaded with exactly the previous threshold",
                found=lambda f: _same_threshold_loaded(f),
            ),
        ]

    def _hard_steps(self) -> list[Step]:
        """At hard two releases change the version: the labels show the ranking held, and the
        loaded thresholds read against each version's own scores show which release kept the
        previous cut-off."""
        return [
            Step(
                question="Did the new version rank churners worse, or only flag a different "
                "number of them?",
                sql="""
                    WITH labelled AS (
                        SELECT p.model_version, p.decision, l.churned,
                               percent_rank() OVER (
                                   PARTITION BY p.request_ts::DATE ORDER BY p.score DESC
                               ) AS score_rank
                        FROM serving.predictions p JOIN labels.churn_labels l
                          ON l.customer_id = p.customer_id AND l.score_date = p.request_ts::DATE
                        WHERE p.source = 'batch'
                          AND l.label_available_at <= (SELECT max(request_ts)
                                                       FROM serving.predictions)
                    )
                    SELECT model_version, count(*) AS scored,
                           round(avg(decision::INT), 4) AS flagged_share,
                           round(avg(churned), 4) AS churn_rate,
                           round(avg(churned) FILTER (WHERE score_rank < 0.1), 4)
                               AS top_decile_churn_rate
                    FROM labelled GROUP BY 1 ORDER BY 1""",
                evidence="ranking-held",
                finding="each version's own top 10% by score churns about as often as the first "
                "version's, while the flagged share of the newest moved far from 10%: the model "
                "ranks as before, the cut-off no longer fits its scores",
                found=_ranking_held,
            ),
            Step(
                question="What threshold did the servers load with each version, against that "
                "version's own scores?",
                sql="""
                    WITH loaded AS (
                        SELECT json_extract_string(attrs, '$.model_version') AS model_version,
                               min(ts) AS loaded_at,
                               max(json_extract(attrs, '$.threshold')::DOUBLE) AS loaded_threshold
                        FROM telemetry.logs
                        WHERE service = 'model-server' AND event = 'model_loaded'
                        GROUP BY 1
                    ), scores AS (
                        SELECT model_version,
                               round(quantile_cont(score, 0.9), 5) AS score_p90,
                               round(avg(decision::INT), 4) AS flagged_share
                        FROM serving.predictions WHERE source = 'batch' GROUP BY 1
                    )
                    SELECT l.model_version, l.loaded_at, l.loaded_threshold, s.score_p90,
                           s.flagged_share
                    FROM loaded l JOIN scores s USING (model_version)
                    ORDER BY l.loaded_at""",
                evidence="model-loaded",
                finding=(
                    "the routine retrain a week before onset was loaded with a threshold at its "
                    "own 90th percentile; "
                    if self._routine_day is not None
                    else ""
                )
                + "the newest version was loaded with exactly the previous version's threshold, "
                "far from its own 90th percentile",
                found=_kept_previous_threshold,
            ),
        ]

    def _offers_step(self) -> Step:
        return Step(
            question="Did the retention team's volume change?",
            sql="""
                SELECT model_version, count(DISTINCT offered_at::DATE) AS days,
                       round(count(*) / count(DISTINCT offered_at::DATE), 1) AS offers_per_day
                FROM crm.retention_offers GROUP BY 1 ORDER BY 1""",
            evidence="offers",
            finding="offers per day under the new version are a fraction (or a multiple) of "
            "the old version's; the day-1 and day-31 bursts are the 30-day offer cycle, and "
            "the control shows the same bursts",
            found=lambda f: (
                f.height >= 2
                and abs(f["offers_per_day"][-1] / f["offers_per_day"][0] - 1) >= OFFERS_CHANGE
            ),
        )

    def verify(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> list[Check]:
        onset = calendar.midnight(self.params.onset_day)
        share_before, share_after = con.execute(
            """
            SELECT avg(decision::INT) FILTER (WHERE request_ts < $onset),
                   avg(decision::INT) FILTER (WHERE request_ts >= $onset)
            FROM serving.predictions WHERE source = 'batch'
            """,
            {"onset": onset},
        ).fetchall()[0]
        low, high = TARGET_BAND
        checks = [
            Check(
                name="flagged share leaves the 10% budget at onset only",
                passed=share_before is not None
                and share_after is not None
                and low <= share_before <= high
                and abs(share_after - share_before) >= MIN_SHIFT
                and (share_after < share_before) == self.fewer,
                detail=f"flagged share {fmt(share_before, '.3f')} before onset (expected "
                f"{low}..{high}), {fmt(share_after, '.3f')} after (expected "
                f"{'below' if self.fewer else 'above'} it by at least {MIN_SHIFT})",
            )
        ]
        before, after = versions_around(con, calendar, self.params.onset_day)
        # The threshold the servers had the day before onset (an earlier release may have
        # served with another one).
        eve = calendar.date(self.params.onset_day - 1)
        old_thresholds = {t for t, _ in served_versions(con, eve, eve).values()}
        new_versions = sorted(set(after) - set(before))
        checks.append(
            Check(
                name="the new version is served with the previous threshold",
                passed=bool(new_versions)
                and len(old_thresholds) == 1
                and all(after[v][0] in old_thresholds for v in new_versions),
                detail=f"before onset {_versions(before)}; the day before onset at "
                f"{sorted(old_thresholds) or 'none'}; after {_versions(after)}",
            )
        )
        p90, threshold = con.execute(
            """
            SELECT quantile_cont(score, 1 - $share), any_value(threshold)
            FROM serving.predictions WHERE source = 'batch' AND request_ts >= $onset
            """,
            {"onset": onset, "share": FLAGGED_SHARE},
        ).fetchall()[0]
        gap = abs(p90 / threshold - 1) if p90 is not None and threshold else 0.0
        checks.append(
            Check(
                name="the served threshold no longer cuts at the 10% budget",
                passed=gap >= QUANTILE_GAP,
                detail=f"after onset the score flagging 10% is {fmt(p90, '.4f')}, the served "
                f"threshold {fmt(threshold, '.4f')} (relative gap {gap:.2f}, expected at least "
                f"{QUANTILE_GAP})",
            )
        )
        return checks


def expected_share(weight: float) -> float:
    """Roughly the share the previous threshold flags under the retrained model's scores."""
    weights, shares = zip(*MEASURED_SHARE, strict=True)
    return float(np.interp(weight, weights, shares))


def _stale(frame: pl.DataFrame) -> bool:
    """One shared threshold, and some version whose own 90th percentile is far from it."""
    thresholds = set(frame["min_threshold"].to_list()) | set(frame["max_threshold"].to_list())
    if len(thresholds) != 1:
        return False
    threshold = thresholds.pop()
    return bool(threshold) and any(
        abs(p / threshold - 1) >= QUANTILE_GAP for p in frame["score_p90"].to_list()
    )


def _ranking_held(frame: pl.DataFrame) -> bool:
    """The newest version's own top decile churns about as often as the first version's, while
    its flagged share moved away from the first version's."""
    rated = frame.drop_nulls("top_decile_churn_rate")
    if rated.height < 2:
        return False
    first, last = rated.row(0, named=True), rated.row(-1, named=True)
    return (
        num(last["top_decile_churn_rate"]) >= RANKING_HELD * num(first["top_decile_churn_rate"])
        and abs(num(last["flagged_share"]) - num(first["flagged_share"])) >= MIN_SHIFT
    )


def _kept_previous_threshold(frame: pl.DataFrame) -> bool:
    """The newest version was loaded with the threshold of the version before it, and that
    threshold is far from the newest version's own 90th-percentile score."""
    if frame.height < 2:
        return False
    previous, last = frame.row(-2, named=True), frame.row(-1, named=True)
    threshold = num(last["loaded_threshold"])
    return (
        bool(threshold)
        and threshold == num(previous["loaded_threshold"])
        and abs(num(last["score_p90"]) / threshold - 1) >= QUANTILE_GAP
    )


def _same_threshold_loaded(frame: pl.DataFrame) -> bool:
    loads = frame.filter(pl.col("event") == "model_loaded").with_columns(
        pl.col("attrs").str.json_path_match("$.threshold").alias("threshold"),
        pl.col("attrs").str.json_path_match("$.model_version").alias("version"),
    )
    return loads["version"].n_unique() >= 2 and loads["threshold"].n_unique() == 1


def _versions(versions: dict[str, tuple[float, int]]) -> str:
    return ", ".join(f"v{v} at threshold {t}" for v, (t, _) in sorted(versions.items())) or "none"
