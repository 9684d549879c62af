"""The scheduled jobs on real worlds: one live day's materialization and drift report, the
reference the monitor uses when it keeps a trailing window, the scheduler's timing and catch-up,
and the process (health, metrics, a prompt stop that takes its drift run with it)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import polars as pl
import pytest

from sandbox import scenario
from sandbox.faults.rolling_drift_reference import CREPT
from sandbox.monitor.drift import _numeric_frame, _sample_reference
from sandbox.pipeline.deploy import online_snapshots
from sandbox.pipeline.features import MODEL_FEATURES
from sandbox.services.common import ServiceContext
from sandbox.services.jobs import (
    DRIFT,
    FEATURE_TABLE,
    MATERIALIZE,
    SERVICE,
    TABLE,
    DriftReport,
    Run,
    Scheduler,
    completed,
    compute_drift,
    run_drift,
    run_materialization,
    schedule,
    write_drift,
)
from sandbox.services.simclock import SimClock
from sandbox.services.spool import read_new
from sandbox.world.build import BuildSummary
from tests.conftest import scenario_for
from tests.http_client import HTTP
from tests.waiting import until

pytestmark = pytest.mark.world


# ---------------------------------------------------------------------------------------------
# Worlds with a private run directory


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's


def _scenario_text(spec: scenario.Scenario) -> str:
    lines = []
    for table in ("world", "brief"):
        lines.append(f"[{table}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in spec.raw[table].items()]
    for key in ("faults", "decoys"):
        for entry in spec.raw.get(key, []):
            lines.append(f"[[{key}]]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in entry.items()]
    return "\n".join(lines) + "\n"


def private_world(built: BuildSummary, name: str, parent: Path) -> Path:
    """The built world read in place through symlinks, with its own run directory, so tests never
    write into (or race over) the shared build. A test world built from a dict has no scenario
    file the services can read; it gets one written from the same spec."""
    root = parent / name
    (root / "interviewer").mkdir(parents=True)
    for item in ("candidate", "manifest.json"):
        (root / item).symlink_to(built.root / item)
    for item in (built.root / "interviewer").iterdir():
        if item.name != "scenario.toml":
            (root / "interviewer" / item.name).symlink_to(item)
    source = built.root / "interviewer" / "scenario.toml"
    try:
        scenario.load(source)
        (root / "interviewer" / "scenario.toml").symlink_to(source)
    except scenario.ScenarioError:
        (root / "interviewer" / "scenario.toml").write_text(_scenario_text(scenario_for(name)))
    return root


@pytest.fixture
def world(faulty_world: BuildSummary, tmp_path: Path) -> Path:
    return private_world(faulty_world, "default", tmp_path)


@pytest.fixture
def clock(world: Path) -> Iterator[Callable[..., ServiceContext]]:
    """Writes the clock file; returns a fresh context reading it. Removes the run dir after."""
    run = world / "run"

    def make(speed: float, at: dt.datetime | None = None) -> ServiceContext:
        ctx = ServiceContext(world, SERVICE)
        SimClock.starting(ctx.calendar, speed=speed, resume_at=at).save(ctx.paths.run)
        return ctx

    yield make
    if run.exists():
        for path in sorted(run.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        run.rmdir()


@pytest.fixture(scope="module")
def default_reports(
    faulty_world: BuildSummary, tmp_path_factory: pytest.TempPathFactory
) -> dict[int, DriftReport]:
    """Drift reports of the last production day and every live day whose report falls due,
    computed once, through the child process the scheduler uses."""
    root = private_world(faulty_world, "default", tmp_path_factory.mktemp("reports"))
    cal = ServiceContext(root, SERVICE).calendar
    return compute_drift(root, list(range(cal.last_production_day, cal.last_visible_day)))


# ---------------------------------------------------------------------------------------------
# Helpers


def spool_rows(ctx: ServiceContext, table: str) -> list[dict[str, Any]]:
    return read_new(ctx.spool(table).path, 0)[0]


def job_logs(ctx: ServiceContext) -> list[dict[str, Any]]:
    return [r for r in spool_rows(ctx, "telemetry.logs") if r["service"] != SERVICE]


def spooled_keys(ctx: ServiceContext) -> Counter[tuple[str, int]]:
    """How many times each (job, day) has a row in the spool."""
    cal = ctx.calendar
    keys: Counter[tuple[str, int]] = Counter()
    for row in spool_rows(ctx, TABLE[MATERIALIZE]):
        keys[MATERIALIZE, cal.day_of(dt.datetime.fromisoformat(row["materialized_at"]))] += 1
    for row in spool_rows(ctx, TABLE[DRIFT]):
        keys[DRIFT, cal.day_of(dt.date.fromisoformat(row["report_date"]))] += 1
    return keys


def world_rows(con: duckdb.DuckDBPyConnection, table: str, day: dt.date) -> list[dict[str, Any]]:
    order = ", feature" if table == FEATURE_TABLE else ""
    frame = con.sql(
        f"SELECT * FROM {table} WHERE report_date = $day ORDER BY report_date{order}",
        params={"day": day},
    ).pl()
    return frame.with_columns(pl.col("report_date").cast(pl.Utf8)).to_dicts()


def assert_rows_match(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> None:
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], float) and isinstance(b[key], float):
                assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-9), key
            else:
                assert a[key] == b[key], key


def batch_means(con: duckdb.DuckDBPyConnection, days: list[dt.date]) -> dict[str, float]:
    row = con.sql(
        f"SELECT {', '.join(f'avg({c}) AS {c}' for c in MODEL_FEATURES)} FROM serving.predictions "
        "WHERE source = 'batch' AND list_contains($days, request_ts::DATE)",
        params={"days": days},
    ).pl()
    return row.to_dicts()[0]


def sampled_means(con: duckdb.DuckDBPyConnection, days: list[dt.date]) -> dict[str, float]:
    """Feature means of the days' batch rows as the drift monitor samples a reference of them
    (in serving order, deterministically, down to its sample size)."""
    rows = con.sql(
        "SELECT * FROM serving.predictions WHERE source = 'batch' "
        "AND list_contains($days, request_ts::DATE) ORDER BY request_ts, prediction_id",
        params={"days": days},
    ).pl()
    sample = _sample_reference(_numeric_frame(rows, MODEL_FEATURES, "reference"))
    return {c: sample[c].mean() for c in MODEL_FEATURES}


def prefill(ctx: ServiceContext, reports: dict[int, DriftReport], days: range) -> None:
    """What an earlier run of the scheduler left in the spool."""
    for day in days:
        run_materialization(ctx, day)
        write_drift(ctx, day, reports[day])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Live processes whose parent is `pid` (zombies count as gone)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.append(int(entry.name))
    return found


def cpu_seconds(pid: int) -> float:
    """The processor time `pid` has used so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def group_alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


# ---------------------------------------------------------------------------------------------
# Tests


def test_schedule_runs_each_job_once_per_live_day(faulty_world):
    cal = scenario.load(faulty_world.root / "interviewer" / "scenario.toml").world.calendar()
    runs = schedule(cal)
    live = list(range(cal.last_production_day + 1, cal.last_visible_day + 1))
    assert runs == sorted(runs)
    assert [r.day for r in runs if r.job == MATERIALIZE] == live
    assert [r.day for r in runs if r.job == DRIFT] == live
    assert all(r.due == cal.at(r.day, 4.0) for r in runs if r.job == MATERIALIZE)
    assert all(r.due == cal.at(r.day + 1, 0.5) for r in runs if r.job == DRIFT)
    # Simulated time stops at the end of the last visible day, before its report falls due.
    end = SimClock.starting(cal).sim_end
    assert [r for r in runs if r.due > end] == [Run(cal.at(live[-1] + 1, 0.5), DRIFT, live[-1])]


def test_materialization_of_a_live_day_matches_its_snapshot_and_history(clock, faulty_db):
    ctx = clock(speed=1.0)
    cal = ctx.calendar
    day = cal.last_production_day + 1
    row = run_materialization(ctx, day)

    loaded_at = cal.at(day, 4.0)
    path = dict(online_snapshots(ctx.paths.online_store))[loaded_at]
    snapshot = pl.read_parquet(path)
    assert row == {
        "materialized_at": loaded_at.isoformat(),
        "rows": snapshot.height,
        "max_event_timestamp": snapshot["event_timestamp"].max().isoformat(),
        "status": "success",
    }
    # The simulation recorded the same load when it built the day.
    history = faulty_db.sql(
        "SELECT * FROM ops.materialization_runs WHERE materialized_at = $at",
        params={"at": loaded_at},
    ).fetchall()
    assert history == [
        (loaded_at, row["rows"], dt.datetime.fromisoformat(row["max_event_timestamp"]), "success")
    ]
    assert spool_rows(ctx, TABLE[MATERIALIZE]) == [row]
    [log] = job_logs(ctx)
    assert log["service"] == "materialization"
    assert log["ts"] == loaded_at.isoformat()
    assert (log["level"], log["event"]) == ("info", "materialization_finished")
    assert f"{row['rows']} rows" in log["message"]
    assert json.loads(log["attrs"])["rows"] == row["rows"]
    assert completed(ctx) == {(MATERIALIZE, day)}


def test_drift_of_the_last_production_day_reproduces_the_build(
    faulty_world, default_reports, faulty_db
):
    cal = scenario.load(faulty_world.root / "interviewer" / "scenario.toml").world.calendar()
    day = cal.last_production_day
    report = default_reports[day]
    assert_rows_match(
        [report.summary], world_rows(faulty_db, "monitoring.drift_daily", cal.date(day))
    )
    assert_rows_match(report.features, world_rows(faulty_db, FEATURE_TABLE, cal.date(day)))


def test_drift_rows_of_a_live_day(clock, default_reports, faulty_db):
    ctx = clock(speed=1.0)
    cal = ctx.calendar
    day = cal.last_production_day + 1
    date = cal.date(day)
    report = default_reports[day]
    last = {r["feature"]: r for r in default_reports[day - 1].features}

    def columns(table: str) -> list[str]:
        return [c for c, *_ in faulty_db.sql(f"DESCRIBE {table}").fetchall()]

    assert list(report.summary) == columns("monitoring.drift_daily")
    assert all(list(r) == columns(FEATURE_TABLE) for r in report.features)
    assert [r["feature"] for r in report.features] == sorted(MODEL_FEATURES)
    n_batch = faulty_db.sql(
        "SELECT count(*) FROM serving.predictions WHERE source = 'batch' AND request_ts::DATE = $d",
        params={"d": date},
    ).fetchall()[0][0]
    s = report.summary
    assert (s["report_date"], s["n_rows"], s["n_features"]) == (str(date), n_batch, 13)
    assert s["n_drifted"] == sum(r["drifted"] for r in report.features)
    served = batch_means(faulty_db, [date])
    for r in report.features:
        assert r["report_date"] == str(date)
        assert r["current_mean"] == pytest.approx(
            served[r["feature"]], abs=6e-7
        )  # rounded to 6 places
        # The same training reference as every production day, and the same tests.
        before = last[r["feature"]]
        assert r["reference_mean"] == before["reference_mean"]
        assert (r["stattest"], r["threshold"]) == (before["stattest"], before["threshold"])

    # The job for one day, as the scheduler runs it (in a child), computes the same rows.
    assert run_drift(ctx, [day]) == {day: report}
    assert spool_rows(ctx, TABLE[DRIFT]) == [report.summary]
    assert spool_rows(ctx, FEATURE_TABLE) == report.features
    [log] = job_logs(ctx)
    assert log["service"] == "drift-monitor"
    assert log["event"] == "drift_report_finished"
    assert log["ts"] == cal.at(day + 1, 0.5).isoformat()
    assert str(date) in log["message"]
    assert completed(ctx) == {(DRIFT, day)}


def test_a_trailing_window_reference_keeps_acting_on_live_days(worlds, tmp_path):
    built = worlds.get("monitoring")
    root = private_world(built, "monitoring", tmp_path)
    spec = scenario.load(root / "interviewer" / "scenario.toml")
    [rolling] = [f for f in spec.faults if f.id == "rolling-drift-reference"]
    window = rolling.params.window_days
    cal = spec.world.calendar()
    last = cal.last_production_day
    days = [last, last + 1, last + 2]
    reports = compute_drift(root, days)

    con = duckdb.connect(str(root / "candidate" / "world.duckdb"), read_only=True)
    try:
        # The build's last report already used the trailing window: reproduced exactly.
        assert_rows_match(
            [reports[last].summary], world_rows(con, "monitoring.drift_daily", cal.date(last))
        )
        assert_rows_match(reports[last].features, world_rows(con, FEATURE_TABLE, cal.date(last)))
        training = con.sql(
            f"SELECT {', '.join(f'avg({c}) AS {c}' for c in CREPT)} FROM monitoring.drift_reference"
        ).pl()
        previous = None
        for day in days[1:]:
            rows = {r["feature"]: r for r in reports[day].features}
            window_means = sampled_means(con, [cal.date(d) for d in range(day - window, day)])
            for feature in CREPT:
                r = rows[feature]
                # The reference is the previous days as served, not training.
                assert r["reference_mean"] == pytest.approx(window_means[feature], abs=6e-7)
                assert abs(r["reference_mean"] - training[feature][0]) > 0.01 * training[feature][0]
                assert not r["drifted"]
            if previous is not None:
                assert rows[CREPT[0]]["reference_mean"] != previous[CREPT[0]]["reference_mean"]
            previous = rows
    finally:
        con.close()


def test_catch_up_runs_missed_jobs_once(clock, world, default_reports):
    ctx = clock(speed=1.0, at=ServiceContext(world, SERVICE).calendar.at(46, 2.0))
    cal = ctx.calendar
    first = cal.last_production_day + 1
    assert cal.last_visible_day == 47  # the days below assume the default calendar
    prefill(ctx, default_reports, range(first, first + 1))

    scheduler = Scheduler(ctx)
    assert {(r.job, r.day) for r in scheduler.due()} == {
        (MATERIALIZE, 44),
        (MATERIALIZE, 45),
        (DRIFT, 44),
        (DRIFT, 45),
    }
    assert scheduler.run_due() == 4
    assert spooled_keys(ctx) == Counter(
        {(j, d): 1 for j in (MATERIALIZE, DRIFT) for d in (first, 44, 45)}
    )
    # The scheduler's child computes exactly what the fixture's did.
    summaries = {r["report_date"]: r for r in spool_rows(ctx, TABLE[DRIFT])}
    for day in (44, 45):
        assert summaries[str(cal.date(day))] == default_reports[day].summary
    sample = scheduler.registry.get_sample_value
    assert sample("scheduler_job_runs_total", {"job": MATERIALIZE, "status": "success"}) == 2
    assert sample("scheduler_job_runs_total", {"job": DRIFT, "status": "success"}) == 2
    assert sample("scheduler_job_runs_total", {"job": DRIFT, "status": "error"}) == 0
    assert sample("scheduler_jobs_pending") == 4  # 46 and 47's materialization and report
    logs = Counter((r["service"], r["ts"]) for r in job_logs(ctx))
    assert len(logs) == 6 and set(logs.values()) == {1}

    # A restart finds nothing left to catch up.
    restarted = Scheduler(ServiceContext(world, SERVICE))
    assert restarted.due() == []
    assert restarted.run_due() == 0
    assert sum(spooled_keys(ctx).values()) == 6


def test_scheduler_at_high_speed_runs_each_due_job_once(clock, world, default_reports):
    cal = ServiceContext(world, SERVICE).calendar
    start = cal.at(46, 1.0)
    end = cal.midnight(cal.last_visible_day + 1)
    ctx = clock(speed=(end - start).total_seconds() / 3.0, at=start)  # 47 simulated hours in 3 s
    prefill(ctx, default_reports, range(cal.last_production_day + 1, 46))

    stop = threading.Event()
    scheduler = Scheduler(ctx, stop=stop)
    assert scheduler.due() == []
    thread = threading.Thread(target=scheduler.run, daemon=True)
    thread.start()
    try:

        def only_the_last_report_open() -> bool:
            assert thread.is_alive()
            return [(r.job, r.day) for r in scheduler.open_runs()] == [(DRIFT, 47)]

        until(only_the_last_report_open, "every due run done but day 47's report", timeout=240)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert spooled_keys(ctx) == Counter(
        {(MATERIALIZE, d): 1 for d in range(43, 48)} | {(DRIFT, d): 1 for d in range(43, 47)}
    )
    assert not scheduler.failed
    sample = scheduler.registry.get_sample_value
    assert sample("scheduler_job_runs_total", {"job": MATERIALIZE, "status": "success"}) == 2
    assert sample("scheduler_job_runs_total", {"job": DRIFT, "status": "success"}) == 1
    assert sample("scheduler_job_last_success_sim_timestamp_seconds", {"job": DRIFT}) == (
        cal.at(47, 0.5).timestamp()
    )
    # One log line per run, each at its scheduled time.
    stamps = sorted(r["ts"] for r in job_logs(ctx))
    assert len(stamps) == len(set(stamps)) == 9


def test_process_serves_health_and_stops_promptly_during_a_drift_run(clock, world):
    ctx = clock(speed=1.0, at=ServiceContext(world, SERVICE).calendar.at(46, 2.0))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox.services.jobs", "--world", str(world), "--port", str(port)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:

        def health() -> httpx.Response | None:
            assert proc.poll() is None, "the jobs process exited"
            with contextlib.suppress(httpx.TransportError):
                return HTTP.get(f"http://127.0.0.1:{port}/health", timeout=1)
            return None

        assert until(health, "the jobs process's health endpoint", timeout=60).status_code == 200

        # Catch-up: three materializations at once, then the drift reports in a child.
        def drift_child() -> list[int]:
            assert proc.poll() is None, "the jobs process exited"
            return descendants(proc.pid)

        children = until(drift_child, "a drift run in a child", timeout=60, every=0.1)
        metrics = HTTP.get(f"http://127.0.0.1:{port}/metrics").text
        assert 'scheduler_job_runs_total{job="materialize",status="success"} 3.0' in metrics
        assert "scheduler_job_last_success_timestamp_seconds" in metrics
        # Stopped once the child is at work, importing Evidently or computing: 0.8 s of processor
        # time in (the interpreter and the job's own modules take about 0.5).
        until(
            lambda: any(cpu_seconds(c) > 0.8 for c in children),
            "the drift child at work",
            every=0.1,
        )
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - stopped < 5
        assert not any(group_alive(child) for child in children)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert spooled_keys(ctx) == Counter({(MATERIALIZE, d): 1 for d in (43, 44, 45)})
    events = [r["event"] for r in spool_rows(ctx, "telemetry.logs") if r["service"] == SERVICE]
    assert events == ["started", "stopped"]
