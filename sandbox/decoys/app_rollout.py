"""A benign app release rolls out on one device: a new app_version string, nothing else.

Candidates who slice by app version will see the new version's share grow in the same weeks the
trouble starts. Its customers behave exactly like everyone else's.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import duckdb
import polars as pl
from pydantic import Field

from sandbox.clock import Calendar
from sandbox.faults.base import Check, Decoy, DecoyNote, DecoyParams, HookContext, Verdict, hook
from sandbox.faults.toolkit import window
from sandbox.product import DEVICES
from sandbox.rng import stable_unit


class Params(DecoyParams):
    device: Literal[tuple(DEVICES)] = Field(  # type: ignore[valid-type]
        "android", description="Device whose app gets the release."
    )
    version: str = Field("6.0.0", pattern=r"^\d+\.\d+\.\d+$", description="The new app version.")
    rollout_days: int = Field(5, ge=1, le=14, description="Days until every customer has it.")


class AppRollout(Decoy[Params]):
    id: ClassVar[str] = "app-rollout"
    actions: ClassVar[dict[str, Verdict]] = {
        "rollback-deploy": "no effect",
        "retrain": "no effect",
        "set-decision-threshold": "harmful",
        "set-imputation-fill": "no effect",
        # Its customers' watch time is true: quarantined, it is replaced by fill values.
        "quarantine-app-release": "harmful",
    }
    title: ClassVar[str] = "Benign app-version rollout"

    def _share(self, day: int) -> float:
        if day < self.params.day:
            return 0.0
        return min(1.0, (day - self.params.day + 1) / self.params.rollout_days)

    @hook("ingest.activity")
    def update_some_devices(self, value: pl.DataFrame, ctx: HookContext) -> pl.DataFrame:
        share = self._share(ctx.day)
        if share == 0:
            return value
        updated = pl.Series(stable_unit(value["customer_id"].to_numpy(), self.id) < share)
        return value.with_columns(
            pl.when(updated & (pl.col("device") == self.params.device))
            .then(pl.lit(self.params.version))
            .otherwise(pl.col("app_version"))
            .alias("app_version")
        )

    def acts_when(self) -> dict[str, dict[str, list[Any]]]:
        return {
            "quarantine-app-release": {
                "device": [self.params.device],
                "app_version": [self.params.version],
            }
        }

    def _title(self) -> str:
        return f"{self.params.device} app {self.params.version} staged rollout"

    def changelog(self, calendar: Calendar) -> list[dict[str, Any]]:
        return [
            {
                "day": self.params.day,
                "hour": 11.0,
                "kind": "deploy",
                "service": "mobile-apps",
                "title": self._title(),
                "body": f"New home screen and download manager; staged over "
                f"{self.params.rollout_days} days.",
                "author": "apps-team",
            }
        ]

    def note(self, calendar: Calendar) -> DecoyNote:
        w = window(calendar, self.params.day)
        start = w.start
        return DecoyNote(
            decoy_id=self.id,
            title=self.title,
            what_happened=f"{self.params.device} app {self.params.version} rolled out from "
            f"{start} over {self.params.rollout_days} days.",
            why_harmless="Only the app_version label changes: watch time, sessions, errors and "
            "churn of its users match the users of the previous version.",
            evidence=[
                w.column(
                    "app-version",
                    "raw.viewing_activity.app_version",
                    "the new version's share grows after the rollout",
                ),
                w.changelog("app-release-note", self._title(), "the rollout announcement"),
            ],
        )

    def verify(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> list[Check]:
        before, after, since = con.execute(
            """
            SELECT avg((app_version = $v)::INT) FILTER (WHERE activity_date < $start),
                   avg((app_version = $v)::INT) FILTER (WHERE activity_date >= $full),
                   avg((app_version = $v)::INT) FILTER (WHERE activity_date >= $start)
            FROM raw.viewing_activity WHERE device = $device
            """,
            {
                "v": self.params.version,
                "start": calendar.date(self.params.day),
                "full": calendar.date(self.params.day + self.params.rollout_days),
                "device": self.params.device,
            },
        ).fetchall()[0]
        return [
            Check(
                name="the new app version rolls out after its day",
                # A rollout that ends after the last visible day only has to have started.
                passed=(before or 0.0) == 0.0
                and ((after or 0.0) >= 0.95 if after is not None else (since or 0.0) > 0),
                detail=f"share of {self.params.device} activity on {self.params.version}: "
                f"{before} before, {after} once fully rolled out",
            )
        ]
