"""The gateway's telemetry store: the built world (attached read-only) plus the live rows the
services spool, behind the clock-filtered views the candidate queries.

The gateway is the only owner of live telemetry. It keeps it in an in-memory DuckDB rebuilt from
the spool files on start: the spool is the durable log (written before a service acknowledges
anything), the in-memory tables are its queryable copy, loaded again within a second of a write.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from sandbox.faults.base import FaultSet, HookContext
from sandbox.layout import WorldPaths
from sandbox.monitor import metrics
from sandbox.services import spool
from sandbox.services.gateway import views

WORLD_CATALOG = "world"
# Every schema the world has; the candidate's queries may only name these.
CANDIDATE_SCHEMAS = (
    "raw",
    "feature_store",
    "training",
    "serving",
    "crm",
    "labels",
    "retrieval",
    "monitoring",
    "telemetry",
    "ops",
)
CLICKS = "retrieval.search_clicks"
PREDICTIONS = "serving.predictions"
SEARCHES = "retrieval.search_log"
ID_COLUMNS = {"serving.predictions": "prediction_id"}
LIVE_METRICS = "live.computed_metrics"


class LiveTelemetry:
    """One DuckDB instance: world views, live tables, and the ingest of spooled rows. Its
    `memory_limit` (DuckDB's, such as "512MB") and query `time_limit_s` are its owner's to set:
    a console worker's come from the stack's settings."""

    def __init__(
        self,
        world: Path,
        now: Callable[[], dt.datetime],
        live_start: dt.datetime,
        faults: FaultSet,
        seed: int,
        calendar: Any,
        *,
        memory_limit: str,
        time_limit_s: float,
        threads: int | None = None,
    ) -> None:
        self.paths = WorldPaths(world)
        self.memory_limit = memory_limit
        self.time_limit_s = time_limit_s
        self.now = now
        self.live_start = live_start
        self.faults = faults
        self.seed = seed
        self.calendar = calendar
        # Spills go under run/, not into whatever directory the stack was started from.
        spill = self.paths.run / "duckdb-spill"
        self.con = duckdb.connect(
            ":memory:",
            config={"memory_limit": memory_limit, "temp_directory": str(spill)}
            | ({"threads": threads} if threads else {}),
        )
        self.con.execute(f"ATTACH '{self.paths.duckdb}' AS {WORLD_CATALOG} (READ_ONLY)")
        self._lock = threading.Lock()
        self._offsets: dict[Path, int] = {}
        self.dropped = 0  # spooled rows no table could hold
        self._next_id: dict[str, int] = {}
        self.tables = self._world_tables()
        self._create_live_tables()
        self._create_views()
        # From here on: what the candidate's views have, columns the views add included.
        self.tables = {t: views.view_columns(t, columns) for t, columns in self.tables.items()}
        self.ingest()
        # From here on no query may reach a file, install or load code, or change settings.
        self.con.execute("SET enable_external_access = false")
        self.con.execute("SET autoinstall_known_extensions = false")
        self.con.execute("SET autoload_known_extensions = false")
        # GLOBAL: a LOCAL setting would bind this connection only, not the per-query cursors.
        self.con.execute(f"SET GLOBAL max_execution_time = {round(time_limit_s * 1000)}")
        self.con.execute("SET lock_configuration = true")

    def _world_tables(self) -> dict[str, list[str]]:
        rows = self.con.execute(
            "SELECT schema_name || '.' || table_name, list(column_name ORDER BY column_index) "
            "FROM duckdb_columns() WHERE database_name = ? GROUP BY ALL ORDER BY 1",
            [WORLD_CATALOG],
        ).fetchall()
        return {name: columns for name, columns in rows}

    def _create_live_tables(self) -> None:
        """Live tables have the world table's columns plus `session_id`: the session whose own
        call produced the row, NULL for production's (see `views`)."""
        self.con.execute("CREATE SCHEMA live")
        for table in spool.LIVE_TABLES:
            if table == CLICKS:
                self.con.execute(
                    f"CREATE TABLE {views.live_table(CLICKS)} (request_id BIGINT, "
                    "clicked_article_id BIGINT, click_rank BIGINT, clicked_at TIMESTAMP, "
                    "session_id VARCHAR)"
                )
                continue
            target = views.live_table(table)
            if table == "retrieval.search_log":
                target = "live.search_requests"  # clicks are folded in by a view below
            self.con.execute(
                f"CREATE TABLE {target} AS SELECT *, NULL::VARCHAR AS session_id "
                f"FROM {WORLD_CATALOG}.{table} LIMIT 0"
            )
            id_column = ID_COLUMNS.get(table)
            if id_column:
                top = self.con.execute(
                    f"SELECT coalesce(max({id_column}), 0) FROM {WORLD_CATALOG}.{table}"
                ).fetchall()[0][0]
                self._next_id[table] = int(top) + 1
        # A click counts for a search of the same caller only (the service refuses others).
        self.con.execute(
            f"CREATE VIEW {views.live_table('retrieval.search_log')} AS "
            "SELECT s.* REPLACE (c.clicked_article_id AS clicked_article_id, "
            "c.click_rank AS click_rank) FROM live.search_requests s "
            f"LEFT JOIN (SELECT DISTINCT ON (request_id) * FROM {views.live_table(CLICKS)} "
            f"WHERE clicked_at <= {views.NOW} ORDER BY request_id, clicked_at) c "
            "ON c.request_id = s.request_id AND c.session_id IS NOT DISTINCT FROM s.session_id"
        )
        # What the shared metric series are computed from: no session's calls move them.
        for table in (PREDICTIONS, SEARCHES):
            self.con.execute(
                f"CREATE VIEW {views.production_table(table)} AS "
                f"SELECT * FROM {views.live_table(table)} WHERE session_id IS NULL"
            )
        # Live series of the live services, recomputed on ingest; spooled series join them.
        self.con.execute(
            f"CREATE TABLE {LIVE_METRICS} AS SELECT * FROM {WORLD_CATALOG}.telemetry.metrics LIMIT 0"
        )

    def _create_views(self) -> None:
        self.set_clock(self.con)
        for schema in CANDIDATE_SCHEMAS:
            self.con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        for table, columns in self.tables.items():
            sql = views.view_sql(table, WORLD_CATALOG, columns)
            if table == "telemetry.metrics":
                sql += f" UNION ALL BY NAME SELECT * FROM {LIVE_METRICS} WHERE "
                sql += f"{metrics.METRIC_COMPLETE} <= {views.NOW}"
            self.con.execute(f"CREATE VIEW {table} AS {sql}")

    def set_clock(self, con: duckdb.DuckDBPyConnection) -> dt.datetime:
        now = self.now()
        con.execute("SET VARIABLE sim_now = ?::TIMESTAMP", [now])
        con.execute("SET VARIABLE live_start = ?::TIMESTAMP", [self.live_start])
        return now

    def cursor(self, session_id: str | None = None) -> duckdb.DuckDBPyConnection:
        """A connection for one query, its clock variables set to the simulated now and its
        session (whose own live rows the views show) to `session_id`."""
        cur = self.con.cursor()
        self.set_clock(cur)
        cur.execute("SET VARIABLE session_id = ?::VARCHAR", [session_id])
        return cur

    def ingest(self) -> int:
        """Load complete spooled rows written since the last call; returns how many."""
        with self._lock:
            loaded = 0
            for _service, table, path in spool.spool_files(self.paths.run):
                records, offset = spool.read_new(path, self._offsets.get(path, 0))
                self._offsets[path] = offset
                if records:
                    loaded += self._insert_valid(table, records)
            if loaded:
                self._recompute_metrics()
            return loaded

    def _insert_valid(self, table: str, records: list[dict[str, Any]]) -> int:
        """Insert a batch; if it fails, row by row, so that one row the table cannot hold
        (a value out of range) costs that row only, never the batch or the gateway's start."""
        try:
            self._insert(table, records)
            return len(records)
        except Exception:
            kept = 0
            for record in records:
                with contextlib.suppress(Exception):
                    self._insert(table, [record])
                    kept += 1
            self.dropped += len(records) - kept
            return kept

    def _insert(self, table: str, records: list[dict[str, Any]]) -> None:
        cur = self.con.cursor()
        target = (
            "live.search_requests" if table == "retrieval.search_log" else views.live_table(table)
        )
        schema = dict(cur.sql(f"SELECT * FROM {target} LIMIT 0").pl().schema)
        frame = pl.DataFrame(records, infer_schema_length=None)
        id_column = ID_COLUMNS.get(table)
        if id_column and id_column not in frame.columns:  # ids the service did not give itself
            start = self._next_id[table]
            frame = frame.with_columns(pl.int_range(start, start + frame.height).alias(id_column))
            self._next_id[table] = start + frame.height
        frame = frame.select([_column(frame, name, dtype) for name, dtype in schema.items()])
        cur.register("incoming", frame)
        cur.execute(f"INSERT INTO {target} BY NAME SELECT * FROM incoming")
        cur.unregister("incoming")

    def _recompute_metrics(self) -> None:
        cur = self.cursor()
        series = metrics.live_service_series(
            cur, views.production_table(PREDICTIONS), views.production_table(SEARCHES)
        )
        now = self.now()
        series = self.faults.apply(
            "monitor.metrics",
            series,
            HookContext(self.seed, self.calendar.day_of(now), self.calendar),
        )
        cur.execute(f"DELETE FROM {LIVE_METRICS}")
        cur.register("incoming", series)
        cur.execute(f"INSERT INTO {LIVE_METRICS} BY NAME SELECT * FROM incoming")
        cur.unregister("incoming")


def _column(frame: pl.DataFrame, name: str, dtype: pl.DataType) -> pl.Expr:
    if name not in frame.columns:
        return pl.lit(None, dtype=dtype).alias(name)
    column = pl.col(name)
    if isinstance(dtype, pl.Datetime):
        return column.str.to_datetime(time_unit="us", strict=False).alias(name)
    if dtype == pl.Date:
        return column.str.to_date(strict=False).alias(name)
    return column.cast(dtype, strict=False).alias(name)
