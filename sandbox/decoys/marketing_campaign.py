"""A marketing email campaign sends subscribers to the app: online traffic jumps for a few days.

Ordinary business life: request rates, latency at peak and maybe a latency alert move, and they
move back. Nothing about the model or its data changes.
"""

from __future__ import annotations

from typing import Any, ClassVar

import duckdb
from pydantic import Field

from sandbox.clock import Calendar
from sandbox.faults.base import Check, Decoy, DecoyNote, DecoyParams, HookContext, Verdict, hook
from sandbox.faults.toolkit import window

TITLE = "marketing: spring catalogue email to all subscribers"


class Params(DecoyParams):
    days: int = Field(3, ge=1, le=7, description="How long the extra traffic lasts.")
    traffic_multiplier: float = Field(
        2.5, ge=1.5, le=5.0, description="Online request volume during the campaign, x normal."
    )


class MarketingCampaign(Decoy[Params]):
    id: ClassVar[str] = "marketing-campaign"
    actions: ClassVar[dict[str, Verdict]] = {
        "retrain": "harmful",
        "set-decision-threshold": "harmful",
        "set-drift-reference-window": "no effect",
        "set-imputation-fill": "no effect",
    }
    title: ClassVar[str] = "Marketing campaign traffic spike"

    def _active(self, day: int) -> bool:
        return self.params.day <= day < self.params.day + self.params.days

    @hook("serve.traffic")
    def more_visits(self, multiplier: float, ctx: HookContext) -> float:
        if self._active(ctx.day):
            return multiplier * self.params.traffic_multiplier
        return multiplier

    def changelog(self, calendar: Calendar) -> list[dict[str, Any]]:
        return [
            {
                "day": self.params.day,
                "hour": 8.0,
                "kind": "business",
                "service": "marketing",
                "title": TITLE,
                "body": f"New-season catalogue email; expect more app opens for about "
                f"{self.params.days} days.",
                "author": "growth-team",
            }
        ]

    def note(self, calendar: Calendar) -> DecoyNote:
        w = window(calendar, self.params.day, self.params.day + self.params.days - 1)
        start, end = w
        return DecoyNote(
            decoy_id=self.id,
            title=self.title,
            what_happened=f"An email campaign from {start} to {end} raised online prediction "
            f"traffic about {self.params.traffic_multiplier}x.",
            why_harmless="More requests from the same customers, scored by the same model on the "
            "same features; traffic and latency return to normal afterwards.",
            evidence=[
                w.metric(
                    "campaign-traffic",
                    "requests_per_second",
                    "model-server request rate jumps for the campaign days",
                ),
                w.changelog("campaign-notice", TITLE, "the campaign announcement"),
            ],
        )

    def verify(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> list[Check]:
        start = calendar.date(self.params.day)
        end = calendar.date(self.params.day + self.params.days - 1)
        during, other = con.execute(
            """
            WITH daily AS (
                SELECT request_ts::DATE AS d, count(*) AS n FROM serving.predictions
                WHERE source = 'online' GROUP BY 1
            )
            SELECT median(n) FILTER (WHERE d BETWEEN $1 AND $2),
                   median(n) FILTER (WHERE d NOT BETWEEN $1 AND $2)
            FROM daily
            """,
            [start, end],
        ).fetchall()[0]
        ratio = (during or 0) / other if other else 0.0
        return [
            Check(
                name="online traffic jumps during the campaign",
                passed=ratio >= 0.6 * self.params.traffic_multiplier,
                detail=f"median online requests per day {during} during, {other} otherwise "
                f"({ratio:.2f}x)",
            )
        ]
