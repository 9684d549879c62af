"""The scheduled jobs of the running stack: each live day's online-store materialization and drift
report, run when the shared simulated clock reaches their hour.

Schedule, per live day D (`Calendar.last_production_day + 1 .. last_visible_day`):
    materialize  D at MATERIALIZE_HOUR (04:00)  the day's online-store load -> ops.materialization_runs
    drift        D at 00:30 on D + 1            D's batch-scored features -> monitoring.drift_daily
                                                and monitoring.drift_feature_daily
The clock stops at the end of the last visible day, so that day's drift report never falls due.

Ops-console actions act here, each from its effective time (simulated): `pause-job` skips a
paused job's runs until `resume-job` takes effect (pausing the feature job or the materialization
skips the online-store load, which the model server then does not serve either; pausing the drift
monitor skips the report), each skip logged and counted; `set-drift-reference-window` makes each
later report compare its day with the chosen window (`reference_window`) instead of the configured
reference.

`restore-metric-series` acts here too: from its effective time the scheduler recomputes, from the
request logs, the model-server points the metric pipeline drops, over the chosen days before it and
each 5-minute bucket from then on, and spools them (`SeriesRestorer`).

Otherwise what the jobs do is fixed by the built world: the online store's loads are on disk as snapshots
(the model server reads them itself; this job records the load), and the drift report compares the
day's batch-scored rows with the first deployment's training reference exactly as the build does
for production days, with whatever acts at the monitor's reference hook. Their rows and log lines
go to the spool, stamped with the run's scheduled time, so live rows look like history.

Each job runs once per day: a run whose row is already in the spool is done. Runs that fell due
while the process was down run at start. Evidently is heavy (seconds and hundreds of MB to import),
so a drift run happens in a short-lived child process (`--drift-days`, its own process group, at a
lower CPU priority) that runs Evidently itself; the scheduler stays small at idle and a stop
request kills the whole group.

Run as `python -m sandbox.services.jobs --world DIR --port P`; the port serves Prometheus metrics
on every path (so `GET /health` answers 200 once ready).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
from prometheus_client import CollectorRegistry, Counter, Gauge

from sandbox import scenario, schema
from sandbox.actions import deployment, restore
from sandbox.actions.catalog import DRIFT_MONITOR_JOB, ONLINE_STORE_JOBS, RESTORE_SERIES
from sandbox.actions.overrides import Applied, Overrides
from sandbox.clock import Calendar
from sandbox.faults.base import HookContext, WorldData
from sandbox.layout import WorldPaths
from sandbox.monitor.drift import DriftMonitor
from sandbox.pipeline.deploy import online_snapshots
from sandbox.pipeline.features import MODEL_FEATURES
from sandbox.pipeline.store import MATERIALIZE_HOUR
from sandbox.services import spool
from sandbox.services.batch_rerun import DAILY_DIR
from sandbox.services.common import ServiceContext, add_fd_option, metrics_server
from sandbox.services.spool import read_new
from sandbox.world.routine_logs import (
    DRIFT_MONITOR,
    MATERIALIZATION,
    drift_message,
    materialization_message,
)

SERVICE = "scheduler"
MATERIALIZE = "materialize"
DRIFT = "drift"
JOBS = (MATERIALIZE, DRIFT)
# The `service` of each job's log lines: the names the gateway swaps for live rows at live start.
LOG_SERVICE = {MATERIALIZE: MATERIALIZATION, DRIFT: DRIFT_MONITOR}
TABLE = {MATERIALIZE: "ops.materialization_runs", DRIFT: "monitoring.drift_daily"}
FEATURE_TABLE = "monitoring.drift_feature_daily"
SKIPPED = {MATERIALIZE: "materialization_skipped", DRIFT: "drift_report_skipped"}
DRIFT_DELAY = dt.timedelta(minutes=30)  # after the end of the report day
SLICE = 0.25  # longest uninterrupted wait (wall seconds), so a stop request is honoured promptly
CHILD_GRACE = 2.0  # wall seconds a stopped drift run gets before it is killed
CHILD_NICE = 10
CHILD_ENV = {"POLARS_MAX_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


class JobError(RuntimeError):
    """A run could not produce its output; the message names the job and the day."""


class Stopped(RuntimeError):
    """The process was asked to stop while a run was under way."""


@dataclass(frozen=True, order=True)
class Run:
    due: dt.datetime
    job: str
    day: int


def schedule(calendar: Calendar) -> list[Run]:
    """Every job run of the live days, in due order."""
    runs = []
    for day in range(calendar.last_production_day + 1, calendar.last_visible_day + 1):
        runs.append(Run(calendar.at(day, MATERIALIZE_HOUR), MATERIALIZE, day))
        runs.append(Run(drift_due(calendar, day), DRIFT, day))
    return sorted(runs)


def drift_due(calendar: Calendar, day: int) -> dt.datetime:
    """When day `day`'s drift report runs."""
    return calendar.midnight(day + 1) + DRIFT_DELAY


def completed(ctx: ServiceContext) -> set[tuple[str, int]]:
    """(job, day) of every run whose row is already in the spool, or that was skipped."""
    done = set()
    cal = ctx.calendar
    logs, _ = read_new(ctx.spool("telemetry.logs").path, 0)
    for record in logs:
        if record.get("event") in SKIPPED.values():
            with contextlib.suppress(KeyError, TypeError, ValueError):
                attrs = json.loads(record["attrs"])
                done.add((attrs["skipped_job"], cal.day_of(dt.date.fromisoformat(attrs["day"]))))
    for job, column in ((MATERIALIZE, "materialized_at"), (DRIFT, "report_date")):
        records, _ = read_new(ctx.spool(TABLE[job]).path, 0)
        for record in records:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                done.add((job, cal.day_of(dt.date.fromisoformat(str(record[column])[:10]))))
    return done


def _log(
    ctx: ServiceContext,
    ts: dt.datetime,
    job: str,
    level: str,
    event: str,
    message: str,
    **attrs: Any,
) -> None:
    # ctx.log stamps the process's own name and now; a job's lines carry the job's service name
    # and the run's scheduled time, as the history's lines do.
    ctx.spool("telemetry.logs").write(
        {
            "ts": ts.isoformat(),
            "service": LOG_SERVICE[job],
            "level": level,
            "event": event,
            "message": message,
            "attrs": json.dumps(attrs, sort_keys=True, default=str),
        }
    )


# ---------------------------------------------------------------------------------------------
# Materialization


def run_materialization(ctx: ServiceContext, day: int) -> dict[str, Any]:
    """Record day `day`'s online-store load: its ops.materialization_runs row and log line."""
    cal = ctx.calendar
    loads = [
        (at, path)
        for at, path in online_snapshots(ctx.paths.online_store)
        if cal.day_of(at) == day and at <= cal.at(day, MATERIALIZE_HOUR)
    ]
    if not loads:
        raise JobError(f"materialization for {cal.date(day)}: no online-store load on disk")
    materialized_at, path = loads[-1]
    rows, newest = (
        pl.scan_parquet(path).select(pl.len(), pl.col("event_timestamp").max()).collect().row(0)
    )
    row = {
        "materialized_at": materialized_at.isoformat(),
        "rows": int(rows),
        "max_event_timestamp": newest.isoformat() if newest is not None else None,
        "status": "success",
    }
    ctx.spool(TABLE[MATERIALIZE]).write(row)
    _log(
        ctx,
        materialized_at,
        MATERIALIZE,
        "info",
        "materialization_finished",
        materialization_message(int(rows), row["max_event_timestamp"]),
        rows=int(rows),
        max_event_timestamp=row["max_event_timestamp"],
    )
    return row


# ---------------------------------------------------------------------------------------------
# Drift report


@dataclass(frozen=True)
class DriftReport:
    """One day's rows, JSON-ready: `summary` as monitoring.drift_daily, `features` as
    monitoring.drift_feature_daily (report_date as an ISO date)."""

    summary: dict[str, Any]
    features: list[dict[str, Any]]


def drift_reports(world: Path, days: Iterable[int], workers: int = 1) -> dict[int, DriftReport]:
    """The drift reports of `days`, computed as the build computes production days' reports.

    Runs in the calling process, with Evidently in `DriftMonitor`'s own worker (`workers` 0:
    in this process too, for the short-lived child the scheduler runs it in, `compute_drift`).
    A day without batch-scored rows gets no report.
    """
    wanted = sorted(set(days))
    if not wanted:
        return {}
    paths = WorldPaths(Path(world))
    spec = scenario.load(paths.scenario)
    cal, seed = spec.world.calendar(), spec.world.seed
    con = duckdb.connect(str(paths.duckdb), read_only=True)
    hooks = spec.fault_set.with_data(WorldData(con))
    try:
        con.execute("SET threads = 1")
        # The first deployment's training reference, rows in the build's order (the monitor
        # samples it by position).
        reference = con.sql(f"SELECT {', '.join(MODEL_FEATURES)} FROM monitoring.drift_reference")
        submitted = []
        overrides = Overrides(paths.run)
        batches = BatchRows(con, paths)
        with DriftMonitor(reference.pl(), MODEL_FEATURES, workers=workers) as monitor:
            for day in wanted:
                batch = batches.between(cal.midnight(day), cal.midnight(day + 1))
                if batch.height == 0:
                    continue
                window = overrides.drift_window(drift_due(cal, day))
                if window is not None:  # set from the console: replaces the configured reference
                    reference = reference_window(con, cal, day, *window, batches)
                else:  # as in the build: the reference hooks see the world as logged so far
                    reference = hooks.apply(
                        "monitor.drift_reference", None, HookContext(seed, day, cal)
                    )
                monitor.submit(cal.date(day), batch.select(MODEL_FEATURES), reference)
                submitted.append(day)
            summary = monitor.summary_rows()
            features = monitor.rows()
    finally:
        con.close()
    return {
        day: DriftReport(
            summary=_json_row(
                summary.filter(pl.col("report_date") == cal.date(day)).row(0, named=True)
            ),
            features=[
                _json_row(r)
                for r in features.filter(pl.col("report_date") == cal.date(day)).iter_rows(
                    named=True
                )
            ],
        )
        for day in submitted
    }


def fixed_window_dates(dates: Iterable[dt.date], days: int) -> list[dt.date]:
    """The dates among `dates` in the last `days` days up to the newest, oldest first."""
    ordered = sorted(set(dates))
    if not ordered:
        return []
    start = ordered[-1] - dt.timedelta(days=days - 1)
    return [d for d in ordered if d >= start]


class BatchRows:
    """The daily batch's scored rows as the candidate's views show them: the world's, but for
    the days whose batch the live model server ran itself (`batch_rerun.DAILY_DIR`), and the
    batch rows it spooled (those daily runs and any rerun)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, paths: WorldPaths) -> None:
        self.con = con
        self.paths = paths
        self.live_days = sorted(
            dt.date.fromisoformat(p.stem) for p in (paths.run / DAILY_DIR).glob("*.done")
        )
        self._live: pl.DataFrame | None = None

    def between(self, start: dt.datetime, end: dt.datetime) -> pl.DataFrame:
        """The features of the batch rows scored in [start, end), in the order they were scored."""
        world = self.con.sql(
            f"""
            SELECT request_ts, {", ".join(MODEL_FEATURES)} FROM serving.predictions
            WHERE source = 'batch' AND request_ts >= $start AND request_ts < $end
              AND NOT list_contains($live, request_ts::DATE)
            ORDER BY request_ts, prediction_id
            """,
            params={"start": start, "end": end, "live": self.live_days},
        ).pl()
        live = self._spooled().filter(
            (pl.col("request_ts") >= start) & (pl.col("request_ts") < end)
        )
        if live.height == 0:
            return world.select(MODEL_FEATURES)
        both = pl.concat([world, live.select(world.columns)], how="vertical_relaxed")
        return both.sort("request_ts", maintain_order=True).select(MODEL_FEATURES)

    def _spooled(self) -> pl.DataFrame:
        if self._live is None:
            rows = [
                row
                for _, table, path in spool.spool_files(self.paths.run)
                if table == PREDICTIONS
                for row in spool.production_rows(table, read_new(path, 0)[0])
                if row["source"] == "batch"
            ]
            columns = {"request_ts": pl.Datetime("us")} | dict.fromkeys(MODEL_FEATURES, pl.Float64)
            self._live = pl.DataFrame(
                [{c: r.get(c) for c in columns} for r in rows], schema=columns
            )
        return self._live


def reference_window(
    con: duckdb.DuckDBPyConnection,
    cal: Calendar,
    day: int,
    days: int,
    fixed: bool,
    batches: BatchRows,
) -> pl.DataFrame | None:
    """The rows day `day`'s drift report compares against under a window set from the console
    (None: the monitor's own reference, the whole training period).

    Fixed: the first deployment's training rows of the last `days` days of its training period
    (the rows `monitoring.drift_reference` holds). Trailing: the batch-served features of the
    `days` days before the report day; with none served, the training reference."""
    features = ", ".join(MODEL_FEATURES)
    if not fixed:
        window = batches.between(cal.midnight(day - days), cal.midnight(day))
        return window if window.height else None
    first = "(SELECT min(model_version::INTEGER) FROM training.churn_training_set)"
    train = f"split = 'train' AND model_version::INTEGER = {first}"
    dates = [
        d
        for (d,) in con.sql(
            f"SELECT DISTINCT score_date FROM training.churn_training_set WHERE {train}"
        ).fetchall()
    ]
    chosen = fixed_window_dates(dates, days)
    if len(chosen) == len(set(dates)):
        return None
    return con.sql(
        f"""
        SELECT {features} FROM training.churn_training_set
        WHERE {train} AND list_contains($dates, score_date)
        ORDER BY score_date, customer_id
        """,
        params={"dates": chosen},
    ).pl()


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, dt.date) else v for k, v in row.items()}


def compute_drift(
    world: Path, days: Sequence[int], stop: threading.Event | None = None
) -> dict[int, DriftReport]:
    """`drift_reports` in a short-lived child process; raises Stopped if `stop` is set first."""
    stop = stop or threading.Event()
    with tempfile.TemporaryDirectory(prefix="drift-") as tmp:
        out = Path(tmp) / "reports.json"
        command = [
            sys.executable,
            "-m",
            "sandbox.services.jobs",
            "--world",
            str(world),
            "--drift-days",
            ",".join(str(d) for d in days),
            "--out",
            str(out),
        ]
        child = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            env={**os.environ, **CHILD_ENV},
            start_new_session=True,  # one group with the monitor's worker: stopped together
        )
        try:
            while child.poll() is None:
                if stop.wait(SLICE):
                    raise Stopped("stopped during a drift run")
        finally:
            if child.poll() is None:
                _end_group(child)
        if child.returncode != 0:
            raise JobError(f"drift run for day(s) {list(days)} exited with {child.returncode}")
        raw = json.loads(out.read_text())
    return {int(day): DriftReport(**report) for day, report in raw.items()}


def _end_group(child: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGTERM)
    try:
        child.wait(CHILD_GRACE)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def write_drift(ctx: ServiceContext, day: int, report: DriftReport) -> None:
    """Spool one day's drift rows (the summary last: it marks the day done) and its log line."""
    cal = ctx.calendar
    ctx.spool(FEATURE_TABLE).write(*report.features)
    ctx.spool(TABLE[DRIFT]).write(report.summary)
    s = report.summary
    drifted = [r["feature"] for r in report.features if r["drifted"]]
    _log(
        ctx,
        drift_due(cal, day),
        DRIFT,
        "warning" if s["dataset_drift"] else "info",
        "drift_report_finished",
        drift_message(s["report_date"], s["n_drifted"], s["n_features"], s["n_rows"]),
        report_date=s["report_date"],
        n_rows=s["n_rows"],
        n_drifted=s["n_drifted"],
        share_drifted=s["share_drifted"],
        dataset_drift=s["dataset_drift"],
        drifted_features=drifted,
    )


def run_drift(
    ctx: ServiceContext, days: Sequence[int], stop: threading.Event | None = None
) -> dict[int, DriftReport]:
    """Compute `days`' drift reports in a child and spool them; a day that could not be computed
    raises JobError after the others are written."""
    reports = compute_drift(ctx.paths.root, days, stop)
    for day in sorted(reports):
        write_drift(ctx, day, reports[day])
    missing = sorted(set(days) - set(reports))
    if missing:
        dates = ", ".join(str(ctx.calendar.date(d)) for d in missing)
        raise JobError(f"drift report for {dates}: no batch-scored rows")
    return reports


# ---------------------------------------------------------------------------------------------
# Restored metric series

RESTORED_EVENT = "metric_series_restored"
PREDICTIONS = "serving.predictions"
REQUEST_COLUMNS = ["request_ts", "source", "status", "latency_ms"]


class SeriesRestorer:
    """Writes the points of `restore-metric-series` changes in effect: once per change the days it
    covers (logged at its effective time), then every bucket as it completes. A point already in
    the spool is never written again, so a restart or a second change only adds what is missing."""

    def __init__(self, ctx: ServiceContext, overrides: Overrides) -> None:
        self.ctx = ctx
        self.overrides = overrides
        cal = ctx.calendar
        self.model_configs = deployment.ConfigHistory(
            ctx.paths, ctx.fault_set.rollouts(cal, schema.MODEL_SERVER)
        )
        self.live_start = cal.midnight(cal.last_production_day + 1)
        self.written: set[tuple[dt.datetime, str, str, str]] = set()
        records, _ = read_new(ctx.spool(spool.RESTORED_METRICS).path, 0)
        for record in records:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                row = spool.check(spool.RESTORED_METRICS, record)
                self.written.add((row["ts"], row["service"], row["metric"], row["label"]))
        self.restored: set[str] = set()
        logs, _ = read_new(ctx.spool("telemetry.logs").path, 0)
        for record in logs:
            if record.get("event") == RESTORED_EVENT:
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    self.restored.add(json.loads(record["attrs"])["change_id"])
        self._offsets: dict[Path, int] = {}
        self._live: list[dict[str, Any]] = []
        self._checked: dt.datetime | None = None  # the last bucket boundary looked at
        self.failed = False

    def _world_requests(self, start: dt.datetime, end: dt.datetime) -> pl.DataFrame:
        con = duckdb.connect(str(self.ctx.paths.duckdb), read_only=True)
        try:
            return con.sql(
                f"""
                SELECT {", ".join(REQUEST_COLUMNS)} FROM serving.predictions
                WHERE source = 'online' AND request_ts >= $start AND request_ts < $end
                """,
                params={"start": start, "end": end},
            ).pl()
        finally:
            con.close()

    def _live_requests(self, start: dt.datetime) -> pl.DataFrame:
        """Production's live online requests (no session's own calls) from `start` on."""
        for _service, table, path in spool.spool_files(self.ctx.paths.run):
            if table != PREDICTIONS:
                continue
            records, self._offsets[path] = read_new(path, self._offsets.get(path, 0))
            for row in spool.production_rows(PREDICTIONS, records):
                if row["source"] == "online":
                    self._live.append({c: row[c] for c in REQUEST_COLUMNS})
        self._live = [r for r in self._live if r["request_ts"] >= start]
        return pl.DataFrame(
            self._live,
            schema={
                "request_ts": pl.Datetime("us"),
                "source": pl.Utf8,
                "status": pl.Utf8,
                "latency_ms": pl.Float64,
            },
        )

    def run(self, now: dt.datetime) -> int:
        """Write every restored point due by `now`; returns how many were written. Looks again
        when a bucket completes, or when a change takes effect."""
        changes = self.overrides.in_effect(RESTORE_SERIES, now)
        new = [c for c in changes if c.id not in self.restored]
        boundary = restore.floor_bucket(now)
        if not changes or (not new and boundary == self._checked):
            return 0
        self._checked = boundary
        starts = {
            c.id: restore.restore_start(c.effective_at, int(c.params["days"])) for c in changes
        }
        if new:  # the changes' own days: the world's requests, and every live one re-read
            start = min(starts.values())
            self._offsets.clear()
            self._live = []
            world = self._world_requests(start, min(self.live_start, now))
            live = self._live_requests(max(self.live_start, start))
        else:  # the buckets completed since the last look
            world = self._world_requests(now, now)
            live = self._live_requests(max(self.live_start, boundary - restore.BUCKET))
        requests = pl.concat([world, live.select(world.columns)]).filter(pl.col("request_ts") < now)
        series = restore.request_series(requests)
        # What the pipeline drops under the model server's configuration of the moment: none
        # from a rollback past the release that dropped them on.
        periods = self.model_configs.periods(self.overrides.entries(), now)
        dropped = restore.complete(
            restore.dropped_points(
                series, self.ctx.fault_set, self.ctx.seed, self.ctx.calendar, now, periods
            ),
            now,
        )
        rows = [
            r
            for r in dropped.iter_rows(named=True)
            if (r["ts"], r["service"], r["metric"], r["label"]) not in self.written
        ]
        if rows:
            self.ctx.spool(spool.RESTORED_METRICS).write(
                *({**r, "ts": r["ts"].isoformat()} for r in rows)
            )
        self.written |= {(r["ts"], r["service"], r["metric"], r["label"]) for r in rows}
        for change in new:
            self._log_restored(change, starts[change.id], requests, dropped)
            self.restored.add(change.id)
        # Live requests of complete buckets are done with.
        self._live = [r for r in self._live if r["request_ts"] >= boundary]
        return len(rows)

    def _log_restored(
        self, change: Applied, start: dt.datetime, requests: pl.DataFrame, dropped: pl.DataFrame
    ) -> None:
        days = int(change.params["days"])
        at = change.effective_at
        used = requests.filter(pl.col("request_ts").is_between(start, at, closed="left")).height
        covered = dropped.filter(pl.col("ts").is_between(start, at, closed="left"))
        names = sorted(set(covered["metric"].to_list()))
        what = ", ".join(names) if names else "no dropped series"
        self.ctx.spool("telemetry.logs").write(
            {
                "ts": at.isoformat(),
                "service": restore.SERVICE,
                "level": "info",
                "event": RESTORED_EVENT,
                "message": f"recomputed {what} for {days} days from {used:,} requests "
                f"({covered.height:,} points); new points every 5 minutes from now on",
                "attrs": json.dumps(
                    {
                        "change_id": change.id,
                        "days": days,
                        "series": names,
                        "requests": used,
                        "points": covered.height,
                    },
                    sort_keys=True,
                ),
            }
        )


# ---------------------------------------------------------------------------------------------
# The scheduler


class Scheduler:
    """Runs every job as the clock reaches it; `run()` returns when stopped."""

    def __init__(
        self,
        ctx: ServiceContext,
        registry: CollectorRegistry | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.ctx = ctx
        self.stop = stop or threading.Event()
        self.overrides = Overrides(ctx.paths.run)
        self.registry = registry or CollectorRegistry()
        self.runs = schedule(ctx.calendar)
        self.done = completed(ctx)
        self.restorer = SeriesRestorer(ctx, self.overrides)
        self.failed: set[tuple[str, int]] = set()  # retried at the next start, not in a loop
        r = self.registry
        self.run_count = Counter(
            "scheduler_job_runs", "Job runs by job and outcome.", ["job", "status"], registry=r
        )
        self.last_success = Gauge(
            "scheduler_job_last_success_timestamp_seconds",
            "Wall-clock time of each job's last successful run.",
            ["job"],
            registry=r,
        )
        self.last_success_sim = Gauge(
            "scheduler_job_last_success_sim_timestamp_seconds",
            "Scheduled simulated time of each job's last successful run.",
            ["job"],
            registry=r,
        )
        self.pending_gauge = Gauge(
            "scheduler_jobs_pending", "Runs of the live days not done yet.", registry=r
        )
        for job in JOBS:
            for status in ("success", "error", "skipped"):
                self.run_count.labels(job, status)
        self.pending_gauge.set_function(lambda: len(self.open_runs()))

    def open_runs(self) -> list[Run]:
        return [r for r in self.runs if (r.job, r.day) not in self.done | self.failed]

    def due(self) -> list[Run]:
        now = self.ctx.now()
        return [r for r in self.open_runs() if r.due <= now]

    def run_due(self) -> int:
        """Run every job due by now that has not run (at start: the catch-up); returns how many
        runs succeeded. Materializations first (cheap); all due drift days in one child."""
        due = [r for r in self.due() if not self._skipped(r)]
        ok = 0
        for run in (r for r in due if r.job == MATERIALIZE):
            if self.stop.is_set():
                return ok
            ok += self._record(run, lambda run=run: run_materialization(self.ctx, run.day))
        drift = [r for r in due if r.job == DRIFT]
        if drift and not self.stop.is_set():
            ok += self._run_drift(drift)
        self.restore_series()
        return ok

    def restore_series(self) -> int:
        """Restored metric points due by now (see SeriesRestorer); how many were written."""
        if self.restorer.failed:
            return 0
        try:
            return self.restorer.run(self.ctx.now())
        except Exception as exc:  # logged once; tried again at the next start
            self.restorer.failed = True
            self.ctx.log("error", "metric_restore_failed", f"restoring metric series failed: {exc}")
            return 0

    def pause_of(self, run: Run) -> Applied | None:
        """The console's pause that skips `run`, if one is in effect at its scheduled time."""
        jobs = ONLINE_STORE_JOBS if run.job == MATERIALIZE else (DRIFT_MONITOR_JOB,)
        pauses = [p for job in jobs if (p := self.overrides.paused(job, run.due)) is not None]
        return min(pauses, key=lambda p: p.effective_at) if pauses else None

    def _skipped(self, run: Run) -> bool:
        """Skip `run` if its job is paused (logged and counted as done); whether it was."""
        pause = self.pause_of(run)
        if pause is None:
            return False
        date = self.ctx.calendar.date(run.day)
        what = "materialization" if run.job == MATERIALIZE else "drift report"
        paused = pause.params["job"]
        _log(
            self.ctx,
            run.due,
            run.job,
            "warning",
            SKIPPED[run.job],
            f"{what} for {date} skipped: {paused} paused since {pause.effective_at:%Y-%m-%d %H:%M}",
            skipped_job=run.job,
            day=str(date),
            paused_job=paused,
            change_id=pause.id,
        )
        self.done.add((run.job, run.day))
        self.run_count.labels(run.job, "skipped").inc()
        return True

    def _run_drift(self, runs: list[Run]) -> int:
        try:
            reports = compute_drift(self.ctx.paths.root, [r.day for r in runs], self.stop)
        except Stopped:
            return 0
        except Exception as exc:  # a failed run is logged and counted
            for run in runs:
                self._failed(run, exc)
            return 0
        ok = 0
        for run in runs:
            if run.day in reports:
                ok += self._record(
                    run, lambda run=run: write_drift(self.ctx, run.day, reports[run.day])
                )
            else:
                self._failed(run, JobError("no batch-scored rows"))
        return ok

    def _record(self, run: Run, action: Any) -> int:
        try:
            action()
        except Exception as exc:  # a failed run is logged and counted
            self._failed(run, exc)
            return 0
        self.done.add((run.job, run.day))
        self.run_count.labels(run.job, "success").inc()
        self.last_success.labels(run.job).set_to_current_time()
        self.last_success_sim.labels(run.job).set(run.due.timestamp())
        return 1

    def _failed(self, run: Run, exc: BaseException) -> None:
        self.failed.add((run.job, run.day))
        self.run_count.labels(run.job, "error").inc()
        _log(
            self.ctx,
            run.due,
            run.job,
            "error",
            f"{'materialization' if run.job == MATERIALIZE else 'drift_report'}_failed",
            f"{run.job} run for {self.ctx.calendar.date(run.day)} failed: {exc}",
        )

    def run(self) -> None:
        while not self.stop.is_set():
            self.run_due()
            upcoming = self.open_runs()
            clock = self.ctx.clock
            if upcoming and clock.speed > 0:
                wall = (upcoming[0].due - clock.now()).total_seconds() / clock.speed
                self.stop.wait(min(max(wall, 0.001), SLICE))
            else:
                self.stop.wait(SLICE)


# ---------------------------------------------------------------------------------------------
# Process


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    # common.service_args, plus the drift child's mode.
    parser = argparse.ArgumentParser(description="Run the scheduled jobs of the live days.")
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int)
    add_fd_option(parser)
    parser.add_argument("--drift-days", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.drift_days is None and args.port is None:
        parser.error("--port is required")
    if args.drift_days is not None and args.out is None:
        parser.error("--drift-days needs --out")
    return args


def _drift_child(args: argparse.Namespace) -> None:
    with contextlib.suppress(OSError):
        os.nice(CHILD_NICE)  # a background batch job: the serving processes come first
    days = [int(d) for d in args.drift_days.split(",") if d]
    # This process exists for the run alone: Evidently runs here, not in a worker of its own.
    reports = drift_reports(args.world, days, workers=0)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps({str(d): asdict(r) for d, r in reports.items()}, default=str))
    tmp.replace(args.out)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.drift_days is not None:
        _drift_child(args)
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ctx = ServiceContext(args.world, SERVICE)
    registry = CollectorRegistry()
    scheduler = Scheduler(ctx, registry=registry, stop=stop)
    server = metrics_server(registry, args.host, args.port, args.fd)
    ctx.log(
        "info",
        "started",
        f"{len(scheduler.open_runs())} job runs scheduled, {len(scheduler.due())} due now",
    )
    try:
        scheduler.run()
    finally:
        ctx.log("info", "stopped", "scheduler stopped", remaining=len(scheduler.open_runs()))
        server.shutdown()


if __name__ == "__main__":
    main()
