"""An unrelated infrastructure incident: a node pool degrades for a while and recovers.

Model-server latency and errors spike, the latency and error alerts fire, an incident is opened
and closed. It is loud, it is real, and it has nothing to do with the model's quality.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

import duckdb
import polars as pl
from pydantic import Field

from sandbox import rng
from sandbox.clock import Calendar
from sandbox.faults.base import Check, Decoy, DecoyNote, DecoyParams, HookContext, Verdict, hook
from sandbox.faults.toolkit import Window

SLOWDOWN = 7.0  # latency multiple during the incident
ERROR_SHARE = 0.12


class Params(DecoyParams):
    hour: float = Field(19.5, ge=0, le=23, description="Hour of day the incident starts.")
    minutes: int = Field(45, ge=15, le=180, description="How long until it is mitigated.")


class InfraIncident(Decoy[Params]):
    id: ClassVar[str] = "infra-incident"
    actions: ClassVar[dict[str, Verdict]] = {
        "rollback-deploy": "no effect",
        "pause-job": "harmful",
        "set-decision-threshold": "no effect",
        "set-imputation-fill": "no effect",
    }
    title: ClassVar[str] = "Unrelated infrastructure incident that recovered"

    def _window(self, calendar: Calendar) -> tuple[dt.datetime, dt.datetime]:
        start = calendar.at(self.params.day, self.params.hour)
        return start, start + dt.timedelta(minutes=self.params.minutes)

    def _incident_id(self) -> str:
        return f"INC-{2300 + self.params.day * 7 % 97}"

    @hook("serve.features")
    def slow_down(self, value: pl.DataFrame, ctx: HookContext) -> pl.DataFrame:
        if ctx.day != self.params.day:
            return value
        start, end = self._window(ctx.calendar)
        hit = (
            (pl.col("source") == "online")
            & (pl.col("request_ts") >= start)
            & (pl.col("request_ts") < end)
        )
        g = rng.stream(ctx.seed, "infra-incident", ctx.day)
        failing = pl.Series(g.random(value.height) < ERROR_SHARE)
        return value.with_columns(
            pl.when(hit & failing)
            .then(pl.lit("error"))
            .otherwise(pl.col("status"))
            .alias("status"),
            pl.when(hit & failing)
            .then(pl.lit(2000.0))
            .when(hit)
            .then((pl.col("latency_ms") * SLOWDOWN).round(2))
            .otherwise(pl.col("latency_ms"))
            .alias("latency_ms"),
        )

    def changelog(self, calendar: Calendar) -> list[dict[str, Any]]:
        minutes = self.params.minutes
        return [
            {
                "day": self.params.day,
                "hour": self.params.hour + minutes / 60 + 0.25,
                "kind": "incident",
                "service": "model-server",
                "title": f"{self._incident_id()}: model-server node pool degraded, {minutes} minutes",
                "body": "Noisy neighbour on two nodes; pods rescheduled, latency back to normal. "
                "Postmortem: no data loss, requests retried by clients.",
                "author": "sre",
            }
        ]

    def note(self, calendar: Calendar) -> DecoyNote:
        start, end = self._window(calendar)
        w = Window(start.date(), end.date())
        return DecoyNote(
            decoy_id=self.id,
            title=self.title,
            what_happened=f"Between {start:%Y-%m-%d %H:%M} and {end:%H:%M} the model server ran "
            f"about {SLOWDOWN:.0f}x slower and failed ~{ERROR_SHARE:.0%} of requests; latency "
            "and error alerts fired, and it recovered.",
            why_harmless="It lasted under a few hours and affected availability only: scores, "
            "features and the model are the same before and after.",
            evidence=[
                w.metric(
                    "incident-latency", "latency_p99_ms", "p99 latency spike during the incident"
                ),
                w.changelog(
                    "incident-record", self.changelog(calendar)[0]["title"], "the incident record"
                ),
            ],
        )

    def verify(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> list[Check]:
        start, end = self._window(calendar)
        inside, outside = con.execute(
            """
            SELECT quantile_cont(latency_ms, 0.5) FILTER (WHERE request_ts >= $1 AND request_ts < $2),
                   quantile_cont(latency_ms, 0.5) FILTER (WHERE request_ts::DATE = $1::DATE
                                                          AND NOT (request_ts >= $1 AND request_ts < $2))
            FROM serving.predictions WHERE source = 'online' AND status = 'ok'
            """,
            [start, end],
        ).fetchall()[0]
        ratio = (inside or 0.0) / outside if outside else 0.0
        return [
            Check(
                name="model-server latency spikes during the incident only",
                passed=ratio >= 0.5 * SLOWDOWN,
                detail=f"median latency {inside} ms during, {outside} ms the rest of that day "
                f"({ratio:.1f}x)",
            )
        ]
