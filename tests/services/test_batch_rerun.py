"""The batch scoring run again from the ops console, on the model server in-process, measured
against the same-seed control world: over the world whose servers kept the old decision threshold
after a retrain changed the score scale (stale-decision-threshold), and over the world whose
online store partly stopped refreshing (online-store-stale).

Run again with nothing changed, the batch flags what the 06:00 batch flagged that day. Run again
after the threshold is set to the served version's own cut-off, its list of flagged customers is
about as long as control's again and holds more of control's customers. Its rows join the
predictions log with source 'batch', stamped through the run, and its progress lines through the
action's delay.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import pytest

from sandbox import scenario
from sandbox.actions.catalog import BACKFILL_ONLINE_STORE, CATALOG, RERUN_BATCH, SET_THRESHOLD
from sandbox.actions.deployment import Registry
from sandbox.actions.overrides import Applied, Overrides
from sandbox.layout import WorldPaths
from sandbox.services import spool
from sandbox.services.model_server import SERVICE, LiveModelServer
from sandbox.testing import Worlds
from sandbox.world.build import BuildSummary
from tests.services.test_actions_retrain import _forward, _server


def _applied(change_id: str, action: str, params: dict, requested: dt.datetime) -> Applied:
    return Applied(
        id=change_id,
        action=action,
        params=params,
        requested_at=requested,
        effective_at=requested + CATALOG[action].delay,
    )


def _rerun(live: LiveModelServer, change_id: str, requested: dt.datetime) -> set[int]:
    """Apply a rerun requested at `requested`, let the server carry it out; the customers the
    run flagged, read back from the spool."""
    applied = _applied(change_id, RERUN_BATCH, {}, requested)
    Overrides(live.ctx.paths.run).append(applied)
    live.refresh_reruns()
    records, _ = spool.read_new(
        spool.spool_path(live.ctx.paths.run, SERVICE, "serving.predictions"), 0
    )
    rows = [
        spool.check("serving.predictions", r)
        for r in records
        if r["source"] == "batch"
        and requested.isoformat() <= r["request_ts"] < applied.effective_at.isoformat()
    ]
    assert rows and all(r["request_ts"] < applied.effective_at for r in rows)
    return {r["customer_id"] for r in rows if r["decision"]}


def _world_batch(live: LiveModelServer, day: dt.date) -> set[int]:
    """The customers the world's 06:00 batch flagged on `day`."""
    with duckdb.connect(str(live.ctx.paths.duckdb), read_only=True) as con:
        found = con.execute(
            "SELECT customer_id FROM serving.predictions WHERE source = 'batch' AND decision "
            "AND request_ts::DATE = $day",
            {"day": day},
        ).fetchall()
    return {c for (c,) in found}


@pytest.fixture(scope="module")
def stale(worlds: Worlds) -> BuildSummary:
    return worlds.get("threshold")


def test_a_rerun_after_the_threshold_fix_flags_what_control_flags(
    stale: BuildSummary, control_world: BuildSummary, tmp_path: Path
) -> None:
    calendar = scenario.load(WorldPaths(stale.root).scenario).world.calendar()
    requested = calendar.at(calendar.last_production_day + 1, 10.0)
    control = _server(control_world, tmp_path / "control", requested)
    live = _server(stale, tmp_path / "stale", requested)
    in_control = _rerun(control, "control-rerun", requested)

    # Nothing changed: the run flags what the day's 06:00 batch flagged, far from control's list.
    before = _rerun(live, "first-rerun", requested)
    assert before == _world_batch(live, requested.date())
    gap = abs(len(before) - len(in_control))
    assert gap > len(in_control) / 2, (len(before), len(in_control))

    own = Registry.read(live.ctx.paths.mlflow).versions[live.record.model_version]["tags"]
    fix = _applied("fix", SET_THRESHOLD, {"threshold": float(own["decision_threshold"])}, requested)
    Overrides(live.ctx.paths.run).append(fix)
    later = fix.effective_at + dt.timedelta(minutes=1)
    _forward(live, later)
    after = _rerun(live, "second-rerun", later)
    # The list is about control's length again, and holds more of control's customers (the
    # served version ranks them otherwise: not the same customers).
    assert abs(len(after) - len(in_control)) <= gap / 2, (len(after), len(in_control), gap)
    assert len(after & in_control) > len(before & in_control)


def test_a_reruns_progress_is_logged_through_its_delay_and_it_runs_once(
    stale: BuildSummary, tmp_path: Path
) -> None:
    calendar = scenario.load(WorldPaths(stale.root).scenario).world.calendar()
    requested = calendar.at(calendar.last_production_day + 1, 10.0)
    live = _server(stale, tmp_path / "stale", requested)
    flagged = _rerun(live, "rerun", requested)
    logs = spool.spool_path(live.ctx.paths.run, SERVICE, "telemetry.logs")
    lines = [
        line
        for line in spool.read_new(logs, 0)[0]
        if json.loads(line["attrs"]).get("change_id") == "rerun"
    ]
    events = [line["event"] for line in lines]
    assert events[0] == "batch_started" and events[-2:] == [
        "batch_finished",
        "retention_list_published",
    ]
    assert events.count("batch_progress") >= 3
    assert {line["service"] for line in lines} == {CATALOG[RERUN_BATCH].service}
    stamps = [dt.datetime.fromisoformat(line["ts"]) for line in lines]
    assert stamps == sorted(stamps)
    assert stamps[0] == requested and stamps[-1] == requested + CATALOG[RERUN_BATCH].delay
    assert json.loads(lines[-1]["attrs"])["flagged"] == len(flagged)

    # A server started again finds the run done: no second set of rows.
    predictions = spool.spool_path(live.ctx.paths.run, SERVICE, "serving.predictions")
    count = len(spool.read_new(predictions, 0)[0])
    again = LiveModelServer(live.ctx)
    again.refresh_reruns()
    assert len(spool.read_new(predictions, 0)[0]) == count


def test_a_rerun_after_a_backfill_scores_the_fresh_features(
    worlds: Worlds, control_world: BuildSummary, tmp_path: Path
) -> None:
    """A shard of the online store stopped refreshing (online-store-stale): a rerun alone scores
    the same frozen features again; after a backfill is in effect, its list comes closer to
    control's."""
    built = worlds.get("composite")
    calendar = scenario.load(WorldPaths(built.root).scenario).world.calendar()
    requested = calendar.at(calendar.last_production_day + 1, 10.0)
    control = _server(control_world, tmp_path / "control", requested)
    live = _server(built, tmp_path / "composite", requested)
    before = _rerun(live, "first-rerun", requested)
    assert before == _world_batch(live, requested.date())

    backfill = _applied("backfill", BACKFILL_ONLINE_STORE, {}, requested)
    Overrides(live.ctx.paths.run).append(backfill)
    later = backfill.effective_at + dt.timedelta(minutes=1)
    _forward(live, later)
    after = _rerun(live, "second-rerun", later)
    in_control = _rerun(control, "control-rerun", later)
    assert len(after ^ in_control) < len(before ^ in_control) * 0.8, (
        len(after ^ in_control),
        len(before ^ in_control),
    )
