"""The gateway's telemetry store: the built world (attached read-only) plus the live rows the
services spool, behind the clock-filtered views the candidate queries.

The gateway is the only owner of live telemetry. It keeps it in an in-memory DuckDB rebuilt from
the spool files on start: the spool is the durable log (written before a service acknowledges
anything), the in-memory tables are its queryable copy: a query loads the new rows of the tables
it reads, so a row shows within a second of its write (`prepare`).
Live tables are created from the tables' declarations (`sandbox.schema`) and every spooled row is
checked against them before it is loaded (`spool.check`): a row that does not fit is refused, with
a message naming its table and column, and costs that row only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from sandbox import schema
from sandbox.actions import deployment, restore
from sandbox.actions.catalog import RESTORE_SERIES
from sandbox.actions.overrides import Overrides, first_live_batch
from sandbox.faults.base import FaultSet
from sandbox.layout import WorldPaths
from sandbox.monitor import alerts, metrics
from sandbox.services import spool
from sandbox.services.console import views

WORLD_CATALOG = "world"
# Every schema the world has; the candidate's queries may only name these.
CANDIDATE_SCHEMAS = schema.SCHEMAS
CLICKS = schema.SEARCH_CLICKS.name
PREDICTIONS = "serving.predictions"
SEARCHES = "retrieval.search_log"
METRICS = "telemetry.metrics"
ALERTS = "monitoring.alerts"
# What the gateway computes from other live rows (`schema.Live.spooled` false), by the table whose
# view adds it: the live services' metric series, and the alerts the world's rules fire on them.
COMPUTED = {METRICS: "live.computed_metrics", ALERTS: "live.computed_alerts"}
# The spooled tables whose rows the views of a table show, beyond its own: a search's click is
# joined to it, and the computed series and alerts are made from the live traffic.
_SERIES_FROM = frozenset({PREDICTIONS, SEARCHES, CLICKS, METRICS})
FED_BY = {SEARCHES: frozenset({SEARCHES, CLICKS}), METRICS: _SERIES_FROM, ALERTS: _SERIES_FROM}
# A query loads the rows spooled to the tables it reads once this long has passed since they
# were last loaded: a row shows within a second of its write, and the panels of a dashboard,
# sent together, pay for one load.
FRESH_S = 0.5
# Before any change from the ops console, the world's daily batch stands for every day.
NEVER = dt.datetime(9999, 12, 31)
REFUSALS_KEPT = 100  # the latest messages about refused rows, for whoever looks


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
        self.dropped = 0  # spooled rows refused or that no table could hold
        self.refusals: deque[str] = deque(maxlen=REFUSALS_KEPT)
        self._next_id: dict[str, int] = {}
        self.tables = self._world_tables()
        self.alert_rules = self._live_alert_rules()
        self.overrides = Overrides(self.paths.run)
        self.model_configs = deployment.ConfigHistory(
            self.paths, faults.rollouts(calendar, schema.MODEL_SERVER)
        )
        self._series_stale = False  # live rows came in since the series were computed
        self._loaded_at: dict[str, float] = {}  # table -> when its spooled rows were last loaded
        self._unevaluated: pl.DataFrame | None = None  # live series the alerts lag behind
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

    def _live_alert_rules(self) -> tuple[alerts.Rule, ...]:
        """The world's alert rules in force on the live services' series: the rules the
        candidate reads, evaluated live as the build evaluated them on the world's series."""
        rows = self.con.execute(
            f"SELECT name, service, metric, above, below, for_points, severity, summary "
            f"FROM {WORLD_CATALOG}.monitoring.alert_rules WHERE service IN "
            f"({', '.join(repr(s) for s in metrics.LIVE_SERIES_SERVICES)}) ORDER BY name"
        ).fetchall()
        return tuple(alerts.Rule(*row) for row in rows)

    def _create_live_tables(self) -> None:
        """Live tables have the declared columns plus `session_id`: the session whose own call
        produced the row, NULL for production's (see `views`)."""
        self.con.execute("CREATE SCHEMA live")
        for table in spool.LIVE_TABLES:
            declared = spool.SPOOLED_TABLES[table]
            self.con.execute(declared.create_sql(self._target(table), extra=[schema.SESSION]))
            if declared.id and declared.column(declared.id).type == "BIGINT":
                top = self.con.execute(
                    f"SELECT coalesce(max({declared.id}), 0) FROM {WORLD_CATALOG}.{table}"
                ).fetchall()[0][0]
                self._next_id[table] = int(top) + 1
        # A click counts for a search of the same caller only (the service refuses others).
        self.con.execute(
            f"CREATE VIEW {views.live_table(SEARCHES)} AS "
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
        # Computed from the live rows for a query that reads them (`schema.Live.spooled` false).
        for table, computed in COMPUTED.items():
            self.con.execute(schema.TABLES[table].create_sql(computed))

    @staticmethod
    def _target(table: str) -> str:
        """The live table a spooled table's rows are loaded into; searches are joined with their
        clicks by a view of that name."""
        return "live.search_requests" if table == SEARCHES else views.live_table(table)

    def _create_views(self) -> None:
        self.set_clock(self.con)
        for name in CANDIDATE_SCHEMAS:
            self.con.execute(f"CREATE SCHEMA IF NOT EXISTS {name}")
        for table, columns in self.tables.items():
            sql = views.view_sql(table, WORLD_CATALOG, columns)
            if table in COMPUTED:
                declared = schema.TABLES[table]
                sql += f" UNION ALL BY NAME SELECT * FROM {COMPUTED[table]} WHERE "
                sql += views.exists(declared)
                if declared.live is not None and declared.live.spooled_by:
                    # Rows a service spools beside the computed ones (production's only): the
                    # points the scheduler restored from the request logs.
                    sql += f" UNION ALL BY NAME SELECT {', '.join(columns)} FROM "
                    sql += f"{views.live_table(table)} WHERE session_id IS NULL AND "
                    sql += views.exists(declared)
            self.con.execute(f"CREATE VIEW {table} AS {sql}")

    def set_clock(self, con: duckdb.DuckDBPyConnection) -> dt.datetime:
        now = self.now()
        con.execute("SET VARIABLE sim_now = ?::TIMESTAMP", [now])
        con.execute("SET VARIABLE live_start = ?::TIMESTAMP", [self.live_start])
        first = first_live_batch(self.overrides.entries(), self.calendar)
        con.execute("SET VARIABLE world_batch_until = ?::TIMESTAMP", [first or NEVER])
        return now

    def cursor(self, session_id: str | None = None) -> duckdb.DuckDBPyConnection:
        """A connection for one query, its clock variables set to the simulated now and its
        session (whose own live rows the views show) to `session_id`."""
        cur = self.con.cursor()
        self.set_clock(cur)
        cur.execute("SET VARIABLE session_id = ?::VARCHAR", [session_id])
        return cur

    def ingest(self, tables: Iterable[str] | None = None) -> int:
        """Load the complete rows spooled since the last load, to `tables` (schema.table; None:
        every table); returns how many."""
        wanted = None if tables is None else set(tables)
        with self._lock:
            loaded = 0
            for _service, table, path in spool.spool_files(self.paths.run):
                if wanted is not None and table not in wanted:
                    continue
                records, offset = spool.read_new(path, self._offsets.get(path, 0))
                self._offsets[path] = offset
                if records:
                    rows = self._insert_valid(table, records)
                    loaded += rows
                    self._series_stale |= bool(rows) and table in _SERIES_FROM
            now = time.monotonic()
            for table in spool.LIVE_TABLES if wanted is None else wanted:
                self._loaded_at[table] = now
            return loaded

    def _insert_valid(self, table: str, records: list[dict[str, Any]]) -> int:
        """Insert the records that fit the table's declaration, refusing the others; if the batch
        fails, row by row, so that one row the table cannot hold costs that row only, never the
        batch or the gateway's start."""
        rows = []
        for record in records:
            try:
                rows.append(spool.check(table, record))
            except spool.BadRow as err:
                self._refuse(str(err))
        try:
            self._insert(table, rows)
            return len(rows)
        except Exception:
            kept = 0
            for row in rows:
                try:
                    self._insert(table, [row])
                    kept += 1
                except Exception as err:
                    self._refuse(f"{table}: a row could not be loaded: {err}")
            return kept

    def _refuse(self, message: str) -> None:
        self.dropped += 1
        self.refusals.append(message)
        print(f"refused a spooled row: {message}", file=sys.stderr, flush=True)

    def _insert(self, table: str, rows: list[dict[str, Any]]) -> None:
        """Load checked rows (`spool.check`); a row without its id gets the next one after the
        world's own."""
        if not rows:
            return
        declared = spool.SPOOLED_TABLES[table]
        if declared.id and table in self._next_id:
            for row in rows:
                if row[declared.id] is None:
                    row[declared.id] = self._next_id[table]
                    self._next_id[table] += 1
        types = declared.polars_schema() | {schema.SESSION.name: pl.Utf8()}
        cur = self.con.cursor()
        cur.register("incoming", pl.DataFrame(rows, schema=types))
        cur.execute(f"INSERT INTO {self._target(table)} BY NAME SELECT * FROM incoming")
        cur.unregister("incoming")

    def _recompute_metrics(self) -> None:
        cur = self.cursor()
        series = metrics.live_service_series(
            cur, views.production_table(PREDICTIONS), views.production_table(SEARCHES)
        )
        now = self.now()
        # Each point as the model server's configuration then left it: after a rollback past a
        # fault's rollout, that fault no longer acts on the points from then on.
        periods = self.model_configs.periods(self.overrides.entries(), now)
        series = restore.pipeline_kept(series, self.faults, self.seed, self.calendar, now, periods)
        cur.execute(f"DELETE FROM {COMPUTED[METRICS]}")
        cur.register("incoming", series)
        cur.execute(f"INSERT INTO {COMPUTED[METRICS]} BY NAME SELECT * FROM incoming")
        cur.unregister("incoming")
        self._unevaluated = series

    def prepare(self, tables: list[str]) -> None:
        """Bring what a query reading `tables` (schema.table) sees up to date: the rows spooled
        to those tables and to what their views show (`FED_BY`), loaded at most every `FRESH_S`.
        A query that reads no live table loads nothing. The live series are computed, and the
        alerts evaluated on them, for a query that reads them, not on every load: computing the
        series costs about 40 ms and the alerts about 20 ms, where most queries cost less."""
        # As DuckDB resolves them: `serving.PREDICTIONS` reads serving.predictions.
        tables = [table.lower() for table in tables]
        now = time.monotonic()
        fed = {t for table in tables for t in FED_BY.get(table, (table,)) if t in spool.LIVE_TABLES}
        stale = [t for t in fed if now - self._loaded_at.get(t, -FRESH_S) >= FRESH_S]
        if stale:
            with contextlib.suppress(Exception):  # a bad spool line must not stop the console
                self.ingest(stale)
        if METRICS not in tables and ALERTS not in tables:
            return
        with self._lock:
            if self._series_stale:
                try:
                    self._recompute_metrics()
                    self._series_stale = False
                except Exception as exc:  # the last series stand; the next query tries again
                    print(f"live metric series not recomputed: {exc}", file=sys.stderr, flush=True)
            if ALERTS not in tables:
                return
            series, self._unevaluated = self._unevaluated, None
            if series is not None:
                cur = self.cursor()
                try:
                    self._evaluate_alerts(cur, series, self.now())
                finally:
                    cur.close()

    def _evaluate_alerts(
        self, cur: duckdb.DuckDBPyConnection, series: pl.DataFrame, now: dt.datetime
    ) -> None:
        """The world's alert rules over the live series' complete points (as the candidate's
        series show them), the restored ones included from the restore on: a rule running then
        would not have seen the backfilled breaches."""
        cur.register("series", series)
        complete = cur.sql(
            f"SELECT * FROM series WHERE {schema.METRIC_COMPLETE} <= $now", params={"now": now}
        ).pl()
        cur.unregister("series")
        restored = self.overrides.in_effect(RESTORE_SERIES, now)
        if restored:
            points = cur.sql(
                f"SELECT {', '.join(metrics.SERIES_SCHEMA)} FROM {views.live_table(METRICS)} "
                "WHERE session_id IS NULL AND ts >= $since",
                params={"since": restore.floor_bucket(restored[0].effective_at)},
            ).pl()
            complete = pl.concat([complete, points.cast(metrics.SERIES_SCHEMA)])  # type: ignore[arg-type]
        cur.execute(f"DELETE FROM {COMPUTED[ALERTS]}")
        cur.register("incoming", alerts.evaluate(complete, self.alert_rules))
        cur.execute(f"INSERT INTO {COMPUTED[ALERTS]} BY NAME SELECT * FROM incoming")
        cur.unregister("incoming")
