"""What a hook handler is given besides its value: the day, the seed, and the world so far.

`WorldData` reads the world's tables as they stand when the hook runs (during a build, everything
written up to that moment of the simulated day; in a running stack, the built world). It only
reads: a handler that needs an earlier day's rows asks for them instead of keeping them, so a
fault behaves the same in a build, in a rebuild and in a service that starts mid-history.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from sandbox.clock import Calendar


class NotReadOnly(ValueError):
    """A hook asked the world's data to run something other than one SELECT."""


class WorldData:
    """Read-only SQL over the world's tables; `frames` are registered as views for the query."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection | None,
        before_read: Callable[[], None] = lambda: None,
    ) -> None:
        self._con = con
        self._before_read = before_read  # e.g. a build writing its buffered rows first
        self._path: Path | None = None
        self._opening = threading.Lock()

    @classmethod
    def read_only(cls, duckdb_file: Path) -> WorldData:
        """A built world's data, opened read-only when a hook first asks (a live service whose
        planted hooks never read pays nothing)."""
        data = cls(None)
        data._path = duckdb_file
        return data

    def _connection(self) -> duckdb.DuckDBPyConnection | None:
        with self._opening:
            if self._con is None and self._path is not None:
                self._con = duckdb.connect(str(self._path), read_only=True)
            return self._con

    def sql(
        self, query: str, params: dict[str, Any] | None = None, **frames: pl.DataFrame
    ) -> pl.DataFrame:
        statements = duckdb.extract_statements(query)
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            raise NotReadOnly(f"hooks may only read the world's data (one SELECT): {query!r}")
        con = self._connection()
        if con is None:
            raise LookupError("this hook point runs without the world's data")
        self._before_read()
        cursor = con.cursor()  # its own registrations, gone when it closes
        try:
            for name, frame in frames.items():
                cursor.register(name, frame.to_arrow())
            return cursor.sql(query, params=params).pl()
        finally:
            cursor.close()


NO_DATA = WorldData(None)


@dataclass(frozen=True)
class HookContext:
    seed: int
    day: int
    calendar: Calendar
    data: WorldData = field(default=NO_DATA)
    # The service's configuration in effect, when an ops-console rollback changed it: as rolled
    # out at this time, so a change a fault rolled out later is not in effect (`Planted.rollouts`).
    # None: the service runs what the world left, every change from its own time.
    config_as_of: dt.datetime | None = None

    def rolled_out(self, at: dt.datetime) -> bool:
        """Whether a change rolled out at `at` is in the service's configuration in effect."""
        return self.config_as_of is None or self.config_as_of >= at
