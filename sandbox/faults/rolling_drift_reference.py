"""The drift monitor compares each day with the last few days, so a slow creep is never flagged.

Story: the drift report against the training snapshot kept tripping on playback_errors_7d around
app releases, so the ML platform team switched its reference to a trailing window of the last few
days of served features "to cut alert noise". The same week, playback analytics starts moving its
heartbeat collector to a new pipeline shard by shard, and every migrated shard under-counts watch
time: raw.viewing_activity.minutes_watched falls by about a percent a day, compounding, while
people watch as much as before. The three watch-time features sink with it and the model, which
reads low watch time as disengagement, flags more and more loyal customers for retention offers.
Each day differs from the trailing window by only a day or two of creep, far under the drift test's
threshold, so the monitor reports nothing, although the served features end far below the
training reference it used to compare against.

Its trail by difficulty: guided names the trailing-window reference and the collector migration in
the changelog; standard logs the same two changes in vague words; hard logs neither, but ordinary
monitoring and playback-analytics changes around the onset, so the moving reference is found only
by reading the daily reports against the training reference and the served features.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar, Literal

import duckdb
import numpy as np
import polars as pl
from pydantic import Field, model_validator

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
from sandbox.faults.toolkit import fmt, num, routine_changes, window
from sandbox.pipeline.features import FEATURES, MODEL_FEATURES

SOURCE = "raw.viewing_activity.minutes_watched"
COLUMN = SOURCE.split(".")[-1]
CREPT = tuple(name for name, f in FEATURES.items() if f.source == SOURCE)
WATCHED = "avg_daily_minutes_7d"  # the crept feature that follows the source fastest
# A day differs from its trailing window by about decline * (window + 1) / 2. The drift test is a
# Wasserstein distance normed by the reference's standard deviation with threshold 0.1, and the
# tightest crept feature (minutes_per_session_28d) has mean/std ~2.5: 0.025 * 2.5 leaves room for
# sampling noise under 0.1.
MAX_LAG_SHIFT = 0.025
DRIFT_THRESHOLD = 0.1  # Evidently's default for the normed Wasserstein test
CHANGE_HOUR = 16.0
NATURAL_DRIFT = 0.01  # served watch time wanders about this much in a week without any creep
# Tells: each alone would point at the cause at the tiers that hide it.
STANDARD_TELLS = (
    "trailing",
    "reference =",
    "recent fleet",
    "collector migration",
    "heartbeat collector",
    "new collector",
)
HARD_TELLS = (*STANDARD_TELLS, "reference settings", "shard by shard", "collector")


class Params(FaultParams):
    ramp_days: int = Field(
        0,
        ge=0,
        le=21,
        description="Days over which the daily decline eases in to its full rate (0 = at once).",
    )
    daily_decline: float = Field(
        0.01,
        ge=0.003,
        le=0.025,
        description=f"Multiplicative fall of {SOURCE} per day from onset, compounding.",
    )
    window_days: int = Field(
        3,
        ge=1,
        le=14,
        description="Days of served features the drift reference covers (the previous N days).",
    )

    @model_validator(mode="after")
    def _creep_stays_under_the_window(self) -> Params:
        lag = self.daily_decline * (self.window_days + 1) / 2
        if lag > MAX_LAG_SHIFT:
            raise ValueError(
                f"daily_decline {self.daily_decline} with window_days {self.window_days} moves a "
                f"day {lag:.1%} away from its trailing window, which the drift test would flag; "
                f"keep daily_decline * (window_days + 1) / 2 <= {MAX_LAG_SHIFT}"
            )
        return self


class RollingDriftReference(Fault[Params]):
    id: ClassVar[str] = "rolling-drift-reference"
    actions: ClassVar[dict[str, Verdict]] = {
        "set-drift-reference-window": "mitigates",
        "pause-job": "no effect",
        "retrain": "harmful",
        "set-decision-threshold": "no effect",
        "set-imputation-fill": "no effect",
    }
    title: ClassVar[str] = "Drift reference switched to a trailing window hides a slow creep"
    rating: ClassVar[Literal["easy", "medium", "hard"]] = "hard"
    observation: ClassVar[str] = (
        "More customers are flagged for retention every week and watch time keeps falling, yet "
        "the drift monitor's daily rows flag no feature."
    )

    # -- the creep ------------------------------------------------------------------------------
    def factor(self, day: int) -> float:
        """What the source reports on `day`, as a share of what was watched."""
        p = self.params
        rates = [p.daily_decline * p.intensity(t) for t in range(p.onset_day, day + 1)]
        return float(np.prod(1 - np.array(rates))) if rates else 1.0

    def served_factor(self, day: int) -> float:
        """Expected share left of the 7-day watch-time feature scored on `day` (raw days
        day-7..day-1)."""
        return float(np.mean([self.factor(t) for t in range(day - 7, day)]))

    # -- hooks ------------------------------------------------------------------------------------
    @hook("ingest.activity")
    def creep(self, activity: pl.DataFrame, ctx: HookContext) -> pl.DataFrame:
        if ctx.day < self.params.onset_day:
            return activity
        return activity.with_columns((pl.col(COLUMN) * self.factor(ctx.day)).round(1))

    @hook("monitor.drift_reference")
    def trailing_window(
        self, reference: pl.DataFrame | None, ctx: HookContext
    ) -> pl.DataFrame | None:
        """The batch-served features of the previous `window_days` days, as logged."""
        if ctx.day < self.params.onset_day:
            return reference
        window = ctx.data.sql(
            f"""
            SELECT {", ".join(MODEL_FEATURES)} FROM serving.predictions
            WHERE source = 'batch' AND request_ts >= $start AND request_ts < $end
            ORDER BY request_ts, prediction_id
            """,
            {
                "start": ctx.calendar.midnight(ctx.day - self.params.window_days),
                "end": ctx.calendar.midnight(ctx.day),
            },
        )
        return window if window.height else reference

    # -- story ------------------------------------------------------------------------------------
    def tells(self, tier: Tier) -> tuple[str, ...]:
        return {"guided": (), "standard": STANDARD_TELLS, "hard": HARD_TELLS}[tier]

    def _titles(self) -> tuple[str | None, str | None]:
        """The changelog titles of the upstream migration and of the reference change at this
        tier (None: absent)."""
        return {
            "guided": (
                "playback analytics: heartbeat collector migration, shard by shard",
                f"drift monitor: reference = trailing {self.params.window_days} day(s) of served "
                "features",
            ),
            "standard": (
                "playback analytics: pipeline maintenance, shard by shard",
                "drift monitor: reference settings updated",
            ),
            "hard": (None, None),
        }[self.tier]

    def changelog(self, calendar: Calendar) -> list[dict[str, Any]]:
        onset = self.params.onset_day
        if self.tier == "hard":
            return routine_changes(__name__, onset)
        upstream, config = self._titles()
        bodies = {
            "guided": (
                "Watch-time events move to the new collector over the coming weeks; same schema, "
                "same tables.",
                "Against the training snapshot, playback_errors_7d sits near the drift threshold "
                "around every app release. Comparing with the recent fleet tracks seasonality and "
                "cuts the noise; first report on the new reference tomorrow.",
            ),
            "standard": (
                "Over the coming weeks; same schema, same tables.",
                "Fewer false alarms around app releases; first report on the new settings "
                "tomorrow.",
            ),
        }[self.tier]
        return [
            {
                "day": onset - 1,
                "hour": 11.0,
                "kind": "upstream",
                "service": "playback-analytics",
                "title": upstream,
                "body": bodies[0],
                "author": "analytics-eng",
            },
            {
                "day": onset,
                "hour": CHANGE_HOUR,
                "kind": "config",
                "service": "monitoring",
                "title": config,
                "body": bodies[1],
                "author": "ml-platform",
            },
        ]

    def _changelog_evidence(self, calendar: Calendar) -> list[Evidence]:
        w = window(calendar, self.params.onset_day)
        upstream, config = self._titles()
        evidence = []
        if config is not None:
            evidence.append(
                w.changelog(
                    "reference-config",
                    config,
                    "the monitoring change that made the creep invisible",
                )
            )
        if upstream is not None:
            evidence.append(
                w.changelog(
                    "collector-migration",
                    upstream,
                    "the upstream change behind the creep",
                    start=w.start - dt.timedelta(days=1),
                )
            )
        return evidence

    def acts_when(self) -> dict[str, dict[str, list[Any]]]:
        # A trailing window of any length moves with the creep; a fixed one does not.
        return {"set-drift-reference-window": {"fixed": [True]}}

    def symptoms(self, calendar: Calendar) -> list[Symptom]:
        reports = {
            "source": "monitoring.drift_feature_daily",
            "time": "report_date",
            "where": f"feature = '{WATCHED}'",
            "own": None,
            "rows": "daily drift reports",
        }
        return [
            Symptom(
                id="reference_mean",
                title=f"Drift monitor's reference mean of {WATCHED}",
                value="avg(reference_mean)",
                **reports,
            ),
            Symptom(
                id="drift_score",
                title=f"Drift score of {WATCHED}",
                unit="p-value",
                value="avg(drift_score)",
                **reports,
            ),
        ]

    def answer_key(self, calendar: Calendar) -> AnswerKey:
        w = window(calendar, self.params.onset_day)
        start = w.start
        p = self.params
        weekly = 1 - (1 - p.daily_decline) ** 7
        last = calendar.last_production_day
        down = 1 - self.factor(last)
        served_down = 1 - self.served_factor(last)
        lag = p.daily_decline * (p.window_days + 1) / 2
        return AnswerKey(
            fault_id=self.id,
            title=self.title,
            root_cause=(
                f"On {start} the drift monitor's reference was switched from the training set to "
                f"the previous {p.window_days} day(s) of batch-served features. From the same day "
                f"a collector migration makes {SOURCE} under-report by {p.daily_decline:.1%} a "
                f"day, compounding ({weekly:.1%} a week; {down:.0%} down by {calendar.date(last)}"
                f"), while real viewing is unchanged. {', '.join(CREPT)} sink with it "
                f"({WATCHED} about {served_down:.0%} below its pre-onset level by the last "
                f"report), and the model flags ever more customers. Every day differs from its "
                f"trailing window by only ~{lag:.1%}, far below the drift threshold, so "
                "monitoring.drift_feature_daily flags nothing, although the served features are "
                "far below monitoring.drift_reference (the training reference)."
            ),
            propagation=[
                f"upstream: collector migration -> {SOURCE} falls {p.daily_decline:.1%}/day",
                f"features: {', '.join(CREPT)} decline with the source",
                "serving: the model reads low watch time as disengagement; positive rate and "
                "retention offers climb, precision falls",
                f"monitoring: each day is compared with the previous {p.window_days} day(s), "
                "which crept too; drift scores stay tiny, nothing is flagged",
                "reports: reference_mean in drift_feature_daily walks down with the data",
            ],
            evidence=[
                w.column(
                    "reference-moves",
                    "monitoring.drift_feature_daily.reference_mean",
                    "constant (the training mean) before onset, then changes every "
                    "day, following the served data down",
                    end=calendar.date(last),
                ),
                w.column(
                    "never-drifted",
                    "monitoring.drift_feature_daily.drifted",
                    "false every day for the watch-time features",
                    end=calendar.date(last),
                ),
                w.column(
                    "training-reference",
                    f"monitoring.drift_reference.{WATCHED}",
                    "the training reference mean, far above what is served",
                ),
                w.column(
                    "served-decline",
                    f"serving.predictions.{WATCHED}",
                    "served watch-time features fall week after week",
                ),
                w.column(
                    "source-decline", SOURCE, "minutes watched per active day falls from onset"
                ),
                w.metric(
                    "feature-mean-metric",
                    "feature_mean",
                    f"feature-job feature_mean for {WATCHED} slides steadily",
                ),
                w.metric(
                    "positive-rate",
                    "positive_rate",
                    "batch-scoring positive rate climbs week after week (more "
                    "customers flagged, lower precision) without reaching its alert band",
                ),
                *self._changelog_evidence(calendar),
            ],
            acceptable_fixes=[
                "Compare against a fixed reference (the training set of the serving model) as "
                "well as any rolling one; alert on either.",
                "Alert on cumulative change (served mean vs training mean, or a CUSUM on daily "
                "means) rather than only on day-to-day distance.",
                "Have the collector migration validated against the old pipeline (parallel run, "
                "watch time per session by shard); correct or backfill the under-counted minutes.",
                "Until the source is fixed, pause the watch-time features or retrain knowingly; "
                "review the retention offers sent to customers flagged on the creep.",
            ],
            probes=[
                "Why did the drift report show nothing? What is the reference each day?",
                "Is the watch-time decline real behaviour or measurement? How would you tell?",
                "What does a rolling reference catch well, and what does it miss?",
                "What would you alert on so a slow creep is flagged within a week?",
                "What experiment would you run next (e.g. compare minutes per session on migrated "
                "vs not-yet-migrated collector shards, or replay a day against both references)?",
            ],
        )

    # -- expected sizes ------------------------------------------------------------------------
    def _expected_drop(self, day: int) -> float:
        return 1 - self.served_factor(day)

    def _rolling_days(self, calendar: Calendar) -> list[int]:
        """Report days whose reference is the trailing window (at least one earlier batch day)."""
        return list(range(max(self.params.onset_day, 2), calendar.last_production_day + 1))

    def investigation(self, calendar: Calendar) -> list[Step]:
        start = calendar.date(self.params.onset_day)
        last = calendar.last_visible_day
        drop = self._expected_drop(last)
        features = ", ".join(f"'{c}'" for c in CREPT)
        return [
            Step(
                question="How do served watch-time features compare with the training reference?",
                sql=f"""
                    WITH ref AS (SELECT avg({WATCHED}) AS training_mean
                                 FROM monitoring.drift_reference)
                    SELECT request_ts::DATE AS day, round(avg({WATCHED}), 2) AS served_mean,
                           round(any_value(training_mean), 2) AS training_mean,
                           round(avg({WATCHED}) / any_value(training_mean), 3) AS ratio
                    FROM serving.predictions, ref WHERE source = 'batch'
                    GROUP BY 1 ORDER BY 1""",
                evidence="served-decline",
                finding="served watch time slides steadily below the training mean after onset",
                found=lambda f: (
                    (
                        f.filter(pl.col("day") < start).height > 0
                        and f.filter(pl.col("day") < start)["ratio"][-1] - f["ratio"][-1]
                        >= 0.5 * drop - NATURAL_DRIFT
                    )
                    or (
                        # onset on the first day: nothing served before it, compare with training
                        f.filter(pl.col("day") < start).height == 0
                        and 1 - f["ratio"][-1] >= 0.5 * drop - NATURAL_DRIFT
                    )
                ),
            ),
            Step(
                question="Did the drift monitor flag watch time, and against what reference?",
                sql=f"""
                    SELECT report_date, feature, reference_mean, current_mean, drift_score,
                           drifted
                    FROM monitoring.drift_feature_daily
                    WHERE feature IN ({features}) ORDER BY feature, report_date""",
                evidence="reference-moves",
                finding="never drifted; reference_mean is constant until onset and then walks "
                "down with the current mean",
                found=lambda f: (
                    f.filter(pl.col("report_date") >= start)["drifted"].sum() == 0
                    and f.filter(pl.col("feature") == WATCHED)["reference_mean"].n_unique() >= 2
                ),
            ),
            Step(
                question="Would the training reference have flagged it on the last report day?",
                sql=f"""
                    WITH ref AS ({_training_stats_sql()})
                    SELECT d.feature, d.reference_mean AS rolling_reference_mean, d.current_mean,
                           round(r.training_mean, 4) AS training_mean,
                           round(r.training_sd, 4) AS training_sd,
                           round(abs(d.current_mean - r.training_mean) / r.training_sd, 3)
                               AS shift_in_training_sd
                    FROM monitoring.drift_feature_daily d JOIN ref r USING (feature)
                    WHERE d.report_date = (SELECT max(report_date)
                                           FROM monitoring.drift_feature_daily)
                    ORDER BY d.feature""",
                evidence="training-reference",
                finding=f"the mean alone moved more than {DRIFT_THRESHOLD} training standard "
                "deviations, a lower bound of the normed Wasserstein score: the training "
                "reference would have flagged it",
                found=lambda f: (
                    f.height == len(CREPT)
                    and num(f["shift_in_training_sd"].max())
                    >= 0.5 * self._expected_normed_shift(calendar, f) - 0.02
                ),
            ),
            self._last_step(calendar),
        ]

    def _last_step(self, calendar: Calendar) -> Step:
        """Guided and standard: the changelog names the reference change. Hard: it does not, and
        the creep is traced to the source instead (watch time per session, sessions steady)."""
        start = calendar.date(self.params.onset_day)
        _, config = self._titles()
        if config is not None:
            return Step(
                question="What changed in monitoring and upstream around then?",
                sql=f"""
                    SELECT ts, kind, service, title, body FROM ops.changelog
                    WHERE ts >= DATE '{start}' - INTERVAL 3 DAY
                      AND ts < DATE '{start}' + INTERVAL 3 DAY
                    ORDER BY ts""",
                evidence="reference-config",
                finding="the drift reference changed on the day the creep began",
                found=lambda f: config in f["title"].to_list(),
            )
        last = calendar.last_visible_day
        # The last full week seen against the week before onset, in minutes per session.
        want = 1 - float(np.mean([self.factor(d) for d in range(last - 6, last + 1)]))
        return Step(
            question="Do customers watch less, or does the source report less per session?",
            sql=f"""
                SELECT activity_date >= DATE '{start}' AS after_onset,
                       activity_date > DATE '{calendar.date(last)}' - 7 AS last_week,
                       round(sum(sessions) / count(DISTINCT activity_date), 1)
                           AS sessions_per_day,
                       round(sum({COLUMN}) / sum(sessions), 3) AS minutes_per_session
                FROM raw.viewing_activity
                WHERE activity_date >= DATE '{start}' - 7
                GROUP BY 1, 2 ORDER BY 1, 2""",
            evidence="source-decline",
            finding="sessions hold steady while minutes per session fall week after week from "
            "onset: the source under-reports watch time",
            found=lambda f: _per_session_drop(f) >= 0.5 * want - NATURAL_DRIFT,
        )

    def _expected_normed_shift(self, calendar: Calendar, training: pl.DataFrame) -> float:
        """Expected |mean shift| / training sd of the 7-day feature on the last report day;
        `training` has feature, training_mean and training_sd."""
        row = training.filter(pl.col("feature") == WATCHED)
        if row.height == 0 or not row["training_sd"][0]:
            return 0.0
        ratio = row["training_mean"][0] / row["training_sd"][0]
        return self._expected_drop(calendar.last_production_day) * ratio

    def verify(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> list[Check]:
        p = self.params
        onset = calendar.date(p.onset_day)
        crept = list(CREPT)
        training = con.sql(_training_stats_sql()).pl()
        train_mean = dict(zip(training["feature"], training["training_mean"], strict=True))
        train_sd = dict(zip(training["feature"], training["training_sd"], strict=True))
        rows = con.sql(
            """
            SELECT report_date, feature, reference_mean, current_mean, drifted
            FROM monitoring.drift_feature_daily WHERE list_contains($features, feature)
            ORDER BY report_date
            """,
            params={"features": crept},
        ).pl()
        rolling_days = [calendar.date(d) for d in self._rolling_days(calendar)]
        served = con.sql(
            f"""
            SELECT request_ts::DATE AS day, {", ".join(f"avg({c}) AS {c}" for c in crept)}
            FROM serving.predictions WHERE source = 'batch' GROUP BY 1 ORDER BY 1
            """
        ).pl()
        by_day = {row["day"]: row for row in served.iter_rows(named=True)}

        # 1. The reference: the training mean before onset, the trailing window after.
        before = rows.filter(pl.col("report_date") < onset)
        before_off = [
            r
            for r in before.iter_rows(named=True)
            if abs(r["reference_mean"] - train_mean[r["feature"]])
            > 1e-4 * abs(train_mean[r["feature"]])
        ]
        after = rows.filter(pl.col("report_date").is_in(rolling_days))
        mismatched, moved = [], 0
        for r in after.iter_rows(named=True):
            window = [
                by_day[d][r["feature"]]
                for d in (
                    r["report_date"] - dt.timedelta(days=k) for k in range(1, p.window_days + 1)
                )
                if d in by_day
            ]
            rolling = float(np.mean(window)) if window else None
            if rolling is None or abs(r["reference_mean"] - rolling) > 0.02 * abs(rolling):
                mismatched.append(r)
            moved += abs(r["reference_mean"] - train_mean[r["feature"]]) > 1e-6
        checks = [
            Check(
                name="drift reference is the training set before onset, a trailing window after",
                passed=not before_off
                and after.height > 0
                and not mismatched
                and moved == after.height,
                detail=f"{before.height - len(before_off)}/{before.height} rows before onset at "
                f"the training mean; after it {after.height - len(mismatched)}/{after.height} "
                f"rows match the mean of the previous {p.window_days} served day(s) and {moved} "
                f"differ from the training mean; {WATCHED} reference_mean takes "
                f"{after.filter(pl.col('feature') == WATCHED)['reference_mean'].n_unique()} "
                "distinct values",
            )
        ]

        # 2. The creep, on the served 7-day feature: last visible day vs the week before onset.
        last = calendar.date(calendar.last_visible_day)
        base_days = [d for d in (onset - dt.timedelta(days=k) for k in range(1, 8)) if d in by_day]
        baseline = (
            float(np.mean([by_day[d][WATCHED] for d in base_days]))
            if base_days
            else train_mean[WATCHED]
        )
        now = by_day.get(last, {}).get(WATCHED)
        want = self._expected_drop(calendar.last_visible_day)
        drop = 1 - now / baseline if now is not None and baseline else 0.0
        checks.append(
            Check(
                name="served watch time creeps down after onset",
                passed=now is not None and want > 0 and drop >= 0.5 * want - NATURAL_DRIFT,
                detail=f"{WATCHED} served on {last}: {fmt(now)} vs {baseline:.2f} in the week "
                f"before onset, down {drop:.1%} (expected ~{want:.1%})",
            )
        )

        # 3. The monitor stays quiet although the training reference would not.
        flagged = rows.filter((pl.col("report_date") >= onset) & pl.col("drifted")).height
        last_report = rows["report_date"].max() if rows.height else None
        last_rows = rows.filter(pl.col("report_date") == last_report)
        shifts = {
            r["feature"]: abs(r["current_mean"] - train_mean[r["feature"]]) / train_sd[r["feature"]]
            for r in last_rows.iter_rows(named=True)
            if r["current_mean"] is not None and train_sd[r["feature"]]
        }
        largest = max(shifts.values(), default=0.0)
        visible = self._expected_normed_shift(calendar, training) >= 1.5 * DRIFT_THRESHOLD
        checks.append(
            Check(
                name="no watch-time feature is flagged although it left the training range",
                passed=flagged == 0 and (largest >= DRIFT_THRESHOLD or not visible),
                detail=f"{flagged} drifted rows for {', '.join(crept)} from onset; on "
                f"{last_report} the mean shift vs training is "
                + ", ".join(f"{c} {s:.2f} sd" for c, s in shifts.items())
                + f" (>= {DRIFT_THRESHOLD} sd means the training reference flags it"
                + ("" if visible else "; the creep is too young for that by the last report")
                + ")",
            )
        )
        return checks


def _per_session_drop(frame: pl.DataFrame) -> float:
    """The fall of minutes per session from the week before onset to the last week seen."""
    before = frame.filter(~pl.col("after_onset"))["minutes_per_session"]
    last = frame.filter(pl.col("after_onset") & pl.col("last_week"))["minutes_per_session"]
    if before.is_empty() or last.is_empty() or not before[0]:
        return 0.0
    return 1 - num(last[0]) / num(before[0])


def _training_stats_sql() -> str:
    """feature, training_mean, training_sd of the crept features in the training reference."""
    return " UNION ALL ".join(
        f"SELECT '{c}' AS feature, avg({c}) AS training_mean, stddev({c}) AS training_sd "
        "FROM monitoring.drift_reference"
        for c in CREPT
    )
