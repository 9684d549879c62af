"""A feature that was 99% populated goes ~60% populated; the gaps are filled with a wrong mean.

Story: a player SDK rollout stops sending watch time for a growing part of the fleet, so the
watch-time column arrives NULL. The feature job imputes NULLs with the policy's column mean, and the
policy was refreshed the same week from an extract of heavy viewers, so the fill value is far too
high. The offline and online stores show no NULLs at all; the model sees a large group of
customers who all look like steady viewers, and stops flagging the ones who are drifting away.

Its trail by difficulty: guided names the rollout's telemetry change and the imputation refresh in
the changelog; standard logs the same two changes in vague words; hard logs neither, but other app
releases around the onset, and an earlier, correct refresh of the same fill values, so the wrong
fill is found only by joining the served values to the policy.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any, ClassVar, Literal

import duckdb
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
from sandbox.faults.measure import score_over_churn
from sandbox.faults.toolkit import fmt, mean_score, num, routine_changes, served_mean, window
from sandbox.pipeline.features import FEATURES, IMPUTED_FEATURES
from sandbox.rng import stable_unit

# Imputed customers' score/churn ratio, relative to everyone else's, counts as mis-scored beyond
# this factor either way: a fill that is too high on a feature where more means healthier makes
# them look safe; a fill that is too low makes them look at risk.
MISSCORED = 0.75
# At hard, a routine refresh some days before onset recomputes the fill values correctly: they
# move by a few percent, as a fresh extract of the whole base moves them.
ROUTINE_REFRESH_DAYS_BEFORE = 8
ROUTINE_REFRESH_FACTOR = 1.04
# Tells: each alone would point at the cause at the tiers that hide it.
STANDARD_TELLS = (
    "imputation defaults refreshed",
    "telemetry batching",
    "engagement extract",
    "Null rate before imputation",
    "null before imputation",
)
HARD_TELLS = (*STANDARD_TELLS, "SDK 7.2", "imputation defaults", "config sync")


class Params(FaultParams):
    target_feature: Literal[IMPUTED_FEATURES] = Field(  # type: ignore[valid-type]
        "avg_daily_minutes_7d",
        description="Imputed feature whose source column goes NULL; every feature fed by that "
        "column gets a wrong fill value.",
    )
    null_share: float = Field(
        0.4,
        ge=0.05,
        le=0.9,
        description="Share of customers whose source value is NULL at full ramp.",
    )
    fill_multiplier: float = Field(
        2.5, ge=0.1, le=10.0, description="The wrong fill value as a multiple of the true mean."
    )

    @field_validator("fill_multiplier")
    @classmethod
    def _must_be_wrong(cls, v: float) -> float:
        if abs(v - 1.0) < 0.2:
            raise ValueError("must differ from 1 by at least 0.2, or the mean is not wrong")
        return v


class FeatureNullsWrongMean(Fault[Params]):
    id: ClassVar[str] = "feature-nulls-wrong-mean"
    actions: ClassVar[dict[str, Verdict]] = {
        "set-imputation-fill": "mitigates",
        "backfill-online-store": "no effect",
        "retrain": "harmful",
        # The wrong fill makes drifting customers look safe, so the flagged list shrinks; a
        # threshold that brings it back to size hides that while they stay mis-scored.
        "set-decision-threshold": "harmful",
        "rollback-deploy": "no effect",
        "pin-served-version": "no effect",
    }
    title: ClassVar[str] = "Feature goes 40% null and is imputed with a wrong mean"
    rating: ClassVar[Literal["easy", "medium", "hard"]] = "medium"
    observation: ClassVar[str] = (
        "Production AUC and retention precision slide while holdout metrics, NULL counts in the "
        "feature store and the serving error rate all look normal."
    )

    @property
    def source_column(self) -> str:
        return FEATURES[self.params.target_feature].source.split(".")[-1]

    def _share(self, day: int) -> float:
        return self.params.null_share * self.params.intensity(day)

    @hook("ingest.activity")
    def drop_values(self, activity: pl.DataFrame, ctx: HookContext) -> pl.DataFrame:
        share = self._share(ctx.day)
        if share == 0:
            return activity
        affected = stable_unit(activity["customer_id"].to_numpy(), self.id) < share
        return activity.with_columns(
            pl.when(pl.Series(affected))
            .then(None)
            .otherwise(pl.col(self.source_column))
            .alias(self.source_column)
        )

    def _fed(self, features: Iterable[str]) -> list[str]:
        """Of `features`, those whose fill value the refresh recomputes: every one fed by the
        same source column."""
        source = FEATURES[self.params.target_feature].source
        return [name for name in features if FEATURES[name].source == source]

    def acts_when(self) -> dict[str, dict[str, list[Any]]]:
        return {"set-imputation-fill": {"feature": self._fed(IMPUTED_FEATURES)}}

    @hook("features.imputation")
    def refresh_fill_values(self, fills: dict[str, float], ctx: HookContext) -> dict[str, float]:
        fed = self._fed(fills)
        if self._share(ctx.day) > 0:
            factor = self.params.fill_multiplier
        elif self.tier == "hard" and ctx.day >= self._routine_refresh_day:
            factor = ROUTINE_REFRESH_FACTOR
        else:
            return fills
        return {**fills, **{name: round(fills[name] * factor, 4) for name in fed}}

    @property
    def _routine_refresh_day(self) -> int:
        return self.params.onset_day - ROUTINE_REFRESH_DAYS_BEFORE

    def tells(self, tier: Tier) -> tuple[str, ...]:
        return {"guided": (), "standard": STANDARD_TELLS, "hard": HARD_TELLS}[tier]

    def _titles(self) -> tuple[str | None, str | None]:
        """The changelog titles of the rollout and of the refresh at this tier (None: absent)."""
        return {
            "guided": (
                "player SDK 7.2 staged rollout",
                "feature store: imputation defaults refreshed",
            ),
            "standard": ("player SDK 7.2 staged rollout", "feature-job: config sync"),
            "hard": (None, None),
        }[self.tier]

    def changelog(self, calendar: Calendar) -> list[dict[str, Any]]:
        onset, days = self.params.onset_day, max(self.params.ramp_days, 1)
        rollout, refresh = self._titles()
        if self.tier == "hard":
            return routine_changes(__name__, onset)
        bodies = {
            "guided": (
                f"New playback telemetry batching; rollout over about {days} days.",
                "Fill values recomputed from the latest engagement extract.",
            ),
            "standard": (
                f"Rollout over about {days} days.",
                "Job settings synced from the data-platform repository.",
            ),
        }[self.tier]
        return [
            {
                "day": onset - 1,
                "hour": 10.0,
                "kind": "upstream",
                "service": "mobile-apps",
                "title": rollout,
                "body": bodies[0],
                "author": "apps-team",
            },
            {
                "day": onset,
                "hour": 15.0,
                "kind": "config",
                "service": "feature-job",
                "title": refresh,
                "body": bodies[1],
                "author": "data-platform",
            },
        ]

    def symptoms(self, calendar: Calendar) -> list[Symptom]:
        return [served_mean(self.params.target_feature), mean_score()]

    def answer_key(self, calendar: Calendar) -> AnswerKey:
        w = window(calendar, self.params.onset_day)
        start = w.start
        feature, column = self.params.target_feature, self.source_column
        pct = round(self.params.null_share * 100)
        return AnswerKey(
            fault_id=self.id,
            title=self.title,
            root_cause=(
                f"From {start} a player SDK rollout stops sending {column} for a growing share of "
                f"customers (about {pct}% at full rollout, reached {self.params.ramp_days} days "
                f"later), so raw.viewing_activity.{column} arrives NULL. The daily feature job "
                f"mean-imputes {feature}, and on the same day its fill value was refreshed to "
                f"{self.params.fill_multiplier}x the true mean. The stores hold no NULLs; a large "
                "block of customers carries one identical, too-high value, so the model reads them "
                "as engaged and misses the ones about to churn."
            ),
            propagation=[
                f"upstream: SDK rollout -> raw.viewing_activity.{column} NULL for ~{pct}% of customers",
                f"features: NULL {feature} -> imputed with a fill value {self.params.fill_multiplier}x "
                "the true mean (policy refreshed at onset)",
                "feature store: no NULLs visible; a spike of identical values at the fill value",
                "serving: the model scores imputed customers as engaged; fewer of them are flagged",
                "business: at-risk customers get no retention offer; churn rises",
                "labels (14 days later): production AUC and precision fall; holdout stays high",
            ],
            evidence=[
                w.column(
                    "raw-nulls",
                    f"raw.viewing_activity.{column}",
                    f"NULL share of {column} rises from ~1% to ~{pct}%",
                ),
                w.column(
                    "imputed-spike",
                    f"feature_store.customer_features.{feature}",
                    "a large share of rows hold exactly the fill value",
                ),
                w.column(
                    "policy-change",
                    "feature_store.imputation_policy.fill_value",
                    f"fill value for {feature} changed at onset",
                ),
                w.column(
                    "job-imputations",
                    "ops.feature_job_runs.nulls_imputed",
                    "imputed NULLs per run jump by an order of magnitude",
                ),
                w.metric(
                    "null-metric",
                    "feature_null_ratio",
                    f"feature_null_ratio for {feature} climbs with the rollout",
                ),
                w.log(
                    "job-log",
                    r"nulls_imputed",
                    "feature-job run_finished lines report many imputed NULLs",
                ),
                *self._changelog_evidence(calendar),
            ],
            acceptable_fixes=[
                "Fix or roll back the SDK telemetry so the column is populated again.",
                "Restore a correct fill value (training-time mean) or impute per segment; add a "
                "missing-indicator feature so the model can tell imputed from real values.",
                "Backfill the affected feature rows once the source is fixed; re-score affected "
                "customers and consider retention outreach for those missed.",
                "Alert on pre-imputation NULL ratio and on the share of rows equal to the fill value.",
            ],
            probes=[
                "How did you rule out ordinary drift or a model that needs retraining?",
                "Why did the NULL-rate alert not fire, and what threshold would you set?",
                "What would you ship first, and how would you know it worked?",
                "What is the next experiment you would run to size the business impact?",
                "Would retraining on the current data have helped or made it worse? Why?",
            ],
        )

    def _changelog_evidence(self, calendar: Calendar) -> list[Evidence]:
        w = window(calendar, self.params.onset_day)
        rollout, refresh = self._titles()
        evidence = []
        if rollout is not None:
            evidence.append(
                w.changelog(
                    "sdk-rollout",
                    rollout,
                    "the upstream change that stopped the telemetry",
                    start=w.start - dt.timedelta(days=1),
                )
            )
        if refresh is not None:
            evidence.append(
                w.changelog(
                    "imputation-refresh",
                    refresh,
                    "the config change that made the fill value wrong",
                )
            )
        return evidence

    def investigation(self, calendar: Calendar) -> list[Step]:
        column, feature = self.source_column, self.params.target_feature
        return [
            Step(
                question="Did the raw source column start arriving empty?",
                sql=f"""
                    SELECT date_trunc('week', activity_date) AS week,
                           round(avg(({column} IS NULL)::INT), 3) AS null_share
                    FROM raw.viewing_activity GROUP BY 1 ORDER BY 1""",
                evidence="raw-nulls",
                finding=f"the NULL share of {column} climbs from ~1% to the rollout share",
                found=lambda f: (
                    num(f["null_share"].max()) >= 0.5 * self.params.null_share
                    and num(f["null_share"].min()) <= 0.03
                ),
            ),
            Step(
                question="Why does the feature store show no NULLs? What does the job fill in?",
                sql=f"""
                    SELECT feature, fill_value, effective_from
                    FROM feature_store.imputation_policy
                    WHERE feature = '{feature}' ORDER BY effective_from""",
                evidence="policy-change",
                finding="the fill value changed at onset to a multiple of the old one",
                found=lambda f: (
                    f.height >= 2 and abs(f["fill_value"][-1] / f["fill_value"][0] - 1) >= 0.15
                ),
            ),
            Step(
                question="How many served rows carry exactly the fill value?",
                sql=f"""
                    WITH fill AS (SELECT fill_value FROM feature_store.imputation_policy
                                  WHERE feature = '{feature}'
                                  ORDER BY effective_from DESC LIMIT 1)
                    SELECT date_trunc('week', request_ts) AS week,
                           round(avg(({feature} = (SELECT fill_value FROM fill))::INT), 3)
                               AS share_at_fill
                    FROM serving.predictions WHERE source = 'batch' GROUP BY 1 ORDER BY 1""",
                evidence="imputed-spike",
                finding="a large share of scored customers hold the identical fill value",
                found=lambda f: num(f["share_at_fill"].max()) >= 0.5 * self.params.null_share,
            ),
            Step(
                question="Are the customers who were served the fill value scored too low?",
                sql=f"""
                    WITH fill AS (SELECT fill_value FROM feature_store.imputation_policy
                                  WHERE feature = '{feature}'
                                  ORDER BY effective_from DESC LIMIT 1)
                    SELECT p.{feature} = (SELECT fill_value FROM fill) AS imputed,
                           count(*) AS n, avg(p.score) AS mean_score,
                           avg(l.churned) AS churn_rate
                    FROM serving.predictions p JOIN labels.churn_labels l
                      ON l.customer_id = p.customer_id AND l.score_date = p.request_ts::DATE
                    WHERE p.source = 'batch' GROUP BY 1 ORDER BY 1""",
                evidence="imputed-spike",
                finding="imputed customers score far from their real churn rate (usually far lower)",
                found=lambda f: (
                    f.filter(pl.col("imputed")).height == 1
                    and _misscored(
                        score_over_churn(f, "imputed", True), score_over_churn(f, "imputed", False)
                    )
                ),
            ),
        ]

    def verify(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> list[Check]:
        onset = calendar.date(self.params.onset_day)
        full = calendar.date(self.params.onset_day + self.params.ramp_days)
        end = calendar.date(calendar.last_production_day)
        column, feature = self.source_column, self.params.target_feature
        before, after = con.execute(
            f"""
            SELECT avg(CASE WHEN activity_date < ? THEN ({column} IS NULL)::INT END),
                   avg(CASE WHEN activity_date BETWEEN ? AND ? THEN ({column} IS NULL)::INT END)
            FROM raw.viewing_activity
            """,
            [onset, full, end],
        ).fetchall()[0]
        checks = [
            Check(
                name="source column goes NULL after onset",
                passed=before <= 0.03 and after >= 0.6 * self.params.null_share,
                detail=f"NULL share of raw {column}: {before:.3f} before onset, {after:.3f} at full "
                f"ramp (expected <= 0.03 then >= {0.6 * self.params.null_share:.2f})",
            )
        ]
        fill_before, fill_after = con.execute(
            """
            SELECT min(fill_value) FILTER (WHERE effective_from < ?),
                   max(fill_value) FILTER (WHERE effective_from >= ?)
            FROM feature_store.imputation_policy WHERE feature = ?
            """,
            [onset, onset, feature],
        ).fetchall()[0]
        share_at_fill = (
            con.execute(
                f"""
            SELECT avg(({feature} = ?)::INT) FROM feature_store.customer_features
            WHERE event_timestamp::DATE BETWEEN ? AND ?
            """,
                [fill_after, full, end],
            ).fetchall()[0][0]
            if fill_after is not None
            else 0.0
        )
        checks.append(
            Check(
                name="stores carry a spike at a wrong fill value",
                passed=fill_after is not None and share_at_fill >= 0.5 * self.params.null_share,
                detail=f"fill value {fill_before} before onset, {fill_after} after; "
                f"{share_at_fill:.3f} of feature rows equal it at full ramp",
            )
        )
        # The mechanism, measured: customers served the wrong fill value look more (or less)
        # engaged than they are, so the model scores them far from their real churn rate.
        # (Overall AUC moves too, but week-to-week noise hides it in small worlds.)
        served = con.execute(
            f"""
            SELECT p.{feature} = $fill AS imputed, count(*) AS n, avg(p.score) AS mean_score,
                   avg(l.churned) AS churn_rate
            FROM serving.predictions p
            JOIN labels.churn_labels l
              ON l.customer_id = p.customer_id AND l.score_date = p.request_ts::DATE
            WHERE p.source = 'batch' AND p.request_ts::DATE BETWEEN $start AND $end
            GROUP BY 1
            """,
            {"fill": fill_after, "start": full, "end": end},
        ).fetchall()
        by_group = {
            imputed: (n, score / rate if rate else None) for imputed, n, score, rate in served
        }
        n_imputed, ratio = by_group.get(True, (0, None))
        _, ratio_other = by_group.get(False, (0, None))
        checks.append(
            Check(
                name="customers served the fill value are mis-scored",
                passed=fill_after is not None
                and n_imputed >= 1000
                and ratio is not None
                and ratio_other is not None
                and _misscored(ratio, ratio_other),
                detail=f"{n_imputed} predictions served the fill value after full ramp; mean score "
                f"over observed churn rate: {fmt(ratio)} for them, {fmt(ratio_other)} for the rest",
            )
        )
        return checks


def _misscored(ratio: float, ratio_other: float) -> bool:
    return ratio <= MISSCORED * ratio_other or ratio * MISSCORED >= ratio_other
