"""One device's app release starts reporting watch time in seconds; the pipeline reads it as minutes.

Story: the apps team ships a point release for one device family (by default the smart-TV app) that
moves playback telemetry onto a shared media SDK. The SDK reports watch time in seconds; the
ingestion contract says minutes and nobody converts. The release rolls out over a few days, so a
growing share of that device's customers report `minutes_watched` about 60 times too high, tagged
with the new `app_version`. The feature job averages whatever arrives: their watch-time features
explode, the churn model reads them as the most engaged customers in the base and stops flagging
them, while the dashboards show nothing worse than a "drifting" feature mean.

Its trail by difficulty: guided names the release and its move to the shared media SDK in the
changelog; standard logs the release by its version only; hard does not log it, but another
device family gets an ordinary patch release a few days later, logged as usual, so the changed
release is found only by joining minutes per session to the app versions and devices.
"""

from __future__ import annotations

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
from sandbox.faults.measure import score_over_churn, visible_end
from sandbox.faults.toolkit import fmt, mean_score, num, served_mean, window
from sandbox.product import APP_RELEASES
from sandbox.rng import stable_unit

DEVICE_NAMES = {"ios": "iOS", "android": "Android", "web": "web", "smart_tv": "smart TV"}
SCORE_DROP = 0.7  # affected customers' score change, at most this share of everyone else's
UNDER_SCORED = 0.75  # affected customers' score/churn ratio, relative to everyone else's
MIN_CHURNERS = 25  # matured churn labels an under-scoring check needs in the affected group
# At hard, another device family's patch release starts this many days after onset; it changes
# nothing but the version its customers report.
ROUTINE_RELEASE_DAYS_AFTER = 4
STANDARD_TELLS = ("media SDK", "playback and telemetry")


class Params(FaultParams):
    target_device: Literal["ios", "android", "web", "smart_tv"] = Field(
        "smart_tv", description="Device family whose new app release reports seconds."
    )
    multiplier: float = Field(
        60.0,
        ge=10.0,
        le=1000.0,
        description="Factor the new release inflates minutes_watched by (60 = seconds).",
    )
    adoption_share: float = Field(
        0.8,
        ge=0.3,
        le=1.0,
        description="Share of the device's customers on the new release at full ramp.",
    )


def release_version(onset_day: int, patches: int = 1) -> str:
    """A patch release (`patches` patches) on top of the newest app release out by the onset day."""
    current = max((r for r in APP_RELEASES if r[1] <= onset_day), key=lambda r: r[1])[0]
    major, minor, patch = (int(p) for p in current.split("."))
    return f"{major}.{minor}.{patch + patches}"


class UpstreamUnitChange(Fault[Params]):
    id: ClassVar[str] = "upstream-unit-change"
    actions: ClassVar[dict[str, Verdict]] = {
        "backfill-online-store": "no effect",
        "rerun-batch-scoring": "no effect",
        "pause-job": "mitigates",
        # The release's minutes treated as not reported: its customers' watch time is filled
        # instead of 60 times too high. The fix is the conversion upstream, then a backfill.
        "quarantine-app-release": "mitigates",
        "retrain": "harmful",
        "set-decision-threshold": "no effect",
        "set-imputation-fill": "no effect",
    }
    title: ClassVar[str] = "One device's new app release reports watch time in seconds"
    rating: ClassVar[Literal["easy", "medium", "hard"]] = "medium"
    observation: ClassVar[str] = (
        "Churn rises among one device's customers while the model flags fewer of them; the "
        "watch-time feature means jump, but nothing errors and the holdout metrics look fine."
    )

    @property
    def version(self) -> str:
        return release_version(self.params.onset_day)

    def on_release(self, customer_ids: np.ndarray, devices: np.ndarray, day: int) -> np.ndarray:
        """Who runs the new release on `day`: a stable, growing share of the device's customers."""
        share = self.params.adoption_share * self.params.intensity(day)
        return (devices == self.params.target_device) & (stable_unit(customer_ids, self.id) < share)

    @property
    def routine_device(self) -> str:
        """At hard, the device family whose ordinary patch release follows the changed one."""
        return next(d for d in DEVICE_NAMES if d != self.params.target_device)

    @property
    def routine_version(self) -> str:
        return release_version(self.params.onset_day, patches=2)

    @property
    def _routine_day(self) -> int:
        return self.params.onset_day + ROUTINE_RELEASE_DAYS_AFTER

    def _routine_update(self, value: pl.DataFrame, day: int) -> pl.DataFrame:
        """The routine release's customers report its version; nothing else changes."""
        days = max(self.params.ramp_days, 1)
        share = self.params.adoption_share * min(1.0, (day - self._routine_day + 1) / days)
        if self.tier != "hard" or share <= 0:
            return value
        devices = value["device"].to_numpy()
        # Customers already on the next full release do not go back to a patch of this one.
        later = [v for v, d in APP_RELEASES if d > self._routine_day]
        updated = (
            (devices == self.routine_device)
            & ~value["app_version"].is_in(later).to_numpy()
            & (stable_unit(value["customer_id"].to_numpy(), f"{self.id}/routine") < share)
        )
        return value.with_columns(
            pl.when(pl.Series(updated))
            .then(pl.lit(self.routine_version))
            .otherwise(pl.col("app_version"))
            .alias("app_version")
        )

    @hook("ingest.activity")
    def report_seconds(self, value: pl.DataFrame, ctx: HookContext) -> pl.DataFrame:
        if not value.height:
            return value
        value = self._routine_update(value, ctx.day)
        if self.params.intensity(ctx.day) == 0:
            return value
        updated = self.on_release(
            value["customer_id"].to_numpy(), value["device"].to_numpy(), ctx.day
        )
        if not updated.any():
            return value
        # The SDK counts whole seconds of the true watch time (minutes arrive rounded to 0.1).
        g = rng.stream(ctx.seed, self.id, ctx.day)
        jitter = g.uniform(-0.05, 0.05, value.height)
        reported = (
            (pl.col("minutes_watched") + pl.Series(jitter)).clip(lower_bound=0.0)
            * self.params.multiplier
        ).round(0)
        mask = pl.Series(updated)
        return value.with_columns(
            pl.when(mask)
            .then(reported)
            .otherwise(pl.col("minutes_watched"))
            .alias("minutes_watched"),
            pl.when(mask)
            .then(pl.lit(self.version))
            .otherwise(pl.col("app_version"))
            .alias("app_version"),
        )

    def tells(self, tier: Tier) -> tuple[str, ...]:
        hard = (*STANDARD_TELLS, self._rollout_title())
        return {"guided": (), "standard": STANDARD_TELLS, "hard": hard}[tier]

    def _rollout_title(self) -> str:
        return (
            f"{DEVICE_NAMES[self.params.target_device]} app {self.version} staged rollout started"
        )

    def changelog(self, calendar: Calendar) -> list[dict[str, Any]]:
        device = DEVICE_NAMES[self.params.target_device]
        days = max(self.params.ramp_days, 1)
        if self.tier == "hard":
            return [
                {
                    "day": self._routine_day,
                    "hour": 10.0,
                    "kind": "deploy",
                    "service": "mobile-apps",
                    "title": f"{DEVICE_NAMES[self.routine_device]} app {self.routine_version} "
                    "staged rollout started",
                    "body": f"Auto-update over about {days} days.",
                    "author": "apps-team",
                }
            ]
        body = {
            "guided": f"{device} only: player moved to the shared media SDK (playback and "
            f"telemetry); auto-update over about {days} days.",
            "standard": f"Auto-update over about {days} days.",
        }[self.tier]
        return [
            {
                "day": self.params.onset_day,
                "hour": 9.5,
                "kind": "deploy",
                "service": "mobile-apps",
                "title": self._rollout_title(),
                "body": body,
                "author": "apps-team",
            }
        ]

    def _changelog_evidence(self, calendar: Calendar) -> list[Evidence]:
        if self.tier == "hard":
            return []
        w = window(calendar, self.params.onset_day)
        return [
            w.changelog(
                "app-rollout", self._rollout_title(), "the release that changed the telemetry"
            )
        ]

    def acts_when(self) -> dict[str, dict[str, list[Any]]]:
        # Only a pause of the jobs that feed the online store keeps the corrupt loads out of it,
        # and only a quarantine of the changed release takes its minutes out of the features.
        return {
            "pause-job": {"job": ["feature-job", "materialization"]},
            "quarantine-app-release": {
                "device": [self.params.target_device],
                "app_version": [self.version],
            },
        }

    def symptoms(self, calendar: Calendar) -> list[Symptom]:
        return [served_mean("avg_daily_minutes_7d"), mean_score()]

    def answer_key(self, calendar: Calendar) -> AnswerKey:
        w = window(calendar, self.params.onset_day)
        start = w.start
        device, version = self.params.target_device, self.version
        mult, pct = self.params.multiplier, round(self.params.adoption_share * 100)
        return AnswerKey(
            fault_id=self.id,
            title=self.title,
            root_cause=(
                f"On {start} the {DEVICE_NAMES[device]} app {version} starts its rollout (about "
                f"{pct}% of {device} customers within {self.params.ramp_days} days). Its new media "
                f"SDK reports watch time in a different unit (seconds: {mult:g}x the minutes the "
                "ingestion contract expects), and nothing converts it. raw.viewing_activity."
                f"minutes_watched for {device} rows on app_version {version} is {mult:g}x too "
                "high, so avg_daily_minutes_7d/28d and minutes_per_session_28d explode for those "
                "customers. The churn model reads them as its most engaged, most satisfied "
                "viewers and stops flagging them, although they churn as often as before."
            ),
            propagation=[
                f"upstream: {DEVICE_NAMES[device]} app {version} -> minutes_watched in seconds "
                f"({mult:g}x) for its users",
                f"raw: raw.viewing_activity.minutes_watched {mult:g}x for device = '{device}', "
                f"app_version = '{version}'; sessions unchanged",
                "features: avg_daily_minutes_7d/28d and minutes_per_session_28d jump for those "
                "customers (feature_mean climbs; no NULLs, no errors)",
                "serving: the model scores them as very engaged; far fewer of them are flagged",
                f"business: at-risk {device} customers get no retention offer; churn rises",
                "labels (14 days later): recall and AUC fall for the device segment; holdout "
                "metrics stay high",
            ],
            evidence=[
                w.column(
                    "raw-minutes",
                    "raw.viewing_activity.minutes_watched",
                    f"minutes per session ~{mult:g}x on {device} rows of {version}",
                ),
                w.column(
                    "new-release",
                    "raw.viewing_activity.app_version",
                    f"app_version {version} appears at onset, on {device} only",
                ),
                w.column(
                    "feature-jump",
                    "feature_store.customer_features.minutes_per_session_28d",
                    f"minutes features explode for {device} customers on {version}",
                ),
                w.metric(
                    "feature-mean",
                    "feature_mean",
                    "feature_mean of the minutes features climbs with the rollout",
                ),
                w.column(
                    "segment-recall",
                    "monitoring.model_performance_daily.flagged_rate",
                    f"flagged rate and recall of the device = {device} segment fall",
                ),
                *self._changelog_evidence(calendar),
            ],
            acceptable_fixes=[
                f"Convert the unit at ingestion for {version} (divide by {mult:g}) or have the "
                "apps team fix the SDK field; add the unit to the telemetry contract.",
                "Backfill raw and feature rows of the affected customers since onset, then "
                "re-score them and consider outreach to the ones missed.",
                "Add data contracts / range checks on raw minutes per session, segmented by "
                "app_version and device, so a new release is validated before it is trusted.",
                "Monitor feature distributions and model performance per device and app version.",
            ],
            probes=[
                "How did you tell a unit change from real behaviour change or ordinary drift?",
                "Why did no alert fire, and what check would have caught it at ingestion?",
                "Would retraining on the current data have fixed it? What would it have learned?",
                "What would you ship first, and how would you know it worked?",
                "What experiment would you run next to size how many at-risk customers were "
                "missed?",
            ],
        )

    def investigation(self, calendar: Calendar) -> list[Step]:
        device, version, mult = self.params.target_device, self.version, self.params.multiplier
        onset = calendar.date(self.params.onset_day)
        return [
            Step(
                question="Did watch time per session change for any device or app version?",
                sql="""
                    SELECT device, app_version, count(*) AS rows,
                           round(sum(minutes_watched) / sum(sessions), 1) AS minutes_per_session
                    FROM raw.viewing_activity WHERE minutes_watched IS NOT NULL
                    GROUP BY 1, 2 ORDER BY 1, 2""",
                evidence="raw-minutes",
                finding=f"{device} rows on {version} report ~{mult:g}x the minutes per session "
                "of every other device and version",
                found=lambda f: (
                    f.height > 0
                    and num(f["minutes_per_session"].max())
                    >= 0.4 * mult * num(f["minutes_per_session"].median())
                ),
            ),
            Step(
                question="Which app versions run on which devices, and since when?",
                sql="""
                    SELECT app_version, count(DISTINCT device) AS devices,
                           min(activity_date) AS first_seen, count(*) AS rows
                    FROM raw.viewing_activity GROUP BY 1 ORDER BY 1""",
                evidence="new-release",
                finding=f"{version} runs on one device only and first appears at onset"
                + (
                    f"; {self.routine_version} on {self.routine_device} follows days later, "
                    "with ordinary minutes per session"
                    if self.tier == "hard"
                    else ""
                ),
                found=lambda f: (
                    f.filter((pl.col("devices") == 1) & (pl.col("first_seen") >= onset)).height > 0
                ),
            ),
            Step(
                question="Did the watch-time features move for one device's customers?",
                sql="""
                    SELECT c.device, date_trunc('week', f.event_timestamp) AS week,
                           round(avg(f.minutes_per_session_28d), 1) AS minutes_per_session_28d,
                           round(avg(f.avg_daily_minutes_7d), 1) AS avg_daily_minutes_7d
                    FROM feature_store.customer_features f JOIN raw.customers c USING (customer_id)
                    GROUP BY 1, 2 ORDER BY 1, 2""",
                evidence="feature-jump",
                finding=f"{device} customers' minutes features multiply after onset; other "
                "devices stay flat",
                found=lambda f: _device_jump(f, device) >= 2.0,
            ),
            Step(
                question="Are the customers on the new release scored lower than they churn?",
                sql=f"""
                    WITH upgraded AS (SELECT DISTINCT customer_id FROM raw.viewing_activity
                                      WHERE app_version = '{version}' AND device = '{device}')
                    SELECT p.customer_id IN (SELECT customer_id FROM upgraded) AS new_release,
                           count(*) AS n, avg(p.score) AS mean_score,
                           avg(p.decision::INT) AS flagged_rate, avg(l.churned) AS churn_rate
                    FROM serving.predictions p JOIN labels.churn_labels l
                      ON l.customer_id = p.customer_id AND l.score_date = p.request_ts::DATE
                    WHERE p.source = 'batch' AND p.request_ts::DATE > DATE '{onset}'
                    GROUP BY 1 ORDER BY 1""",
                evidence="segment-recall",
                finding="they churn about as often as everyone else but score far lower and are "
                "rarely flagged",
                found=lambda f: (
                    f.filter(pl.col("new_release")).height == 1
                    and score_over_churn(f, "new_release", True)
                    <= UNDER_SCORED * score_over_churn(f, "new_release", False)
                ),
            ),
        ]

    def verify(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> list[Check]:
        device, version, mult = self.params.target_device, self.version, self.params.multiplier
        onset = calendar.date(self.params.onset_day)
        checks: list[Check] = []

        before_rows, after_rows, devices = con.execute(
            """
            SELECT count(*) FILTER (WHERE activity_date < $onset),
                   count(*) FILTER (WHERE activity_date >= $onset),
                   coalesce(string_agg(DISTINCT device, ','), '')
            FROM raw.viewing_activity WHERE app_version = $version
            """,
            {"onset": onset, "version": version},
        ).fetchall()[0]
        checks.append(
            Check(
                name="new app release appears at onset on the target device only",
                passed=before_rows == 0 and after_rows > 0 and devices == device,
                detail=f"rows on app_version {version}: {before_rows} before onset, {after_rows} "
                f"after; devices: {devices or 'none'} (expected {device})",
            )
        )

        # Minutes per session (a ratio of sums, robust to NULL minutes from other changes).
        stats = con.execute(
            """
            SELECT device = $device AS target, activity_date >= $onset AS after,
                   app_version = $version AS updated,
                   sum(minutes_watched) / sum(sessions) FILTER (WHERE minutes_watched IS NOT NULL)
            FROM raw.viewing_activity GROUP BY ALL
            """,
            {"device": device, "onset": onset, "version": version},
        ).fetchall()
        mps = {(t, a, u): v for t, a, u, v in stats}
        base = mps.get((True, False, False))
        updated = mps.get((True, True, True))
        old_after = mps.get((True, True, False))
        others = (mps.get((False, False, False)), mps.get((False, True, False)))
        ratio = updated / base if updated is not None and base else None
        stable = [
            after / before
            for before, after in ((base, old_after), others)
            if before and after is not None
        ]
        checks.append(
            Check(
                name="segment's minutes per session jump by the multiplier after onset",
                passed=ratio is not None
                and 0.7 * mult <= ratio <= 1.3 * mult
                and len(stable) == 2
                and all(0.85 <= r <= 1.15 for r in stable),
                detail=f"{device} minutes per session: {fmt(base)} before onset, {fmt(updated)} "
                f"on {version} after (x{fmt(ratio)}, expected ~{mult:g}); unchanged elsewhere: "
                + ", ".join(f"x{r:.2f}" for r in stable)
                + " (the device's other versions, other devices)",
            )
        )

        # Per customer, from the day they first report on the new release (the 7-day average
        # reacts first; the 28-day per-session figure follows over the next weeks).
        b7, a7, bs, as_, n_upgraded = con.execute(
            f"""
            WITH {_UPGRADED}
            SELECT avg(f.avg_daily_minutes_7d) FILTER (WHERE f.event_timestamp::DATE <= u.d0),
                   avg(f.avg_daily_minutes_7d) FILTER (WHERE f.event_timestamp::DATE > u.d0),
                   avg(f.minutes_per_session_28d) FILTER (WHERE f.event_timestamp::DATE <= u.d0),
                   avg(f.minutes_per_session_28d) FILTER (WHERE f.event_timestamp::DATE > u.d0),
                   count(DISTINCT u.customer_id)
            FROM feature_store.customer_features f JOIN upgraded u USING (customer_id)
            """,
            {"version": version, "device": device},
        ).fetchall()[0]
        ratio_7d = a7 / b7 if a7 is not None and b7 else None
        ratio_ps = as_ / bs if as_ is not None and bs else None
        checks.append(
            Check(
                name="minutes features explode for customers on the new release",
                passed=ratio_7d is not None and ratio_7d >= 0.15 * mult,
                detail=f"{n_upgraded} customers on {version}: mean avg_daily_minutes_7d "
                f"{fmt(b7)} before they updated, {fmt(a7)} after (x{fmt(ratio_7d)}; expected "
                f">= x{0.15 * mult:.1f}); minutes_per_session_28d {fmt(bs)} -> {fmt(as_)} "
                f"(x{fmt(ratio_ps)})",
            )
        )

        # Label-free: the same customers' scores before and after, against everyone else's.
        scores = con.execute(
            f"""
            WITH {_UPGRADED},
            p AS (SELECT p.customer_id, p.request_ts::DATE AS d, p.score, p.decision, u.d0
                  FROM serving.predictions p LEFT JOIN upgraded u USING (customer_id)
                  WHERE p.source = 'batch')
            SELECT avg(score) FILTER (WHERE d0 IS NOT NULL AND d <= d0),
                   avg(score) FILTER (WHERE d0 IS NOT NULL AND d > d0),
                   avg(decision::INT) FILTER (WHERE d0 IS NOT NULL AND d <= d0),
                   avg(decision::INT) FILTER (WHERE d0 IS NOT NULL AND d > d0),
                   avg(score) FILTER (WHERE d0 IS NULL AND d <= $onset),
                   avg(score) FILTER (WHERE d0 IS NULL AND d > $onset)
            FROM p
            """,
            {"version": version, "device": device, "onset": onset},
        ).fetchall()[0]
        s_before, s_after, fl_before, fl_after, o_before, o_after = scores
        own = s_after / s_before if s_after is not None and s_before else None
        rest = o_after / o_before if o_after is not None and o_before else None
        checks.append(
            Check(
                name="the model scores customers on the new release far lower",
                passed=own is not None and rest is not None and own <= SCORE_DROP * rest,
                detail=f"mean batch score of updated customers {fmt(s_before, '.4f')} before their "
                f"update, {fmt(s_after, '.4f')} after (x{fmt(own)}); everyone else x{fmt(rest)}; "
                f"their flagged rate {fmt(fl_before, '.3f')} -> {fmt(fl_after, '.3f')}",
            )
        )

        # With matured labels: they churn as before, so score/churn falls against everyone else's.
        labelled = con.execute(
            f"""
            WITH {_UPGRADED}
            SELECT u.customer_id IS NOT NULL AND p.request_ts::DATE > u.d0 AS updated,
                   count(*) AS n, sum(l.churned) AS churners, avg(p.score) AS mean_score,
                   avg(l.churned) AS churn_rate
            FROM serving.predictions p
            JOIN labels.churn_labels l
              ON l.customer_id = p.customer_id AND l.score_date = p.request_ts::DATE
            LEFT JOIN upgraded u ON u.customer_id = p.customer_id
            WHERE p.source = 'batch' AND p.request_ts::DATE > $onset
              AND l.label_available_at <= $matured
            GROUP BY 1
            """,
            {
                "version": version,
                "device": device,
                "onset": onset,
                "matured": visible_end(calendar),
            },
        ).fetchall()
        groups = {g: (n, c, s / r if r else None) for g, n, c, s, r in labelled}
        n_up, churners, ratio_up = groups.get(True, (0, 0, None))
        _, _, ratio_rest = groups.get(False, (0, 0, None))
        name = "updated customers are under-scored for their churn"
        if churners < MIN_CHURNERS:
            checks.append(
                Check(
                    name=name,
                    outcome="not measurable",
                    detail=f"not measurable: {churners} matured churn labels among updated "
                    f"customers after onset (< {MIN_CHURNERS}); skipped",
                )
            )
        else:
            checks.append(
                Check(
                    name=name,
                    passed=ratio_up is not None
                    and ratio_rest is not None
                    and ratio_up <= UNDER_SCORED * ratio_rest,
                    detail=f"{n_up} matured predictions of updated customers ({churners} "
                    f"churned): mean score over churn rate {fmt(ratio_up)} for them, "
                    f"{fmt(ratio_rest)} for everyone else",
                )
            )
        return checks


# Customers who report on the new release, and the first day they did.
_UPGRADED = """upgraded AS (
                SELECT customer_id, min(activity_date) AS d0 FROM raw.viewing_activity
                WHERE app_version = $version AND device = $device GROUP BY 1)"""


def _device_jump(frame: pl.DataFrame, device: str) -> float:
    rows = frame.filter(pl.col("device") == device)
    if not rows.height:
        return 0.0
    column = rows["minutes_per_session_28d"]
    return float(num(column.max()) / num(column.min())) if num(column.min()) else float("inf")
