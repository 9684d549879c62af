"""Ops-console actions on the model server in-process, each over a world with the fault it
mitigates, measured against the same-seed control world from the change's effective time (until
then nothing changes).

- stale-decision-threshold: a retrain changed the score scale while the servers kept the old
  cut-off. The served version's own run records the threshold that flags its budgeted share;
  setting the servers to it brings the share flagged back to control's, the scores unchanged.
- payment-status-renamed: failed charges renamed by a provider's new API go uncounted, so fewer
  of the migrated method's customers are flagged. The same budgeted threshold brings their
  flagged share back toward control's, at the price of flagging the other customers more.
- online-store-stale: a shard of the online store serves frozen features. A backfill from the
  offline store brings the live scores back toward control's until the next scheduled load;
  rolling the feature server back past the cutover does it for the loads after it too.
- serving-default-fallback: a configuration rollout cut the feature lookup deadline, so at peak
  a share of requests is scored on zeros. Rolling back past that rollout ends it.

Every fault's mitigation is also measured on a running stack (`test_mitigations.py`); these check
what that does not: nothing before the effective time, what else moves, what it costs.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pytest

from sandbox import scenario
from sandbox.actions.catalog import (
    BACKFILL_ONLINE_STORE,
    CATALOG,
    ROLLBACK,
    SET_THRESHOLD,
)
from sandbox.actions.deployment import Registry
from sandbox.actions.overrides import Applied, Overrides
from sandbox.faults.toolkit import PEAK_HOURS
from sandbox.layout import WorldPaths
from sandbox.pipeline.features import MODEL_FEATURES
from sandbox.services.model_server import LiveModelServer, PredictRequest, offline_latest
from sandbox.testing import Worlds
from sandbox.world.build import BuildSummary
from tests.services.conftest import gateway_client, world_paths
from tests.services.test_actions_retrain import _forward, _server

CUSTOMERS = 1000


def _applied(action: str, params: dict, requested: dt.datetime) -> Applied:
    return Applied(
        id=action,
        action=action,
        params=params,
        requested_at=requested,
        effective_at=requested + CATALOG[action].delay,
    )


def _customers(live: LiveModelServer, control: LiveModelServer, at: dt.datetime) -> list[int]:
    """Customers both worlds' online stores hold at `at`."""
    snapshot, in_both = live.store.at(at), control.store.at(at)
    assert snapshot is not None and in_both is not None
    return sorted(set(snapshot.rows) & set(in_both.rows))[:CUSTOMERS]


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
    customers = _customers(live, control, requested)

    in_control, _ = _flagged(control, customers)
    before, scores = _flagged(live, customers)
    gap = abs(before - in_control)
    assert gap > in_control / 2, (before, in_control)  # the list is a fraction of control's

    # What a candidate reads in the registry: the served version's own cut-off, not the servers'.
    served = live.record.model_version
    own = float(Registry.read(live.ctx.paths.mlflow).versions[served]["tags"]["decision_threshold"])
    assert own != pytest.approx(live.record.threshold)

    applied = _applied(SET_THRESHOLD, {"threshold": own}, requested)
    Overrides(live.ctx.paths.run).append(applied)
    assert _flagged(live, customers)[0] == before  # not in effect yet

    _forward(live, applied.effective_at + dt.timedelta(minutes=1))
    after, scores_after = _flagged(live, customers)
    assert abs(after - in_control) <= gap / 2, (after, in_control, before)
    assert scores_after == scores  # the decision moved, the model did not


def _score_gap(
    live: LiveModelServer, control: LiveModelServer, customers: list[int]
) -> Callable[[], float]:
    """The mean distance of the customers' live scores from control's, measured when called."""
    truth = np.array(_flagged(control, customers)[1])
    return lambda: float(np.mean(np.abs(np.array(_flagged(live, customers)[1]) - truth)))


def _budget(live: LiveModelServer, fault_id: str) -> float:
    """The share of customers the world's batch flagged in the week before `fault_id`'s onset:
    the retention budget a candidate restores with the threshold."""
    spec = scenario.load(live.ctx.paths.scenario)
    [fault] = [f for f in spec.faults if f.id == fault_id]
    onset = spec.world.calendar().date(fault.params.onset_day)
    with duckdb.connect(str(live.ctx.paths.duckdb), read_only=True) as con:
        (share,) = con.execute(
            "SELECT avg(decision::INTEGER) FROM serving.predictions WHERE source = 'batch' "
            "AND request_ts::DATE BETWEEN $start AND $end",
            {"start": onset - dt.timedelta(days=7), "end": onset - dt.timedelta(days=1)},
        ).fetchone()
    return float(share)


PAYMENT_RENAMED = "payment-status-renamed"


def test_a_threshold_at_the_budgeted_share_mitigates_the_renamed_payment_status(
    worlds: Worlds, control_world: BuildSummary, tmp_path: Path
) -> None:
    """The provider's new API reports failed charges as 'declined', which the feature job does
    not count: the migrated method's customers look healthier and fewer of them are flagged. The
    threshold that flags the share the batch flagged before the onset brings their flagged share
    back toward control's, and the overall share with it. It mitigates and does not fix: the
    other methods' customers, whose scores were right, are flagged more than in control."""
    built = worlds.get("composite")
    spec = scenario.load(WorldPaths(built.root).scenario)
    [fault] = [f for f in spec.faults if f.id == PAYMENT_RENAMED]
    calendar = spec.world.calendar()
    requested = calendar.at(calendar.last_production_day + 1, 10.0)
    control = _server(control_world, tmp_path / "control", requested)
    live = _server(built, tmp_path / "composite", requested)
    snapshot, in_control = live.store.at(requested), control.store.at(requested)
    assert snapshot is not None and in_control is not None
    both = sorted(set(snapshot.rows) & set(in_control.rows))
    with duckdb.connect(str(live.ctx.paths.duckdb), read_only=True) as con:
        method = dict(
            con.execute("SELECT customer_id, payment_method FROM raw.customers").fetchall()
        )
    migrated = [c for c in both if method[c] == fault.params.target_payment_method]
    others = [c for c in both if method[c] != fault.params.target_payment_method]

    def shares(server: LiveModelServer) -> tuple[float, float, float]:
        """The share flagged of the migrated method's customers, of all, and of the others."""
        return (
            _flagged(server, migrated)[0],
            _flagged(server, both)[0],
            _flagged(server, others)[0],
        )

    target, overall, rest = shares(control)
    before = shares(live)
    assert target - before[0] > 0.005, (before, target)  # the migrated are flagged less

    _, scores = _flagged(live, sorted(snapshot.rows))
    threshold = float(np.quantile(scores, 1 - _budget(live, PAYMENT_RENAMED)))
    assert threshold < live.record.threshold  # a lower cut-off, to flag the budget again
    applied = _applied(SET_THRESHOLD, {"threshold": threshold}, requested)
    Overrides(live.ctx.paths.run).append(applied)
    _forward(live, applied.effective_at + dt.timedelta(minutes=1))
    after = shares(live)
    # Measured: about half the migrated customers' gap closes, nearly all the overall one.
    assert abs(after[0] - target) <= abs(before[0] - target) * 2 / 3, (after, before, target)
    assert abs(after[1] - overall) < abs(before[1] - overall), (after, before, overall)
    assert after[2] > before[2] and after[2] > rest, (after, before, rest)  # the price


def test_a_backfill_brings_the_frozen_customers_scores_back_toward_control(
    worlds: Worlds, control_world: BuildSummary, tmp_path: Path
) -> None:
    """A shard of the online store stopped refreshing (online-store-stale): its customers are
    served features weeks old. A backfill from the offline store, which kept refreshing, brings
    the live scores back toward control's from its effective time."""
    built = worlds.get("composite")  # with payment-status-renamed too, which no backfill undoes
    calendar = scenario.load(WorldPaths(built.root).scenario).world.calendar()
    requested = calendar.at(calendar.last_production_day + 1, 10.0)
    control = _server(control_world, tmp_path / "control", requested)
    live = _server(built, tmp_path / "composite", requested)
    applied = _applied(BACKFILL_ONLINE_STORE, {}, requested)
    Overrides(live.ctx.paths.run).append(applied)
    live.refresh_backfills()  # loaded now, served from its effective time
    backfilled = live.store.at(applied.effective_at)
    assert backfilled is not None and backfilled.loaded_at == applied.effective_at
    # The customers all three loads hold (the offline store has no row for a few).
    customers = [c for c in _customers(live, control, requested) if c in backfilled.rows]
    gap = _score_gap(live, control, customers)
    before = gap()

    _forward(live, applied.effective_at + dt.timedelta(minutes=1))
    # Not all of it: the renamed payment status leaves the offline store's payment failures low
    # too (measured: about 40% of the gap closes).
    assert gap() <= before * 0.7, (gap(), before)


def test_rolling_the_feature_server_back_past_the_cutover_keeps_the_frozen_shard_fresh(
    worlds: Worlds, control_world: BuildSummary, tmp_path: Path
) -> None:
    """Rolling the feature server back past the cutover (online-store-stale) points reads at the
    cluster the materialization kept loading: from its effective time the store is reloaded,
    and, unlike a backfill, the next scheduled load is fresh too."""
    built = worlds.get("composite")
    calendar = scenario.load(WorldPaths(built.root).scenario).world.calendar()
    requested = calendar.at(calendar.last_production_day + 1, 10.0)
    control = _server(control_world, tmp_path / "control", requested)
    live = _server(built, tmp_path / "composite", requested)
    applied = _applied(ROLLBACK, {"service": "feature-server"}, requested)
    # The customers the reloads hold too (the offline store has no row for a few who left).
    next_load = calendar.at(calendar.day_of(requested) + 1, 4.5)
    reloaded_ids = set(offline_latest(live.ctx.paths.duckdb, applied.effective_at)["customer_id"])
    reloaded_ids &= set(offline_latest(live.ctx.paths.duckdb, next_load)["customer_id"])
    customers = [c for c in _customers(live, control, requested) if c in reloaded_ids]
    gap = _score_gap(live, control, customers)
    before = gap()
    Overrides(live.ctx.paths.run).append(applied)
    assert gap() == before  # not yet
    assert live.snapshot(requested) is live.store.at(requested)

    _forward(live, applied.effective_at)
    reloaded = live.snapshot(applied.effective_at)
    assert reloaded is not None and reloaded.loaded_at == applied.effective_at
    after = gap()
    assert after <= before * 0.7, (after, before)
    # The next scheduled load is the rolled-back configuration's too, not the world's frozen one.
    _forward(live, next_load)
    scheduled = live.snapshot(next_load)
    world = live.store.at(next_load)
    assert scheduled is not None and world is not None and scheduled is not world
    assert scheduled.loaded_at == world.loaded_at > applied.effective_at
    control_next = _server(control_world, tmp_path / "control-next", next_load)
    # Against the world's own load at that time: another service's rollback leaves it as it is.
    other = _server(built, tmp_path / "other", requested)
    Overrides(other.ctx.paths.run).append(_applied(ROLLBACK, {"service": "retrieval"}, requested))
    _forward(other, next_load)
    assert other.snapshot(next_load) is other.store.at(next_load)
    world_next = _score_gap(other, control_next, customers)()
    rolled_next = _score_gap(live, control_next, customers)()
    assert rolled_next <= world_next * 0.7, (rolled_next, world_next)


def test_a_feature_server_rollback_with_nothing_planted_reloads_what_the_world_loaded(
    control_world: BuildSummary, tmp_path: Path
) -> None:
    """The rollback happens either way (so whether it changes anything tells nothing of a
    rollout the changelog keeps quiet about); with no planted rollout its loads hold what the
    world's held."""
    calendar = scenario.load(WorldPaths(control_world.root).scenario).world.calendar()
    requested = calendar.at(calendar.last_production_day + 1, 10.0)
    live = _server(control_world, tmp_path / "control", requested)
    applied = _applied(ROLLBACK, {"service": "feature-server"}, requested)
    Overrides(live.ctx.paths.run).append(applied)
    next_load = calendar.at(calendar.day_of(requested) + 1, 4.5)
    for at in (applied.effective_at, next_load):
        _forward(live, at)
        reloaded, world = live.snapshot(at), live.store.at(at)
        assert reloaded is not None and world is not None and reloaded is not world
        assert reloaded.rows == world.rows
        assert np.array_equal(reloaded.values, world.values, equal_nan=True)


def _zero_share(live: LiveModelServer, customers: list[int]) -> float:
    """The share of the customers scored on an all-zero feature vector (lookups that missed)."""
    _, rows = live.predict(
        [PredictRequest(customer_id=c) for c in customers], time.perf_counter(), batch=True
    )
    return float(np.mean([all(r[c] == 0.0 for c in MODEL_FEATURES if c in r) for r in rows]))


def test_rolling_back_past_the_deadline_cut_stops_the_zero_vectors_at_peak(
    stale: BuildSummary, control_world: BuildSummary, tmp_path: Path
) -> None:
    """serving-default-fallback: a configuration rollout cut the feature lookup deadline, and at
    the evening peak a share of online requests is scored on zeros. The deploy history holds
    that rollout though no model changed with it: rolling back past it ends the zero vectors
    (control never has one); a change of threshold, beside the point, leaves them."""
    spec = scenario.load(WorldPaths(stale.root).scenario)
    calendar = spec.world.calendar()
    [fallback] = [f for f in spec.fault_set.faults if f.id == "serving-default-fallback"]
    [cut] = fallback.rollouts(calendar)
    peak = calendar.at(calendar.last_production_day + 1, float(PEAK_HOURS[0]))
    control = _server(control_world, tmp_path / "control", peak)
    live = _server(stale, tmp_path / "stale", peak)
    customers = _customers(live, control, peak)
    assert _zero_share(control, customers) == 0.0
    before = _zero_share(live, customers)
    assert before > 0.2, before

    beside = _applied(SET_THRESHOLD, {"threshold": 0.5}, peak)
    Overrides(live.ctx.paths.run).append(beside)
    at = beside.effective_at + dt.timedelta(minutes=1)
    _forward(live, at)
    assert _zero_share(live, customers) > 0.2

    # Each rollback goes back one deployment: as many as went out from the cut on. The gateway,
    # which logs what each rollback goes to, counts the same deployments as the server.
    since_cut = [d for d in live.baseline.history if d.config_as_of >= cut.at]
    assert since_cut and since_cut[0].config_as_of == cut.at
    with world_paths(stale) as paths, gateway_client(paths) as client:
        assert client.app.state.gateway.deployed().history == live.baseline.history
    for n in range(len(since_cut)):
        rollback = _applied(ROLLBACK, {"service": "model-server"}, at)
        Overrides(live.ctx.paths.run).append(rollback.model_copy(update={"id": f"rollback-{n}"}))
        at = rollback.effective_at + dt.timedelta(minutes=1)
        _forward(live, at)
    assert _zero_share(live, customers) == 0.0
