"""The decision threshold set from the ops console, on the model server in-process over a world
whose retrain changed the score scale while the servers kept the old cut-off
(stale-decision-threshold).

The served version's own run records the threshold that flags its budgeted share; setting the
servers to it brings the share of customers flagged back to the same-seed control world's from
the change's effective time, and leaves the scores as they were. Until then nothing changes.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import numpy as np
import pytest

from sandbox import scenario
from sandbox.actions.catalog import CATALOG, SET_THRESHOLD
from sandbox.actions.deployment import Registry
from sandbox.actions.overrides import Applied, Overrides
from sandbox.layout import WorldPaths
from sandbox.services.model_server import LiveModelServer, PredictRequest
from sandbox.testing import Worlds
from sandbox.world.build import BuildSummary
from tests.services.test_actions_retrain import _forward, _server

CUSTOMERS = 1000


def _flagged(live: LiveModelServer, customers: list[int]) -> tuple[float, list[float]]:
    """The share of the customers flagged, and their scores."""
    _, rows = live.predict(
        [PredictRequest(customer_id=c) for c in customers], time.perf_counter(), batch=True
    )
    return float(np.mean([r["decision"] for r in rows])), [r["score"] for r in rows]


@pytest.fixture(scope="module")
def stale(worlds: Worlds) -> BuildSummary:
    return worlds.get("threshold")


def test_the_served_versions_own_threshold_brings_the_flagged_share_back_to_control(
    stale: BuildSummary, control_world: BuildSummary, tmp_path: Path
) -> None:
    calendar = scenario.load(WorldPaths(stale.root).scenario).world.calendar()
    requested = calendar.at(calendar.last_production_day + 1, 10.0)
    control = _server(control_world, tmp_path / "control", requested)
    live = _server(stale, tmp_path / "stale", requested)
    snapshot, in_both = live.store.at(requested), control.store.at(requested)
    assert snapshot is not None and in_both is not None
    customers = sorted(set(snapshot.rows) & set(in_both.rows))[:CUSTOMERS]

    in_control, _ = _flagged(control, customers)
    before, scores = _flagged(live, customers)
    gap = abs(before - in_control)
    assert gap > in_control / 2, (before, in_control)  # the list is a fraction of control's

    # What a candidate reads in the registry: the served version's own cut-off, not the servers'.
    served = live.record.model_version
    own = float(Registry.read(live.ctx.paths.mlflow).versions[served]["tags"]["decision_threshold"])
    assert own != pytest.approx(live.record.threshold)

    applied = Applied(
        id="stale-threshold",
        action=SET_THRESHOLD,
        params={"threshold": own},
        requested_at=requested,
        effective_at=requested + CATALOG[SET_THRESHOLD].delay,
    )
    Overrides(live.ctx.paths.run).append(applied)
    assert _flagged(live, customers)[0] == before  # not in effect yet

    _forward(live, applied.effective_at + dt.timedelta(minutes=1))
    after, scores_after = _flagged(live, customers)
    assert abs(after - in_control) <= gap / 2, (after, in_control, before)
    assert scores_after == scores  # the decision moved, the model did not
