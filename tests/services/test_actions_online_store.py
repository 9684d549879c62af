"""Backfilling the online store from the ops console, on a running stack of a world whose online
store computes a feature differently from the offline store (online-offline-skew).

`backfill-online-store` loads the offline store's newest features into the online store; from its
effective time (two simulated hours later) the live model server serves them, so the skewed
feature moves toward the same-seed control world's, and until then nothing changes. Its progress
is in the materialization job's logs as simulated time passes. Rolling the feature server back
past the migration to the streaming loads instead reloads the store the batch job's way from its
effective time, and the scheduled loads after it too.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import duckdb
import numpy as np
import polars as pl
import pytest

from sandbox.actions.catalog import BACKFILL_ONLINE_STORE, CATALOG, ROLLBACK
from sandbox.layout import WorldPaths
from sandbox.pipeline import deploy
from sandbox.pipeline.features import MODEL_FEATURES
from sandbox.services import spool
from sandbox.services.common import ServiceContext
from sandbox.services.model_server import LiveModelServer
from sandbox.testing import Worlds
from sandbox.world.build import BuildSummary
from tests.http_client import HTTP
from tests.services.acting import act, acting_stack, forward, model_now, predictions, verdicts
from tests.services.running import Stack
from tests.waiting import until

CUSTOMERS = 200  # skewed customers the test asks about


@pytest.fixture(scope="module")
def skewed(worlds: Worlds) -> BuildSummary:
    return worlds.get("version-mismatch")


@pytest.fixture(scope="module")
def backfilling(skewed: BuildSummary, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The skewed world's stack: the backfill first, then (the next day, once the scheduled
    loads carry the skew again) the rollback."""
    with acting_stack(skewed, tmp_path_factory) as stack:
        yield stack


def _metadata(stack: Stack) -> dict:
    reply = HTTP.get(stack.url + "/services/model/metadata", headers=stack.candidate, timeout=10)
    return reply.json()


def _snapshot(paths: WorldPaths, at: dt.datetime) -> pl.DataFrame:
    _, path = [s for s in deploy.online_snapshots(paths.online_store) if s[0] <= at][-1]
    return pl.read_parquet(path, columns=["customer_id", *MODEL_FEATURES]).sort("customer_id")


def _offline(paths: WorldPaths, at: dt.datetime) -> pl.DataFrame:
    """Each customer's row of the newest feature day the offline store held at `at`."""
    with duckdb.connect(str(paths.duckdb), read_only=True) as con:
        rows = con.execute(
            f"SELECT customer_id, {', '.join(MODEL_FEATURES)} "
            "FROM feature_store.customer_features WHERE created_timestamp <= $at "
            "QUALIFY event_timestamp = max(event_timestamp) OVER () ORDER BY customer_id",
            {"at": at},
        ).fetchall()
    return pl.DataFrame(rows, schema=["customer_id", *MODEL_FEATURES], orient="row")


def _served(stack: Stack, customers: list[int]) -> pl.DataFrame:
    rows = predictions(stack, customers)
    return pl.DataFrame(
        {"customer_id": [r["customer_id"] for r in rows]}
        | {f: [r["features"][f] for r in rows] for f in MODEL_FEATURES},
        schema={"customer_id": pl.Int64, **dict.fromkeys(MODEL_FEATURES, pl.Float64)},
    )


def _progress(stack: Stack, change_id: str) -> list[tuple[str, str]]:
    rows = stack.sql(
        "SELECT event, message FROM telemetry.logs WHERE service = 'materialization' "
        f"AND attrs LIKE '%{change_id}%' AND event LIKE 'backfill_%' ORDER BY ts"
    )["rows"]
    return [(r[0], r[1]) for r in rows]


def _skew(paths: WorldPaths, now: dt.datetime) -> tuple[str, list[int]]:
    """A feature the online store serves differently from the offline store at `now`, and
    customers it differs for."""
    online, offline = _snapshot(paths, now), _offline(paths, now)
    joined = online.join(offline, on="customer_id", suffix="_offline")
    skewed = [
        f
        for f in MODEL_FEATURES
        if (joined[f] - joined[f"{f}_offline"]).abs().fill_null(0).max() > 1e-6  # type: ignore[operator]
    ]
    assert skewed, "the fault's feature differs online"
    feature = skewed[0]
    customers = (
        joined.filter((pl.col(feature) - pl.col(f"{feature}_offline")).abs() > 1e-6)
        .head(CUSTOMERS)["customer_id"]
        .to_list()
    )
    assert len(customers) == CUSTOMERS
    return feature, customers


def test_a_backfill_serves_the_offline_features_toward_the_control_world(
    backfilling: Stack, control_world: BuildSummary
) -> None:
    paths, control = WorldPaths(backfilling.world), WorldPaths(control_world.root)
    now = model_now(backfilling)
    online, offline = _snapshot(paths, now), _offline(paths, now)
    feature, customers = _skew(paths, now)
    truth = _snapshot(control, now).filter(pl.col("customer_id").is_in(customers))

    def gap(served: pl.DataFrame) -> float:
        """Mean distance of the skewed feature from the control world's, same customers."""
        both = served.join(truth, on="customer_id", suffix="_control")
        return float((both[feature] - both[f"{feature}_control"]).abs().mean())  # type: ignore[arg-type]

    before = _served(backfilling, customers)
    assert (
        before[feature].to_list()
        == online.filter(pl.col("customer_id").is_in(customers))[feature].to_list()
    )

    applied = act(backfilling, BACKFILL_ONLINE_STORE, {})
    requested = dt.datetime.fromisoformat(applied["requested_at"])
    effective = dt.datetime.fromisoformat(applied["effective_at"])
    assert effective - requested == CATALOG[BACKFILL_ONLINE_STORE].delay
    started = until(lambda: _progress(backfilling, applied["id"]), "the backfill started")
    assert [event for event, _ in started] == ["backfill_started"]

    # Halfway: some customers recomputed, the same features served.
    forward(backfilling, 1.0)
    halfway = until(
        lambda: [m for e, m in _progress(backfilling, applied["id"]) if e == "backfill_progress"],
        "progress lines in the logs",
    )
    assert 0 < len(halfway) < 6
    assert all(m.startswith("recomputed features for ") for m in halfway)
    assert _served(backfilling, customers).equals(before)

    # From the load on, the offline store's features are served (until the next 04:00 load).
    later = forward(backfilling, 1.1)
    assert effective <= later < effective.replace(hour=4, minute=0, second=0, microsecond=0)
    assert dt.datetime.fromisoformat(_metadata(backfilling)["online_store"]["loaded_at"]) == (
        effective
    )
    after = _served(backfilling, customers)
    expected = _offline(paths, requested).filter(pl.col("customer_id").is_in(customers))
    assert np.allclose(after[feature].to_numpy(), expected[feature].to_numpy(), equal_nan=True)
    assert gap(after) < gap(before) / 2, (gap(before), gap(after))
    lines = until(
        lambda: (
            (found := _progress(backfilling, applied["id"]))[-1][0] == "backfill_loaded" and found
        ),
        "the load in the logs",
    )
    assert lines[-1][1].startswith(f"online store loaded: {offline.height} rows")
    applied_line = (
        "SELECT service FROM telemetry.logs WHERE event = 'change_applied' "
        f"AND attrs LIKE '%{applied['id']}%'"
    )
    assert backfilling.scalar(applied_line) == "materialization"

    # A restarted server serves the kept load at once, without backfilling or logging again
    # (a second instance on the same run directory, under a name of its own).
    restarted = LiveModelServer(ServiceContext(backfilling.world, "model-server-restarted"))
    kept = restarted.store.at(later)
    assert kept is not None and kept.loaded_at == effective
    row = kept.rows[customers[0]]
    assert kept.values[row, MODEL_FEATURES.index(feature)] == after[feature][0]
    for service in ("model-server", "model-server-restarted"):
        path = spool.spool_path(backfilling.world / "run", service, "telemetry.logs")
        lines, _ = spool.read_new(path, 0) if path.exists() else ([], 0)
        assert sum(line["event"] == "backfill_started" for line in lines) == (
            service == "model-server"
        )

    assert verdicts(backfilling) == {BACKFILL_ONLINE_STORE: "mitigates"}


def test_rolling_the_feature_server_back_loads_the_batch_definition_from_then_on(
    backfilling: Stack,
) -> None:
    stack = backfilling
    paths = WorldPaths(stack.world)
    # After the backfill (the test above): the next midnight, past the load that ended it.
    now = model_now(stack)
    midnight = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    now = forward(stack, (midnight - now).total_seconds() / 3600)
    feature, customers = _skew(paths, now)
    # Those the next scheduled load holds too (a customer who left since is in no load after).
    held = set(_offline(paths, now + dt.timedelta(hours=5))["customer_id"].to_list())
    customers = [c for c in customers if c in held]
    before = _served(stack, customers)

    applied = act(stack, ROLLBACK, {"service": "feature-server"})
    effective = dt.datetime.fromisoformat(applied["effective_at"])
    assert _served(stack, customers).equals(before)  # not yet

    def matches_offline(at: dt.datetime) -> bool:
        served = _served(stack, customers)
        expected = _offline(paths, at).filter(pl.col("customer_id").is_in(customers))
        return np.allclose(served[feature].to_numpy(), expected[feature].to_numpy(), equal_nan=True)

    # From the effective time the store is reloaded the batch job's way.
    forward(stack, 0.5)
    assert dt.datetime.fromisoformat(_metadata(stack)["online_store"]["loaded_at"]) == effective
    assert matches_offline(effective)
    reloaded = until(
        lambda: stack.sql(
            "SELECT message FROM telemetry.logs WHERE service = 'materialization' "
            "AND event = 'materialization_reloaded'"
        )["rows"],
        "the reload in the logs",
    )
    assert reloaded[0][0].startswith("online store reloaded: ")
    applied_by = stack.scalar(
        "SELECT service FROM telemetry.logs WHERE event = 'change_applied' "
        f"AND attrs LIKE '%{applied['id']}%'"
    )
    assert applied_by == "feature-server"

    # The next scheduled load is made the same way, where the world's still carries the skew
    # (a backfill would have lasted only until then).
    later = forward(stack, 4.5)
    load = later.replace(hour=4, minute=0, second=0, microsecond=0)
    assert effective < load <= later
    assert dt.datetime.fromisoformat(_metadata(stack)["online_store"]["loaded_at"]) == load
    assert matches_offline(load)
    assert _skew(paths, later)[0] == feature  # the world's own load at that time

    assert verdicts(stack)[ROLLBACK] == "mitigates"
