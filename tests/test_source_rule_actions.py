"""The ops console's changes to how the feature job reads its sources (`sandbox.actions.
source_rules`), on built worlds: each recomputation is the feature job's own, the customers a
rule touches get their features back toward the same-seed control world's, and the review
judges each by the release or status it names."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence

import numpy as np
import polars as pl
import pytest

from sandbox import scenario
from sandbox.actions import source_rules
from sandbox.actions.catalog import COUNT_AS_FAILED, QUARANTINE_RELEASE
from sandbox.actions.overrides import Applied, Overrides
from sandbox.faults.payment_status_renamed import NEW_STATUS, PaymentStatusRenamed
from sandbox.faults.upstream_unit_change import UpstreamUnitChange
from sandbox.layout import WorldPaths
from sandbox.review.actions import verdict_of
from sandbox.testing import Worlds, connect
from sandbox.world.build import BuildSummary

WATCH_TIME = source_rules.WATCH_TIME


def _stored(
    world: BuildSummary, day: dt.date, features: Sequence[str] = WATCH_TIME
) -> pl.DataFrame:
    """The feature job's `features` of `day`, as the offline store holds them."""
    con = connect(world)
    try:
        rows = con.execute(
            f"SELECT customer_id, {', '.join(features)} FROM feature_store.customer_features "
            "WHERE event_timestamp = $at ORDER BY customer_id",
            {"at": dt.datetime.combine(day + dt.timedelta(days=1), dt.time())},
        ).fetchall()
    finally:
        con.close()
    return pl.DataFrame(
        rows, schema=["customer_id", *features], orient="row", infer_schema_length=None
    )


def _last_day(world: BuildSummary) -> dt.date:
    calendar = scenario.load(WorldPaths(world.root).scenario).world.calendar()
    return calendar.date(calendar.last_production_day)


def test_with_nothing_quarantined_the_recomputation_is_the_feature_jobs(
    control_world: BuildSummary,
) -> None:
    day = _last_day(control_world)
    fresh = source_rules.watch_time(WorldPaths(control_world.root).duckdb, day, [], everyone=True)
    stored = _stored(control_world, day)
    joined = stored.join(fresh, on="customer_id", suffix="_fresh")
    # Every customer the store holds with a viewing row in the window (the others have none).
    assert joined.height > stored.height * 0.95
    for feature in WATCH_TIME:
        gap = (joined[feature] - joined[f"{feature}_fresh"]).abs()
        # Rounded to 4 places after summing in another order: at most one last place off.
        assert gap.max() <= 1.0001e-4, feature  # type: ignore[operator]
        assert (gap > 0).mean() < 0.01, feature  # type: ignore[operator]


@pytest.mark.parametrize("world", ["control", "monitoring"])
def test_with_no_status_added_the_payment_failures_are_the_feature_jobs(
    worlds: Worlds, world: str
) -> None:
    """Duplicated billing events (the monitoring world) count as the job counted them."""
    built = worlds.get(world)
    day = _last_day(built)
    fresh = source_rules.payment_failures(WorldPaths(built.root).duckdb, day, [], everyone=True)
    stored = _stored(built, day, [source_rules.PAYMENT_FAILURES])
    joined = stored.join(fresh, on="customer_id", how="left", suffix="_fresh").fill_null(0.0)
    assert fresh.height > stored.height / 2
    assert (joined["payment_failures_30d"] == joined["payment_failures_30d_fresh"]).all()


def test_counting_the_renamed_status_brings_the_payment_failures_back_to_control(
    worlds: Worlds, control_world: BuildSummary
) -> None:
    built = worlds.get("composite")
    day = _last_day(built)
    fresh = source_rules.payment_failures(WorldPaths(built.root).duckdb, day, [NEW_STATUS])
    assert fresh.height > 20  # the migrated customers with a declined charge
    feature = [source_rules.PAYMENT_FAILURES]
    compared = fresh.join(_stored(built, day, feature), on="customer_id", suffix="_stored").join(
        _stored(control_world, day, feature), on="customer_id", suffix="_control"
    )
    assert compared.height > fresh.height / 2  # the others left before the day, in a world
    truth = compared[f"{feature[0]}_control"].to_numpy()
    before = np.abs(compared[f"{feature[0]}_stored"].to_numpy() - truth).mean()
    after = np.abs(compared[feature[0]].to_numpy() - truth).mean()
    # Not all the way: the worlds' billing drifts apart once the customers were treated apart.
    assert before > 0.5 and after < before / 2, (before, after)


def test_quarantining_the_changed_release_brings_its_customers_watch_time_toward_control(
    worlds: Worlds, control_world: BuildSummary
) -> None:
    built = worlds.get("immature-labels")
    spec = scenario.load(WorldPaths(built.root).scenario)
    [fault] = [f for f in spec.fault_set.faults if isinstance(f, UpstreamUnitChange)]
    release = (fault.params.target_device, fault.version)
    day = _last_day(built)
    db = WorldPaths(built.root).duckdb

    fresh = source_rules.watch_time(db, day, [release])
    assert fresh.height > 50  # the release's customers
    compared = fresh.join(_stored(built, day), on="customer_id", suffix="_stored").join(
        _stored(control_world, day), on="customer_id", suffix="_control"
    )
    assert compared.height > fresh.height * 0.95
    for feature in ("avg_daily_minutes_7d", "avg_daily_minutes_28d"):
        truth = compared[f"{feature}_control"].to_numpy()
        before = np.mean(np.abs(compared[f"{feature}_stored"].to_numpy() - truth))
        after = np.mean(np.abs(compared[feature].to_numpy() - truth))
        assert after < before / 10, (feature, before, after)
    # No null reaches the store: a window left too thin is filled, as the job fills one.
    assert fresh.select(pl.col(list(WATCH_TIME)).null_count()).sum_horizontal().item() == 0

    # A release no row reports changes nobody.
    assert source_rules.watch_time(db, day, [("web", "0.0.1")]).height == 0


def test_the_review_judges_a_counted_status_by_the_status_it_names(worlds: Worlds) -> None:
    built = worlds.get("composite")
    spec = scenario.load(WorldPaths(built.root).scenario)
    assert any(isinstance(f, PaymentStatusRenamed) for f in spec.fault_set.faults)
    key = json.loads(WorldPaths(built.root).answer_key.read_text())
    assert verdict_of(COUNT_AS_FAILED, key, {"status": NEW_STATUS})[0] == "fixes"
    assert verdict_of(COUNT_AS_FAILED, key, {"status": "succeeded"})[0] == "no effect"


@pytest.mark.parametrize("world", ["immature-labels", "edge-early"])
def test_the_review_judges_a_quarantine_by_the_release_it_names(worlds: Worlds, world: str) -> None:
    built = worlds.get(world)
    spec = scenario.load(WorldPaths(built.root).scenario)
    [fault] = [f for f in spec.fault_set.faults if isinstance(f, UpstreamUnitChange)]
    key = json.loads(WorldPaths(built.root).answer_key.read_text())

    def judged(device: str, version: str) -> str:
        params = {"device": device, "app_version": version}
        return verdict_of(QUARANTINE_RELEASE, key, params)[0]

    assert judged(fault.params.target_device, fault.version) == "mitigates"
    assert judged(fault.params.target_device, "0.0.1") == "no effect"
    rollouts = [d for d in spec.fault_set.decoys if d.id == "app-rollout"]
    for decoy in rollouts:  # quarantining a healthy release throws true watch time away
        assert judged(decoy.params.device, decoy.params.version) == "harmful"
    assert rollouts or world != "edge-early"


def test_quarantining_a_healthy_release_throws_its_customers_true_watch_time_away(
    worlds: Worlds,
) -> None:
    """What the app-rollout decoy's `harmful` rests on: its release reports true minutes, and
    quarantined they are served as fills, far from what each customer watched."""
    built = worlds.get("edge-early")
    spec = scenario.load(WorldPaths(built.root).scenario)
    [decoy] = [d for d in spec.fault_set.decoys if d.id == "app-rollout"]
    day = _last_day(built)
    release = (decoy.params.device, decoy.params.version)
    fresh = source_rules.watch_time(WorldPaths(built.root).duckdb, day, [release])
    compared = fresh.join(_stored(built, day), on="customer_id", suffix="_stored")
    assert compared.height > 100
    feature = "avg_daily_minutes_7d"
    truth, served = compared[f"{feature}_stored"].to_numpy(), compared[feature].to_numpy()
    assert np.mean(np.abs(served - truth)) > np.mean(truth) / 4
    assert np.corrcoef(served, truth)[0, 1] < 0.5  # who watched more no longer shows


def test_a_rule_is_in_effect_from_its_effective_time(tmp_path) -> None:
    overrides = Overrides(tmp_path)
    at = dt.datetime(2026, 4, 13, 20)
    overrides.append(
        Applied(
            id="q",
            action=QUARANTINE_RELEASE,
            params={"device": "smart_tv", "app_version": "5.2.1"},
            requested_at=at - dt.timedelta(minutes=45),
            effective_at=at,
        )
    )
    overrides.append(
        Applied(
            id="c",
            action=COUNT_AS_FAILED,
            params={"status": NEW_STATUS},
            requested_at=at,
            effective_at=at + dt.timedelta(hours=1),
        )
    )
    assert overrides.quarantined(at - dt.timedelta(seconds=1)) == []
    assert overrides.quarantined(at) == [("smart_tv", "5.2.1")]
    assert overrides.failed_statuses(at) == []
    assert overrides.failed_statuses(at + dt.timedelta(hours=1)) == [NEW_STATUS]
