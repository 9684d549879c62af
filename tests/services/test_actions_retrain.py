"""A retrain from the ops console, on the model server in-process over a world whose last retrain
learned from labels that had not matured (retrain-immature-labels).

Retraining with `label_maturity_days` 0 repeats the mistake on the latest data: the recent
churners have not cancelled yet, the new version learns that almost nobody churns, and from the
change's effective time the live scores fall further below the same-seed control world's. Until
then nothing changes; the new version is kept in the run directory and the registry's file is
never written.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from pathlib import Path

import numpy as np
import pytest

from sandbox import scenario
from sandbox.actions import retrain
from sandbox.actions.catalog import CATALOG, RETRAIN
from sandbox.actions.overrides import Applied, Overrides
from sandbox.layout import WorldPaths
from sandbox.services import spool
from sandbox.services.common import ServiceContext
from sandbox.services.model_server import SERVICE, LiveModelServer, PredictRequest
from sandbox.services.simclock import SimClock
from sandbox.testing import Worlds
from sandbox.world.build import BuildSummary
from tests.services.test_model_server import _served_view

CUSTOMERS = 400
FROZEN = 1e-9  # a clock this slow stands still for the length of a test


def _server(world: BuildSummary, into: Path, at: dt.datetime) -> LiveModelServer:
    paths = _served_view(world, "", into)
    _set_clock(paths, at)
    return LiveModelServer(ServiceContext(paths.root, SERVICE))


def _set_clock(paths: WorldPaths, at: dt.datetime) -> None:
    calendar = scenario.load(paths.scenario).world.calendar()
    SimClock.starting(calendar, speed=FROZEN, resume_at=at).save(paths.run)


def _forward(live: LiveModelServer, at: dt.datetime) -> None:
    _set_clock(live.ctx.paths, at)
    live.ctx.reload_clock()


def _scores(live: LiveModelServer, customers: list[int]) -> tuple[float, set[str]]:
    """The mean live score of the customers, and the versions that served them."""
    _, rows = live.predict(
        [PredictRequest(customer_id=c) for c in customers], time.perf_counter(), batch=True
    )
    return float(np.mean([r["score"] for r in rows])), {r["model_version"] for r in rows}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def immature(worlds: Worlds) -> BuildSummary:
    return worlds.get("immature-labels")


def test_a_retrain_on_immature_labels_moves_the_live_scores_further_from_the_control_world(
    immature: BuildSummary, control_world: BuildSummary, tmp_path: Path
) -> None:
    calendar = scenario.load(WorldPaths(immature.root).scenario).world.calendar()
    requested = calendar.at(calendar.last_production_day + 1, 10.0)
    control = _server(control_world, tmp_path / "control", requested)
    live = _server(immature, tmp_path / "immature", requested)
    snapshot = live.store.at(requested)
    assert snapshot is not None
    customers = sorted(snapshot.rows)[:CUSTOMERS]
    truth, _ = _scores(control, customers)
    before, served = _scores(live, customers)
    assert served == {live.baseline.version}
    assert before < truth  # the world's own immature retrain already scores too low

    registry_file = live.ctx.paths.mlflow / "mlflow.db"
    registered = _digest(registry_file)
    applied = Applied(
        id="retrain-now",
        action=RETRAIN,
        params={"label_maturity_days": 0},
        requested_at=requested,
        effective_at=requested + CATALOG[RETRAIN].delay,
    )
    Overrides(live.ctx.paths.run).append(applied)
    live.refresh_retrains()  # what the running server's watcher does as soon as it is applied
    version = str(live.baseline.latest + 1)
    assert int(version) > max(int(v) for v in live.registry.versions)

    # Before the effective time the world's version still serves.
    _forward(live, applied.effective_at - dt.timedelta(minutes=1))
    assert _scores(live, customers) == (before, served)

    _forward(live, applied.effective_at + dt.timedelta(minutes=30))
    after, served = _scores(live, customers)
    assert served == {version}
    meta = live.metadata()
    assert meta["model_version"] == version
    assert meta["model_uri"] == f"models:/churn-model/{version}"
    assert meta["deployed_at"] == applied.effective_at.isoformat()
    assert meta["threshold"] == live.baseline.threshold  # the servers keep their threshold
    # Harmful: the scores end further below the control world's than before the retrain.
    assert truth - after > (truth - before) * 1.2, (truth, before, after)

    # Kept in the run directory, not the registry.
    model_path, summary_path = retrain.kept_paths(live.ctx.paths.run, applied.id)
    assert model_path.is_file() and summary_path.is_file()
    assert _digest(registry_file) == registered
    kept = retrain.load_kept(live.ctx.paths.run, applied.id)
    assert kept is not None and kept.version == version
    assert kept.score_dates[1] == calendar.date(calendar.last_production_day + 1)

    # Its progress, each line stamped in simulated time.
    path = spool.spool_path(live.ctx.paths.run, SERVICE, "telemetry.logs")
    lines, _ = spool.read_new(path, 0)
    mine = [line for line in lines if '"change_id": "retrain-now"' in line["attrs"]]
    assert [(line["service"], line["event"]) for line in mine] == [
        ("training", "training_started"),
        ("training", "model_fitted"),
        ("training", "model_registered"),
        ("model-server", "model_loaded"),
    ]
    assert [dt.datetime.fromisoformat(line["ts"]) for line in mine][::3] == [
        applied.requested_at,
        applied.effective_at,
    ]
    assert f"on {kept.rows:,} rows" in mine[1]["message"]

    # A restarted server serves the kept version at once, without training or logging again.
    restarted = LiveModelServer(ServiceContext(live.ctx.paths.root, "model-server-restarted"))
    assert restarted.deployment(restarted.ctx.now()).version == version
    assert restarted.server.model_version == version
    again = spool.spool_path(live.ctx.paths.run, "model-server-restarted", "telemetry.logs")
    relogged, _ = spool.read_new(again, 0) if again.exists() else ([], 0)
    assert not [line for line in relogged if "retrain-now" in line["attrs"]]


def test_a_retrain_trains_on_the_window_the_candidate_chose(
    immature: BuildSummary, tmp_path: Path
) -> None:
    """Up to a chosen score date, for a chosen number of days: the weeks before a fault, say."""
    calendar = scenario.load(WorldPaths(immature.root).scenario).world.calendar()
    requested = calendar.at(calendar.last_production_day + 1, 10.0)
    live = _server(immature, tmp_path / "window", requested)
    newest = calendar.date(calendar.last_production_day - 20)
    applied = Applied(
        id="retrain-window",
        action=RETRAIN,
        params={"label_maturity_days": 14, "days": 3, "newest_score_date": str(newest)},
        requested_at=requested,
        effective_at=requested + CATALOG[RETRAIN].delay,
    )
    Overrides(live.ctx.paths.run).append(applied)
    live.refresh_retrains()
    kept = retrain.load_kept(live.ctx.paths.run, applied.id)
    assert kept is not None
    assert kept.score_dates == (newest - dt.timedelta(days=2), newest)
