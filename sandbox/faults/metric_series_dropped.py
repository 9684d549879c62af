"""A model-server release starts failing requests at peak and stops exporting the error series.

Story: model-server 2.5.0 moves request handling to async workers and its metrics to the
OpenTelemetry SDK. Two things go wrong in the same deploy. The new worker pool holds fewer
connections to the online store, so at evening peak requests queue until the gateway's 2 s limit and
come back 503 — a share that grows as the release reaches every replica. And the new exporter names
the error counter differently, so the recording rule that produced model-server's `error_ratio`
matches nothing: the series does not go to zero, it stops existing. The ModelServerErrors alert
(critical, above 5% for 10 minutes) evaluates on no data and never fires, while the predictions log
and the request logs show a large share of failures every evening. Traffic and latency series
survive the migration, so the dashboards the team checked after the deploy looked fine.

Its trail by difficulty: guided's changelog entry names the async workers and the new metrics
exporter; standard's names only the model-server release; hard logs no entry for it, but other
routine model-server and gateway changes around it, so the missing series is found only by
joining the requests served to the points exported, and the errors in the requests themselves.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar, Literal

import duckdb
import numpy as np
import polars as pl
from pydantic import Field, field_validator

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
    Rollout,
    Step,
    Symptom,
    Verdict,
    hook,
)
from sandbox.faults.toolkit import (
    PEAK_HOURS,
    at_peak,
    expected_by_hour,
    load_curve,
    num,
    routine_changes,
    window,
)
from sandbox.monitor.alerts import RULES

SERVICE = "model-server"
SERIES = (
    "requests_per_second",
    "error_ratio",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
)
DEPLOY_HOUR = 10.0
FAILED_LATENCY_MS = 2000.0  # the gateway gives up on a queued request
ALERT = next(r for r in RULES if r.service == SERVICE and r.metric == "error_ratio")
BUCKET_MINUTES = 5  # the metric exporter's resolution (see monitor.metrics)
ONCALL_AFTER_DAYS = 6
# The release's changelog entry at each tier (None: not logged).
TITLES: dict[Tier, str | None] = {
    "guided": "model-server 2.5.0: async workers, OpenTelemetry metrics exporter",
    "standard": "model-server 2.5.0",
    "hard": None,
}
# Tells: each alone would point at the cause at the tiers that hide it.
STANDARD_TELLS = (
    "OpenTelemetry",
    "OTel",
    "metrics exporter",
    "Prometheus client",
    "async workers",
)
HARD_TELLS = (*STANDARD_TELLS, "model-server 2.5.0")


class Params(FaultParams):
    peak_error_share: float = Field(
        0.3,
        ge=0.1,
        le=0.9,
        description="Share of online requests failing in the busiest hour once the release is on "
        f"every replica (the alert threshold is {ALERT.above:.0%}); none below half of peak load.",
    )
    dropped_series: list[str] = Field(
        default_factory=lambda: ["error_ratio"],
        description=f"{SERVICE} series the new exporter no longer produces; must include "
        f"error_ratio. Choices: {', '.join(SERIES)}.",
    )

    @field_validator("dropped_series")
    @classmethod
    def _known_series(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(SERIES))
        if unknown:
            raise ValueError(f"unknown {SERVICE} series {unknown}; choose from {list(SERIES)}")
        if "error_ratio" not in v:
            raise ValueError("must include error_ratio: the alert that goes blind watches it")
        if len(set(v)) != len(v):
            raise ValueError("lists a series twice")
        return v


class MetricSeriesDropped(Fault[Params]):
    id: ClassVar[str] = "metric-series-dropped"
    actions: ClassVar[dict[str, Verdict]] = {
        "restore-metric-series": "mitigates",
        # Back past the release (`rollouts`): the old pool stops the failures, the old exporter
        # brings the series back.
        "rollback-deploy": "fixes",
        "set-decision-threshold": "no effect",
        "set-imputation-fill": "no effect",
        "retrain": "no effect",
    }
    title: ClassVar[str] = "Errors at peak while the error-ratio series is no longer exported"
    rating: ClassVar[Literal["easy", "medium", "hard"]] = "medium"
    observation: ClassVar[str] = (
        "A large share of evening requests fail in the predictions log and request logs, yet "
        "the critical model-server error alert never fires and its series has no data."
    )

    def deploy_time(self, calendar: Calendar) -> dt.datetime:
        return calendar.at(self.params.onset_day, DEPLOY_HOUR)

    def error_share(self, day: int, hours: np.ndarray) -> np.ndarray:
        """Expected share of online requests failing, by (day, hour of day)."""
        return self.params.peak_error_share * self.params.intensity(day) * load_curve(hours)

    def rollouts(self, calendar: Calendar) -> list[Rollout]:
        """The release that moved the pool and the exporter: a rollback of the model server goes
        back past it."""
        return [Rollout(SERVICE, self.deploy_time(calendar), "async workers, OTel exporter")]

    @hook("serve.features")
    def fail_requests(self, value: pl.DataFrame, ctx: HookContext) -> pl.DataFrame:
        deployed = self.deploy_time(ctx.calendar)
        if self.params.intensity(ctx.day) == 0 or value.height == 0 or not ctx.rolled_out(deployed):
            return value
        hours = value["request_ts"].dt.hour().to_numpy().astype(int)
        draw = rng.stream(ctx.seed, "model-server-pool", ctx.day).random(value.height)
        failing = (
            (pl.col("source") == "online")
            & (pl.col("request_ts") >= deployed)
            & pl.Series(draw < self.error_share(ctx.day, hours))
        )
        return value.with_columns(
            pl.when(failing).then(pl.lit("error")).otherwise(pl.col("status")).alias("status"),
            pl.when(failing)
            .then(pl.lit(FAILED_LATENCY_MS))
            .otherwise(pl.col("latency_ms"))
            .alias("latency_ms"),
        )

    @hook("monitor.metrics")
    def drop_series(self, series: pl.DataFrame, ctx: HookContext) -> pl.DataFrame:
        deployed = self.deploy_time(ctx.calendar)
        if not ctx.rolled_out(deployed):  # the exporter from before the release
            return series
        gone = (
            (pl.col("service") == SERVICE)
            & pl.col("metric").is_in(self.params.dropped_series)
            & (pl.col("ts") >= deployed)
        )
        return series.filter(~gone)

    def _deploy_title(self) -> str | None:
        return TITLES[self.tier]

    def tells(self, tier: Tier) -> tuple[str, ...]:
        return {"guided": (), "standard": STANDARD_TELLS, "hard": HARD_TELLS}[tier]

    def changelog(self, calendar: Calendar) -> list[dict[str, Any]]:
        days = max(self.params.ramp_days, 1)
        onset = self.params.onset_day
        title = self._deploy_title()
        body = {
            "guided": "Request handling on async workers; metrics exported through the OTel SDK "
            "instead of the Prometheus client. Traffic and latency panels checked after the "
            f"canary. Progressive rollout over {days} day(s).",
            "standard": "Runtime and dependency upgrades. Panels checked after the canary. "
            f"Progressive rollout over {days} day(s).",
        }
        release = (
            [
                {
                    "day": onset,
                    "hour": DEPLOY_HOUR,
                    "kind": "deploy",
                    "service": SERVICE,
                    "title": title,
                    "body": body[self.tier],
                    "author": "ml-platform",
                }
            ]
            if title is not None
            else routine_changes(__name__, onset)
        )
        return [
            *release,
            {
                "day": onset + ONCALL_AFTER_DAYS,
                "hour": 14.0,
                "kind": "oncall",
                "service": "all",
                "title": "on-call handoff: evening latency pages",
                "body": "model-server p99 pages most evenings this week, 19:00-22:00; autoscaler "
                "at max replicas, clears by itself after the peak. Clients retry.",
                "author": "oncall",
            },
        ]

    def _changelog_evidence(self, calendar: Calendar) -> list[Evidence]:
        title = self._deploy_title()
        if title is None:
            return []
        w = window(calendar, self.params.onset_day)
        return [w.changelog("deploy", title, "the deploy that changed the pool and the exporter")]

    def symptoms(self, calendar: Calendar) -> list[Symptom]:
        exported = self.params.dropped_series[0]
        return [
            Symptom(
                id=f"{exported}_points",
                title=f"Share of {SERVICE} metric points that are {exported}",
                unit="ratio",
                value=f"avg((metric = '{exported}')::INTEGER)::DOUBLE",
                source="telemetry.metrics",
                time="ts",
                where=f"service = '{SERVICE}'",
                own=None,
                rows=f"{SERVICE} metric points",
            ),
            Symptom(
                id="failed_share_at_peak",
                title="Share of online requests failed at evening peak",
                unit="ratio",
                value="avg((status <> 'ok')::INTEGER)::DOUBLE",
                where=f"source = 'online' AND {at_peak()}",
            ),
        ]

    def answer_key(self, calendar: Calendar) -> AnswerKey:
        w = window(calendar, self.params.onset_day)
        start = w.start
        p = self.params
        pct = round(p.peak_error_share * 100)
        dropped = ", ".join(p.dropped_series)
        peak = ", ".join(f"{h}:00" for h in PEAK_HOURS)
        return AnswerKey(
            fault_id=self.id,
            title=self.title,
            root_cause=(
                f"The {SERVICE} 2.5.0 deploy on {start} at {DEPLOY_HOUR:g}:00 did two things. Its "
                "smaller worker/connection pool cannot keep up at evening peak, so online requests "
                f"queue to the 2 s gateway limit and fail with 503: about {pct}% of requests at "
                f"{peak} once the release reached every replica ({p.ramp_days} days later), none "
                "below half of peak load. And its new OpenTelemetry exporter no longer produces "
                f"the {SERVICE} series {dropped}: from the deploy on there are no points at all "
                f"(not zeros). The {ALERT.name} alert ({ALERT.metric} > {ALERT.above:.0%} for "
                f"{ALERT.for_points * BUCKET_MINUTES} minutes) evaluates on no data and never "
                "fires, although the errors are far above its threshold every evening."
                + (
                    " The release is in no changelog entry: the series gap dates it."
                    if self._deploy_title() is None
                    else ""
                )
            ),
            propagation=[
                f"deploy: {SERVICE} 2.5.0 with a smaller pool and a new metrics exporter",
                "serving: at peak load requests queue and fail after ~2 s (status error, 503 "
                "in the request log, no score)",
                f"telemetry: the {dropped} series of {SERVICE} stop at the deploy; traffic and "
                "latency series continue",
                f"alerting: {ALERT.name} still references {ALERT.metric}, finds no data, stays "
                "silent (absent data is not a breach)",
                "paging: the failures take ~2 s, so the p99 latency alert fires most evenings; "
                "the on-call reads it as the familiar evening-peak latency flakiness",
                "product: every evening a large share of in-app churn scores is missing; clients "
                "retry",
            ],
            evidence=[
                w.metric(
                    "series-gap",
                    "error_ratio",
                    f"{SERVICE} error_ratio has points every 5 minutes before the "
                    "deploy and none after it, while requests_per_second continues",
                    start=start - dt.timedelta(days=7),
                ),
                w.column(
                    "errors-by-hour",
                    "serving.predictions.status",
                    f"online error share at {peak} rises far above "
                    f"{ALERT.above:.0%} after the deploy; quiet hours stay clean",
                ),
                w.column(
                    "rule-still-there",
                    "monitoring.alert_rules.metric",
                    f"{ALERT.name} still watches {ALERT.metric}",
                ),
                w.column(
                    "no-alerts",
                    "monitoring.alerts.alert",
                    f"no {ALERT.name} episode after the deploy",
                ),
                w.log(
                    "request-log-503",
                    r'"status": 503',
                    "request lines with status 503 and ~2000 ms every evening",
                ),
                *self._changelog_evidence(calendar),
            ],
            acceptable_fixes=[
                "Roll back model-server 2.5.0 (or restore the pool size) to stop the peak errors.",
                f"Restore the {dropped} series: fix the recording rule / exporter mapping to the "
                "new counter names, and backfill from request logs if needed.",
                "Alert on absent data: every alert rule gets a companion 'series missing' rule "
                "(absent() / no-data = alerting), and deploys check that each alerted series "
                "still exists.",
                "Add an SLO burn-rate alert computed from the request logs or the load balancer, "
                "independent of the service's own exporter.",
            ],
            probes=[
                f"Why did a critical alert with a {ALERT.above:.0%} threshold stay silent at "
                f"{pct}% errors?",
                "How would you have noticed this without reading the predictions table?",
                "How do you make every alert fail loudly when its input disappears?",
                "Are the errors and the missing series one cause or two? How do you tell?",
                "What experiment would you run next to confirm the pool is the cause of the "
                "errors (e.g. load-test 2.4.1 against 2.5.0 at peak traffic)?",
            ],
        )

    def investigation(self, calendar: Calendar) -> list[Step]:
        start = calendar.date(self.params.onset_day)
        deployed = self.deploy_time(calendar)
        expected = self.params.peak_error_share * self.params.intensity(calendar.last_visible_day)
        return [
            Step(
                question="How often do online requests fail, by hour of day, since the deploy?",
                sql=f"""
                    SELECT hour(request_ts) AS hour, count(*) AS requests,
                           round(avg((status = 'error')::INT), 3) AS error_share,
                           round(avg(latency_ms) FILTER (WHERE status = 'error'), 0)
                               AS error_latency_ms
                    FROM serving.predictions
                    WHERE source = 'online' AND request_ts >= TIMESTAMP '{deployed}'
                    GROUP BY 1 ORDER BY 1""",
                evidence="errors-by-hour",
                finding=f"evening hours fail far above the {ALERT.above:.0%} alert threshold, "
                "each failure after ~2 s",
                found=lambda f: (
                    f.height > 0 and num(f["error_share"].max()) >= max(0.25 * expected, 0.02)
                ),
            ),
            Step(
                question=f"Does every {SERVICE} series have its points every day it served?",
                sql=f"""
                    WITH served AS (
                        SELECT request_ts::DATE AS day, count(*) AS online_requests
                        FROM serving.predictions WHERE source = 'online' GROUP BY 1
                    ), points AS (
                        SELECT ts::DATE AS day,
                               {", ".join(f"count(*) FILTER (WHERE metric = '{m}') AS {m}" for m in SERIES)}
                        FROM telemetry.metrics WHERE service = '{SERVICE}' GROUP BY 1
                    )
                    SELECT s.day, s.online_requests,
                           {", ".join(f"coalesce(p.{m}, 0) AS {m}" for m in SERIES)}
                    FROM served s LEFT JOIN points p USING (day) ORDER BY 1""",
                evidence="series-gap",
                finding="error_ratio has no points from the deploy on although requests kept "
                "being served (and, unless they went too, the other series carry on)",
                found=lambda f: (
                    f.filter((pl.col("online_requests") > 0) & (pl.col("error_ratio") == 0)).height
                    > 0
                    and f["error_ratio"].sum() > 0
                ),
            ),
            Step(
                question="Which alert would have caught the errors, and did it fire?",
                sql=f"""
                    SELECT r.name, r.metric, r.above, r.for_points,
                           (SELECT count(*) FROM monitoring.alerts a
                             WHERE a.alert = r.name
                               AND a.started_at >= TIMESTAMP '{deployed}') AS fired_since,
                           (SELECT count(*) FROM telemetry.metrics m
                             WHERE m.service = r.service AND m.metric = r.metric
                               AND m.ts >= TIMESTAMP '{deployed}') AS points_since
                    FROM monitoring.alert_rules r WHERE r.service = '{SERVICE}'""",
                evidence="rule-still-there",
                finding=f"{ALERT.name} still watches {ALERT.metric}, which has no points since "
                "the deploy, so it never fired",
                found=lambda f: (
                    f.filter(
                        (pl.col("name") == ALERT.name)
                        & (pl.col("fired_since") == 0)
                        & (pl.col("points_since") == 0)
                    ).height
                    == 1
                ),
            ),
            Step(
                question="Do the request logs agree with the predictions table?",
                sql=f"""
                    SELECT ts::DATE AS day,
                           count(*) FILTER (WHERE message LIKE 'POST /predict 503%') AS failed,
                           count(*) AS requests
                    FROM telemetry.logs
                    WHERE service = '{SERVICE}' AND event = 'request'
                      AND ts >= DATE '{start}' - INTERVAL 7 DAY
                    GROUP BY 1 ORDER BY 1""",
                evidence="request-log-503",
                finding="503 lines appear every day after the deploy, a few per day before",
                found=lambda f: (
                    f.height > 0
                    and num((f["failed"] / f["requests"]).max()) >= max(0.05 * expected, 0.01)
                ),
            ),
            *self._changelog_step(),
        ]

    def _changelog_step(self) -> list[Step]:
        """The deploy's entry, where the tier logs it."""
        title = self._deploy_title()
        if title is None:
            return []
        return [
            Step(
                question=f"What was deployed to {SERVICE}?",
                sql=f"""
                    SELECT ts, kind, title, body FROM ops.changelog
                    WHERE service = '{SERVICE}' ORDER BY ts""",
                evidence="deploy",
                finding=f"{title} shipped on the day the errors started",
                found=lambda f: title in f["title"].to_list(),
            )
        ]

    def verify(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> list[Check]:
        deployed = self.deploy_time(calendar)
        dropped = self.params.dropped_series
        kept = [s for s in SERIES if s not in dropped]
        points = {
            (metric, after): n
            for metric, after, n in con.execute(
                """
                SELECT metric, ts >= $deployed, count(*) FROM telemetry.metrics
                WHERE service = $service GROUP BY 1, 2
                """,
                {"deployed": deployed, "service": SERVICE},
            ).fetchall()
        }
        gone_before = {s: points.get((s, False), 0) for s in dropped}
        gone_after = {s: points.get((s, True), 0) for s in dropped}
        kept_after = {s: points.get((s, True), 0) for s in kept}
        checks = [
            Check(
                name="the series stop at the deploy while the others continue",
                passed=all(n > 0 for n in gone_before.values())
                and all(n == 0 for n in gone_after.values())
                and all(n > 0 for n in kept_after.values()),
                detail="points before/after the deploy: "
                + ", ".join(f"{s} {gone_before[s]}/{gone_after[s]}" for s in dropped)
                + (
                    "; still exported after it: "
                    + ", ".join(f"{s} {n}" for s, n in kept_after.items())
                    if kept
                    else ""
                ),
            )
        ]
        by_hour = con.sql(
            """
            SELECT request_ts::DATE AS day, hour(request_ts) AS hour,
                   request_ts >= $deployed AS after, count(*) AS n,
                   sum((status = 'error')::INT) AS errors
            FROM serving.predictions WHERE source = 'online' GROUP BY ALL
            """,
            params={"deployed": deployed},
        ).pl()
        peak = by_hour.filter(pl.col("hour").is_in(PEAK_HOURS))
        after = peak.filter(pl.col("after"))
        expected = expected_by_hour(after, self.error_share, calendar)
        n_after = int(after["n"].sum() or 0)
        want = float((after["n"] * pl.Series(expected, dtype=pl.Float64)).sum()) / max(n_after, 1)
        share_after = int(after["errors"].sum() or 0) / max(n_after, 1)
        before = peak.filter(~pl.col("after"))
        share_before = int(before["errors"].sum() or 0) / max(int(before["n"].sum() or 0), 1)
        checks.append(
            Check(
                name="online requests at peak fail far more often after the deploy",
                passed=share_after > 0.02 and share_after >= 0.5 * want and share_before <= 0.02,
                detail=f"peak-hour online error share {share_before:.3f} before the deploy, "
                f"{share_after:.3f} after ({n_after} requests; expected ~{want:.3f}; the alert "
                f"threshold is {ALERT.above})",
            )
        )
        # What the alert would have seen, recomputed from the requests the series came from.
        would_fire = con.execute(
            f"""
            WITH b AS (
                SELECT time_bucket(INTERVAL {BUCKET_MINUTES} MINUTE, request_ts) AS ts,
                       avg((status = 'error')::INT) > $above AS breach
                FROM serving.predictions
                WHERE source = 'online' AND request_ts >= $deployed GROUP BY 1
            ), runs AS (
                SELECT breach, ts, ts - INTERVAL {BUCKET_MINUTES} MINUTE * row_number()
                           OVER (PARTITION BY breach ORDER BY ts) AS grp
                FROM b
            )
            SELECT count(*) FROM (
                SELECT grp FROM runs WHERE breach GROUP BY grp HAVING count(*) >= $points
            )
            """,
            {"deployed": deployed, "above": ALERT.above, "points": ALERT.for_points},
        ).fetchall()[0][0]
        fired = con.execute(
            "SELECT count(*) FROM monitoring.alerts WHERE alert = ? AND started_at >= ?",
            [ALERT.name, deployed],
        ).fetchall()[0][0]
        rule = con.execute(
            "SELECT count(*) FROM monitoring.alert_rules WHERE name = ? AND metric = ?",
            [ALERT.name, ALERT.metric],
        ).fetchall()[0][0]
        # Too weak a failure share to breach the threshold twice in a row is possible only at
        # the smallest severities with a late onset and a long ramp.
        breachable = ALERT.above is not None and want >= 2 * ALERT.above
        checks.append(
            Check(
                name=f"{ALERT.name} stays silent although the requests breach its rule",
                passed=fired == 0 and rule == 1 and (would_fire > 0 or not breachable),
                detail=f"{fired} {ALERT.name} alerts after the deploy; the rule on "
                f"{ALERT.metric} {'is' if rule else 'is not'} still defined; recomputed from the "
                f"requests it would have fired {would_fire} time(s)",
            )
        )
        return checks
