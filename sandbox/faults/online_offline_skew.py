"""Training-serving skew: the online store computes one feature differently from the offline store.

Story: the platform team moves the online store from the nightly batch load onto a new streaming
pipeline ("feature-server 2.0"), shard by shard over about a week. The streaming job re-implements
the customer features, and one of them does not match the batch job that produced the training
data: sessions_trend loses its per-day normalisation and smoothing, tenure arrives in weeks, or
watch time is averaged over the days with a session instead of over seven days. Row counts, NULL
rates and freshness all match, so the parity check passes. The offline store and every training set
keep the batch definition; batch scoring and the online API read the streaming values, so the model
scores customers on a feature it never saw, and its scores move for every migrated customer.

Its trail by difficulty: guided names the move to the streaming pipeline and its parity check in
the changelog; standard logs a feature-server release in vague words; hard logs none of it, but
the feature server gets ordinary maintenance changes in the same weeks, so the skew is found only
by joining the served or online values to the offline store.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import duckdb
import numpy as np
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
    Rollout,
    Step,
    Symptom,
    Verdict,
    hook,
)
from sandbox.faults.toolkit import fmt, mean_score, num, routine_changes, served_mean, window
from sandbox.pipeline.features import MODEL_FEATURES
from sandbox.rng import stable_unit

MIN_SHIFT = 0.08  # |mean log score change| of migrated customers beyond everyone else's
TOLERANCE = 1e-3  # values are stored rounded to 4 decimals
RELEASE_HOUR = 16.0  # the day before onset: the feature server starts loading from the stream
MIN_MISMATCH = 0.001  # served and offline values of the same row agree exactly without the skew
# Tells: each alone would point at the cause at the tiers that hide it.
STANDARD_TELLS = ("streaming pipeline", "streaming job", "parity check", "nightly batch load")
HARD_TELLS = (*STANDARD_TELLS, "feature-server 2.0")


@dataclass(frozen=True)
class StreamingDefinition:
    """How the streaming job computes a feature: a Polars expression over the online row and the
    same in SQL (columns qualified by `{t}`), plus a sentence for the answer key."""

    expr: pl.Expr
    sql: str
    description: str


STREAMING: dict[str, StreamingDefinition] = {
    "sessions_trend": StreamingDefinition(
        pl.col("sessions_7d") / pl.max_horizontal(pl.col("sessions_28d"), pl.lit(1.0)),
        "{t}sessions_7d / greatest({t}sessions_28d, 1)",
        "sessions_7d / max(sessions_28d, 1), a ratio of counts without the per-day normalisation "
        "and the +0.1 smoothing of the batch job's (sessions_7d/7) / (sessions_28d/28 + 0.1), "
        "so values are about a quarter of what the model was trained on",
    ),
    "tenure_days": StreamingDefinition(
        (pl.col("tenure_days") / 7).floor(),
        "floor({t}tenure_days / 7)",
        "tenure in whole weeks instead of days, so every customer looks about seven times newer",
    ),
    "avg_daily_minutes_7d": StreamingDefinition(
        pl.col("avg_daily_minutes_7d")
        * 7
        / pl.min_horizontal(pl.col("sessions_7d"), 7 - pl.col("days_since_last_session")).clip(
            1, 7
        ),
        "{t}avg_daily_minutes_7d * 7 / least(greatest(least({t}sessions_7d, "
        "7 - {t}days_since_last_session), 1), 7)",
        "minutes per day with a session instead of per calendar day (the seven-day total divided "
        "by the days with viewing, not by 7), so occasional viewers look like heavy ones",
    ),
}
TargetFeature = Literal["sessions_trend", "tenure_days", "avg_daily_minutes_7d"]


class Params(FaultParams):
    target_feature: TargetFeature = Field(
        "sessions_trend",
        description="The feature the streaming pipeline computes differently from the batch job.",
    )
    rollout_share: float = Field(
        1.0,
        ge=0.1,
        le=1.0,
        description="Share of customers (stable per customer) the streaming path serves at full "
        "ramp; the ramp moves them over gradually.",
    )

    def share(self, day: int) -> float:
        """Share of customers served from the streaming path on `day`."""
        return self.rollout_share * self.intensity(day)


class OnlineOfflineSkew(Fault[Params]):
    id: ClassVar[str] = "online-offline-skew"
    actions: ClassVar[dict[str, Verdict]] = {
        "backfill-online-store": "mitigates",
        # Back past the migration: the online store is loaded by the nightly batch load again.
        "rollback-deploy": "mitigates",
        # Scores the same online store again: after a backfill it brings today's list in early,
        # alone it changes nothing.
        "rerun-batch-scoring": "no effect",
        "retrain": "harmful",
        "set-decision-threshold": "no effect",
        "set-imputation-fill": "no effect",
    }
    rollback_service: ClassVar[str] = "feature-server"
    title: ClassVar[str] = "Online store computes a feature differently from the training data"
    rating: ClassVar[Literal["easy", "medium", "hard"]] = "hard"
    observation: ClassVar[str] = (
        "The model's scores and flagged list shift after a platform migration while the feature "
        "store, the training data and the model's holdout metrics all look unchanged."
    )

    @property
    def definition(self) -> StreamingDefinition:
        return STREAMING[self.params.target_feature]

    def streaming_sql(self, table: str = "") -> str:
        """The streaming definition in SQL over columns of `table` (an alias, or none)."""
        return f"round({self.definition.sql.format(t=f'{table}.' if table else '')}, 4)"

    def on_new_path(self, customer_id: np.ndarray, day: int) -> np.ndarray:
        return stable_unit(customer_id, self.id) < self.params.share(day)

    def _migration_at(self, calendar: Calendar) -> dt.datetime:
        """When the feature server started loading the online store from the streaming job (the
        changelog's release, where the tier logs one): the evening before onset."""
        return calendar.at(self.params.onset_day - 1, RELEASE_HOUR)

    def rollouts(self, calendar: Calendar) -> list[Rollout]:
        """The migration is a feature-server release: rolling it back loads the online store
        with the nightly batch job again, the training data's definition."""
        return [Rollout("feature-server", self._migration_at(calendar), "streaming online loads")]

    @hook("materialize.online")
    def load_through_new_path(self, value: pl.DataFrame, ctx: HookContext) -> pl.DataFrame:
        if self.params.share(ctx.day) == 0 or value.height == 0:
            return value
        if not ctx.rolled_out(self._migration_at(ctx.calendar)):
            return value
        feature = self.params.target_feature
        migrated = pl.Series(self.on_new_path(value["customer_id"].to_numpy(), ctx.day))
        return value.with_columns(
            pl.when(migrated)
            .then(self.definition.expr.cast(pl.Float64).round(4))
            .otherwise(pl.col(feature))
            .alias(feature)
        )

    def tells(self, tier: Tier) -> tuple[str, ...]:
        return {"guided": (), "standard": STANDARD_TELLS, "hard": HARD_TELLS}[tier]

    def _changelog_title(self) -> str | None:
        return {
            "guided": "feature-server 2.0: online features from the streaming pipeline",
            "standard": "feature-server 2.0 release",
            "hard": None,
        }[self.tier]

    def changelog(self, calendar: Calendar) -> list[dict[str, Any]]:
        ramp = max(self.params.ramp_days, 1)
        if self.tier == "hard":
            return routine_changes(__name__, self.params.onset_day)
        if self.tier == "standard":
            return [
                {
                    "day": self.params.onset_day - 1,
                    "hour": RELEASE_HOUR,
                    "kind": "deploy",
                    "service": "feature-server",
                    "title": self._changelog_title(),
                    "body": f"Rolled out shard by shard over about {ramp} days.",
                    "author": "data-platform",
                },
            ]
        scope = (
            "all customer shards"
            if self.params.rollout_share >= 1.0
            else f"about {round(self.params.rollout_share * 100)}% of customer shards"
        )
        return [
            {
                "day": self.params.onset_day - 1,
                "hour": RELEASE_HOUR,
                "kind": "deploy",
                "service": "feature-server",
                "title": self._changelog_title(),
                "body": "The online store is now loaded by the streaming job instead of the "
                f"nightly batch load; {scope} move over in about {ramp} days. Parity check on row "
                "counts, NULL rates and freshness passed.",
                "author": "data-platform",
            },
        ]

    def _changelog_evidence(self, calendar: Calendar) -> list[Evidence]:
        title = self._changelog_title()
        if title is None:
            return []
        w = window(calendar, self.params.onset_day)
        return [
            w.changelog(
                "migration",
                title,
                "the deploy that moved the online store to the streaming job",
                start=w.start - dt.timedelta(days=1),
            )
        ]

    def symptoms(self, calendar: Calendar) -> list[Symptom]:
        return [served_mean(self.params.target_feature), mean_score()]

    def answer_key(self, calendar: Calendar) -> AnswerKey:
        w = window(calendar, self.params.onset_day)
        start = w.start
        feature = self.params.target_feature
        pct = round(self.params.rollout_share * 100)
        last = calendar.date(calendar.last_production_day)
        return AnswerKey(
            fault_id=self.id,
            title=self.title,
            root_cause=(
                f"From {start} the online store is filled by a new streaming pipeline "
                f"(feature-server 2.0) for a growing share of customers, reaching {pct}% "
                f"{self.params.ramp_days} days later. Its implementation of {feature} differs "
                f"from the batch feature job that fills the offline store: it computes "
                f"{self.definition.description}. The offline store and the training sets keep "
                "the batch definition, so the model was trained on one feature and is served "
                "another: batch scoring and online requests read the streaming value, scores move "
                "for every migrated customer and the flagged list changes composition. Row counts, "
                "NULL rates and freshness match, so nothing alerts."
            ),
            propagation=[
                f"deploy: feature-server 2.0 moves customers to the streaming path (~{pct}% at "
                "full ramp)",
                f"online store: {feature} computed by the streaming definition, not the batch one",
                "offline store and training sets: unchanged (the batch definition)",
                f"serving: batch scoring and online requests score the streaming {feature}; "
                "scores shift for migrated customers",
                "business: the flagged list fills with the wrong customers; retention misses "
                "at-risk ones",
                "labels (14 days later): production AUC and precision slip while holdout holds",
            ],
            evidence=[
                w.column(
                    "served-vs-offline",
                    f"serving.predictions.{feature}",
                    f"served {feature} differs from the offline row of the same "
                    "customer and feature date for migrated customers",
                ),
                w.column(
                    "online-vs-offline",
                    f"feature_store.customer_features_online.{feature}",
                    f"the online row's {feature} differs from the offline row with "
                    "the same event_timestamp",
                    start=last,
                    end=last,
                ),
                w.column(
                    "offline-unchanged",
                    f"feature_store.customer_features.{feature}",
                    "the offline store (and training) keeps the batch definition; "
                    "its feature_mean shows no change",
                ),
                w.metric(
                    "score-shift",
                    "score_p50",
                    "batch-scoring score quantiles move with the migration while the "
                    "offline feature means stay flat",
                ),
                w.log(
                    "flagged-count",
                    r'"flagged": \d+',
                    "batch_finished lines: the number flagged each day moves with the migration",
                ),
                *self._changelog_evidence(calendar),
            ],
            acceptable_fixes=[
                "Roll the online store back to the batch load (or pin the old path) until the "
                "streaming job matches; re-score the affected customers.",
                f"Fix the streaming implementation of {feature} to the batch definition, ideally "
                "one shared feature definition used by both paths, and backfill the online store.",
                "Add a parity check that compares values, not only counts and NULL rates: log "
                "served features and compare them daily to the offline row for the same customer "
                "and feature date, alerting on any mismatch.",
                "Do not retrain on served features to paper over it: fix the definition.",
            ],
            probes=[
                "How did you rule out real drift in customer behaviour?",
                "Why did the migration's parity check not catch it? What would you compare?",
                "Which customers are affected, and how would you size the business impact?",
                "What experiment would you run next to confirm the cause before rolling back?",
                "Would retraining on the current data help? On which store's data?",
            ],
        )

    def _join_sql(self) -> str:
        feature = self.params.target_feature
        return f"""
            SELECT p.request_ts::DATE AS score_date, p.customer_id,
                   p.{feature} AS served, o.{feature} AS offline,
                   {self.streaming_sql("o")} AS streaming
            FROM serving.predictions p
            JOIN feature_store.customer_features o
              ON o.customer_id = p.customer_id
             AND o.event_timestamp = p.request_ts::DATE::TIMESTAMP
            WHERE p.source = 'batch'"""

    def investigation(self, calendar: Calendar) -> list[Step]:
        feature = self.params.target_feature
        others = " OR ".join(
            f"abs(p.{c} - o.{c}) > {TOLERANCE}" for c in MODEL_FEATURES if c != feature
        )
        return [
            Step(
                question="Do the features the model was served match the feature store for the "
                "same customer and feature date?",
                sql=f"""
                    SELECT date_trunc('week', p.request_ts) AS week,
                           round(avg((abs(p.{feature} - o.{feature}) > {TOLERANCE})::INT), 3)
                               AS {feature}_mismatch,
                           round(avg(({others})::INT), 3) AS other_features_mismatch
                    FROM serving.predictions p
                    JOIN feature_store.customer_features o
                      ON o.customer_id = p.customer_id
                     AND o.event_timestamp = p.request_ts::DATE::TIMESTAMP
                    WHERE p.source = 'batch' GROUP BY 1 ORDER BY 1""",
                evidence="served-vs-offline",
                finding=f"served {feature} stops matching the offline value for a growing share "
                "of customers from the migration on; the other features still match",
                found=lambda f: num(f[f"{feature}_mismatch"].max()) >= MIN_MISMATCH,
            ),
            Step(
                question="Does the online store itself disagree with the offline store?",
                sql=f"""
                    SELECT count(*) AS n,
                           round(avg((abs(n.{feature} - o.{feature}) > {TOLERANCE})::INT), 3)
                               AS mismatch_share,
                           round(avg(n.{feature}), 3) AS online_mean,
                           round(avg(o.{feature}), 3) AS offline_mean
                    FROM feature_store.customer_features_online n
                    JOIN feature_store.customer_features o
                      ON o.customer_id = n.customer_id AND o.event_timestamp = n.event_timestamp""",
                evidence="online-vs-offline",
                finding="the online rows carry a different value for the same event_timestamp",
                found=lambda f: (f["mismatch_share"][0] or 0.0) >= MIN_MISMATCH,
            ),
            self._third_step(feature),
            Step(
                question="How do the served values relate to the offline ones?",
                sql=f"""
                    WITH j AS ({self._join_sql()})
                    SELECT count(*) AS mismatched,
                           round(avg((abs(served - streaming) <= {TOLERANCE})::INT), 3)
                               AS matches_alternative,
                           round(median(served / nullif(offline, 0)), 3) AS median_ratio
                    FROM j WHERE abs(served - offline) > {TOLERANCE}""",
                evidence="served-vs-offline",
                finding=f"the mismatched values follow one formula: {self.definition.description}",
                found=lambda f: f["mismatched"][0] > 0 and f["matches_alternative"][0] >= 0.9,
            ),
        ]

    def _third_step(self, feature: str) -> Step:
        """Below hard the changelog names the release; at hard only the weekly means tell the
        feature the model is served from the one it was trained on."""
        if self.tier != "hard":
            return Step(
                question="What changed in how the online store is loaded?",
                sql="""
                    SELECT ts, service, title, body FROM ops.changelog
                    WHERE service ILIKE '%feature%' OR title ILIKE '%online%'
                       OR title ILIKE '%stream%' ORDER BY ts""",
                evidence="migration",
                finding="feature-server 2.0 moved the online store onto the streaming pipeline"
                if self.tier == "guided"
                else "a feature-server 2.0 release went out shard by shard just before onset",
                found=lambda f: f.filter(pl.col("title") == self._changelog_title()).height == 1,
            )
        return Step(
            question="Did the offline values move with the scores, or only the served ones?",
            sql=f"""
                SELECT date_trunc('week', p.request_ts) AS week,
                       round(avg(p.{feature}), 4) AS served_mean,
                       round(avg(o.{feature}), 4) AS offline_mean
                FROM serving.predictions p
                JOIN feature_store.customer_features o
                  ON o.customer_id = p.customer_id
                 AND o.event_timestamp = p.request_ts::DATE::TIMESTAMP
                WHERE p.source = 'batch' GROUP BY 1 ORDER BY 1""",
            evidence="offline-unchanged",
            finding="served and offline means agree in the first weeks; from the migration on the "
            "served mean departs while the offline one holds, so the maintenance changes in the "
            "changelog do not explain it and the model is served values it was not trained on",
            found=lambda f: (
                f.height > 1
                and _departure(f.row(0, named=True)) <= 0.01
                and max(_departure(r) for r in f.iter_rows(named=True)) >= 0.05
            ),
        )

    def verify(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> list[Check]:
        p = self.params
        feature = p.target_feature
        onset = calendar.date(p.onset_day)
        daily = con.sql(
            f"""
            WITH j AS ({self._join_sql()})
            SELECT datediff('day', $first, score_date) + 1 AS day, count(*) AS n,
                   sum((abs(served - offline) > {TOLERANCE})::INT) AS mismatched,
                   sum((abs(served - offline) > {TOLERANCE}
                        AND abs(served - streaming) <= {TOLERANCE})::INT) AS streaming
            FROM j WHERE abs(streaming - offline) > {TOLERANCE}
            GROUP BY 1
            """,
            params={"first": calendar.date(1)},
        ).pl()
        pre = daily.filter(pl.col("day") < p.onset_day)
        post = daily.filter(pl.col("day") >= p.onset_day)
        before = _share(pre["mismatched"].sum(), pre["n"].sum())
        after = _share(post["mismatched"].sum(), post["n"].sum())
        n_after = int(post["n"].sum())
        # The share expected on the streaming path, weighted over the visible days after onset
        # (the ramp may still be running at the end of the window).
        expected = _share(
            sum(n * p.share(d) for d, n in post.select("day", "n").iter_rows()), n_after
        )
        floor = _floor(expected, n_after)
        streaming_after = _share(post["streaming"].sum(), post["mismatched"].sum())
        checks = [
            Check(
                name="served feature differs from the offline store after onset only",
                passed=(before is None or before <= 0.01)
                and after is not None
                and n_after >= 100
                and after >= floor,
                detail=f"batch predictions whose {feature} differs from the offline row of the "
                f"same customer and date (where the definitions disagree): "
                f"{fmt(before, '.3f')} before onset, {fmt(after, '.3f')} over {n_after} rows "
                f"from {onset} (rollout share over those rows {fmt(expected, '.3f')}; expected "
                f"<= 0.01 then >= {floor:.3f}); {fmt(streaming_after, '.3f')} of the mismatches "
                "equal the streaming definition",
            )
        ]
        online_share, n_online = con.execute(
            f"""
            SELECT avg((abs(n.{feature} - o.{feature}) > {TOLERANCE})::INT), count(*)
            FROM feature_store.customer_features_online n
            JOIN feature_store.customer_features o
              ON o.customer_id = n.customer_id AND o.event_timestamp = n.event_timestamp
            WHERE abs({self.streaming_sql("o")} - o.{feature}) > {TOLERANCE}
            """
        ).fetchall()[0]
        online_floor = _floor(p.share(calendar.last_production_day), n_online)
        checks.append(
            Check(
                name="online store disagrees with the offline store",
                passed=online_share is not None
                and n_online >= 100
                and online_share >= online_floor,
                detail=f"{fmt(online_share, '.3f')} of {n_online} online rows differ from the "
                f"offline row with the same event_timestamp (expected >= {online_floor:.3f})",
            )
        )
        checks.append(self._score_shift(con, calendar))
        return checks

    def _score_shift(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> Check:
        """Customers' log score change on the day they move to the streaming path, against
        everyone else's day-to-day change on the batch path (a difference in differences)."""
        scores = con.sql(
            """
            SELECT customer_id, datediff('day', $first, request_ts::DATE) + 1 AS day,
                   ln(greatest(score, 1e-6)) AS log_score
            FROM serving.predictions WHERE source = 'batch'
            """,
            params={"first": calendar.date(1)},
        ).pl()
        days = np.arange(0, calendar.last_visible_day + 2)
        shares = np.array([self.params.share(int(d)) for d in days])
        ids = scores["customer_id"].to_numpy()
        day = scores["day"].to_numpy()
        unit = stable_unit(ids, self.id)
        moves = (
            scores.with_columns(
                pl.Series("now", unit < shares[day]),
                pl.Series("before", unit < shares[day - 1]),
            )
            .sort("customer_id", "day")
            .with_columns(
                (pl.col("log_score") - pl.col("log_score").shift(1).over("customer_id")).alias(
                    "change"
                ),
                (pl.col("day") - pl.col("day").shift(1).over("customer_id")).alias("gap"),
            )
            .filter((pl.col("gap") == 1) & ~pl.col("before"))
            .group_by("now")
            .agg(pl.len().alias("n"), pl.col("change").mean().alias("mean_change"))
        )
        by = {row["now"]: (row["n"], row["mean_change"]) for row in moves.iter_rows(named=True)}
        n_moved, moved = by.get(True, (0, None))
        n_stayed, stayed = by.get(False, (0, None))
        if n_moved == 0:
            return Check(
                name="scores move for customers when they are migrated",
                outcome="not measurable",
                detail="no customer moves to the streaming path between two visible batch days "
                "(migration complete on the first production day); nothing to compare",
            )
        shift = moved - stayed if stayed is not None else None
        return Check(
            name="scores move for customers when they are migrated",
            passed=n_moved >= 100 and shift is not None and abs(shift) >= MIN_SHIFT,
            detail=f"mean day-over-day log score change: {fmt(moved, '.3f')} for {n_moved} "
            f"customers on the day they move to the streaming path, {fmt(stayed, '.3f')} for "
            f"{n_stayed} customer-days on the batch path (expected a difference of at least "
            f"{MIN_SHIFT})",
        )


def _departure(row: dict[str, Any]) -> float:
    """How far a week's served mean is from its offline mean, relative to the offline one."""
    served, offline = num(row["served_mean"]), num(row["offline_mean"])
    return abs(served / offline - 1) if offline else float("inf")


def _share(part: float, whole: float) -> float | None:
    return float(part) / float(whole) if whole else None


def _floor(expected: float | None, n: int) -> float:
    """Lowest share that still shows the rollout: 80% of the expected share, or four binomial
    standard errors below it when few rows carry it, but never less than one row."""
    if not expected or not n:
        return 1.0
    sampling = expected - 4 * (expected * (1 - expected) / n) ** 0.5
    return max(min(0.8 * expected, sampling), 0.5 / n)
