"""Genuine drift: a competitor launches a cheap plan in one region and some customers there cool off.

Nothing in the pipeline is wrong. Watch time falls in that region, real churn rises there, the
drift reports flag the watch-time features, and the model - trained before the launch - under-rates
the new risk a little. The right call is to recognise a real change in the world: retrain (and
perhaps add a region signal), not hunt for a broken pipeline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import duckdb
import numpy as np
from pydantic import Field

from sandbox.clock import Calendar
from sandbox.faults.base import Check, Decoy, DecoyNote, DecoyParams, HookContext, Verdict, hook
from sandbox.faults.toolkit import window
from sandbox.product import REGIONS

if TYPE_CHECKING:
    # The world hands its state to the `world.state` hook; the world sits above the decoys, so
    # only the annotation names it (the hook checker compares annotation text).
    from sandbox.world.behaviour import WorldState


class Params(DecoyParams):
    region: Literal[tuple(REGIONS)] = Field(  # type: ignore[valid-type]
        "latam", description="Region where the competitor launches."
    )
    satisfaction_drop: float = Field(
        0.6, ge=0.2, le=1.5, description="Lasting drop in the region's latent satisfaction."
    )


class CompetitorLaunch(Decoy[Params]):
    id: ClassVar[str] = "competitor-launch"
    actions: ClassVar[dict[str, Verdict]] = {
        "retrain": "no effect",
        "set-decision-threshold": "harmful",
        "set-drift-reference-window": "no effect",
        "set-imputation-fill": "no effect",
    }
    title: ClassVar[str] = "Genuine drift: a competitor launches in one region"

    def _title(self) -> str:
        return f"market: competitor launches a low-price plan in {self.params.region.upper()}"

    @hook("world.state")
    def lower_satisfaction(self, state: WorldState, ctx: HookContext) -> WorldState:
        if ctx.day == self.params.day:
            hit = state.region == self.params.region
            drop = np.where(hit, self.params.satisfaction_drop, 0.0)
            # Lasting: people's own normal moves, not just today's mood.
            state.base_satisfaction = state.base_satisfaction - drop
            state.satisfaction_target = state.satisfaction_target - drop
        return state

    def changelog(self, calendar: Calendar) -> list[dict[str, Any]]:
        return [
            {
                "day": self.params.day,
                "hour": 9.0,
                "kind": "business",
                "service": "market",
                "title": self._title(),
                "body": "Competitive intel: aggressive intro pricing, bundled with a telco.",
                "author": "strategy",
            }
        ]

    def note(self, calendar: Calendar) -> DecoyNote:
        w = window(calendar, self.params.day)
        start = w.start
        return DecoyNote(
            decoy_id=self.id,
            title=self.title,
            what_happened=f"From {start} customers in {self.params.region} grew less satisfied "
            "(a competitor's launch): they watch less and churn more.",
            why_harmless="It is not a pipeline or model fault: the data describe the world "
            "correctly. Retraining on recent data (and watching the region) is the right answer.",
            evidence=[
                w.column(
                    "regional-watch-time",
                    "raw.viewing_activity.minutes_watched",
                    f"watch time in {self.params.region} falls after the launch",
                ),
                w.changelog("competitor-notice", self._title(), "the market notice"),
            ],
        )

    def verify(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> list[Check]:
        rows = con.execute(
            """
            SELECT c.region = $region AS hit,
                   avg(a.minutes_watched) FILTER (WHERE a.activity_date < $start) AS before,
                   avg(a.minutes_watched) FILTER (WHERE a.activity_date >= $settled) AS after
            FROM raw.viewing_activity a JOIN raw.customers c USING (customer_id)
            WHERE a.activity_date >= $start - INTERVAL 28 DAY
            GROUP BY 1
            """,
            {
                "region": self.params.region,
                "start": calendar.date(self.params.day),
                "settled": calendar.date(min(self.params.day + 10, calendar.last_visible_day)),
            },
        ).fetchall()
        change = {hit: (after or 0) / before for hit, before, after in rows if before}
        region, others = change.get(True, 1.0), change.get(False, 1.0)
        return [
            Check(
                name="watch time falls in the region, not elsewhere",
                passed=region < others - 0.05,
                detail=f"watch time after/before: {region:.2f} in {self.params.region}, "
                f"{others:.2f} elsewhere",
            )
        ]
