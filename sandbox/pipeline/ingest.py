"""Stage 1: raw source tables as the warehouse receives them, with event and ingestion timestamps."""

from __future__ import annotations

import numpy as np
import polars as pl

from sandbox import rng
from sandbox.clock import Calendar
from sandbox.faults.base import FaultSet, HookContext


def _ingested_at(calendar: Calendar, day: int, n: int, g: np.random.Generator) -> pl.Series:
    """Upstream loads land shortly after midnight, before the 02:00 feature job."""
    return _timestamps(calendar, day + 1, g.uniform(0.25, 1.6, n))


def _timestamps(calendar: Calendar, day: int, hours: np.ndarray) -> pl.Series:
    base = np.datetime64(calendar.midnight(day), "us")
    return pl.Series(base + (hours * 3_600_000_000).astype("timedelta64[us]"))


class Ingest:
    """Turns one simulated day's events into raw rows, passing each through its ingest hook."""

    def __init__(self, seed: int, calendar: Calendar, faults: FaultSet) -> None:
        self.seed = seed
        self.calendar = calendar
        self.faults = faults
        self._next_billing_id = 1
        self._next_ticket_id = 1

    def _ctx(self, day: int) -> HookContext:
        return HookContext(seed=self.seed, day=day, calendar=self.calendar)

    def activity(self, day: int, frame: pl.DataFrame) -> pl.DataFrame:
        g = rng.stream(self.seed, "ingest.activity", day)
        rows = frame.select(
            "customer_id",
            pl.lit(self.calendar.date(day)).alias("activity_date"),
            "sessions",
            "minutes_watched",
            "playback_errors",
            "app_version",
            "device",
        ).with_columns(_ingested_at(self.calendar, day, frame.height, g).alias("ingested_at"))
        return self.faults.apply("ingest.activity", rows, self._ctx(day))

    def billing(self, day: int, frame: pl.DataFrame) -> pl.DataFrame:
        g = rng.stream(self.seed, "ingest.billing", day)
        n = frame.height
        ids = np.arange(self._next_billing_id, self._next_billing_id + n, dtype=np.int64)
        self._next_billing_id += n
        rows = pl.DataFrame(
            {
                "event_id": ids,
                "customer_id": frame["customer_id"],
                "event_ts": _timestamps(self.calendar, day, frame["hour"].to_numpy()),
                "amount": frame["amount"],
                "currency": ["USD"] * n,
                "status": frame["status"],
                "attempt": frame["attempt"],
                "payment_method": frame["payment_method"],
            },
            schema_overrides={"currency": pl.Utf8, "status": pl.Utf8, "payment_method": pl.Utf8},
        ).with_columns(_ingested_at(self.calendar, day, n, g).alias("ingested_at"))
        return self.faults.apply("ingest.billing", rows, self._ctx(day))

    def ticket_ids(self, n: int) -> np.ndarray:
        ids = np.arange(self._next_ticket_id, self._next_ticket_id + n, dtype=np.int64)
        self._next_ticket_id += n
        return ids

    def tickets(self, day: int, frame: pl.DataFrame) -> pl.DataFrame:
        g = rng.stream(self.seed, "ingest.tickets", day)
        rows = frame.with_columns(
            _ingested_at(self.calendar, day, frame.height, g).alias("ingested_at")
        )
        return self.faults.apply("ingest.tickets", rows, self._ctx(day))

    def cancellations(self, day: int, frame: pl.DataFrame) -> pl.DataFrame:
        g = rng.stream(self.seed, "ingest.subscriptions", day)
        return pl.DataFrame(
            {
                "customer_id": frame["customer_id"],
                "event_type": ["cancel"] * frame.height,
                "event_ts": _timestamps(self.calendar, day, frame["hour"].to_numpy()),
                "reason": frame["reason"],
            },
            schema_overrides={"event_type": pl.Utf8, "reason": pl.Utf8},
        ).with_columns(_ingested_at(self.calendar, day, frame.height, g).alias("ingested_at"))
