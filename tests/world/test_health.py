"""The healthy world is healthy, and the planted fault shows against it."""

from __future__ import annotations

import duckdb

from sandbox import scenario
from sandbox.verify import verify
from sandbox.world import health
from sandbox.world.build import BuildSummary


def test_control_world_passes_every_health_check(control_world: BuildSummary) -> None:
    result = verify(control_world.root)
    # The control plants no fault; its one decoy (genuine drift) verifies like a fault would.
    assert set(result.fault_checks) == {"decoy:competitor-launch"}
    assert all(c.passed for c in result.fault_checks["decoy:competitor-launch"])
    failed = [c for c in result.health_checks if not c.passed]
    assert not failed, failed


def test_control_world_auc_is_within_a_few_points_of_holdout(
    control_world: BuildSummary, control_db: duckdb.DuckDBPyConnection
) -> None:
    holdout = control_world.manifest["model"]["holdout_auc"]
    weekly = health.weekly_auc(control_db, scenario.load(None).world.calendar(), 42)
    assert [w for w, _, _ in weekly] == [1, 2, 3, 4, 5, 6]
    mean = sum(auc for _, auc, _ in weekly) / 6
    assert abs(mean - holdout) <= 0.05, (holdout, weekly)


def test_standard_error_shrinks_with_more_labels() -> None:
    small, large = (
        health.auc_standard_error(0.75, 50, 2000),
        health.auc_standard_error(0.75, 500, 20000),
    )
    assert 0 < large < small < 0.1


def test_planted_fault_is_verified_in_its_world(faulty_world: BuildSummary) -> None:
    result = verify(faulty_world.root)
    checks = result.fault_checks["feature-nulls-wrong-mean"]
    assert checks and all(c.passed for c in checks), checks
    assert all(c.passed for c in result.health_checks), result.health_checks
    assert result.passed


def test_fault_symptoms_are_absent_from_the_no_fault_world(
    control_world: BuildSummary, control_db: duckdb.DuckDBPyConnection
) -> None:
    fault = scenario.load(None).faults[0]
    checks = fault.verify(control_db, scenario.load(None).world.calendar())
    assert not any(c.passed for c in checks), checks


def test_worlds_are_identical_before_onset(
    faulty_db: duckdb.DuckDBPyConnection, control_db: duckdb.DuckDBPyConnection
) -> None:
    query = (
        "SELECT count(*), sum(hash(t)::HUGEINT) FROM serving.predictions t "
        "WHERE request_ts < DATE '2026-03-16'"
    )
    assert faulty_db.execute(query).fetchall()[0] == control_db.execute(query).fetchall()[0]


def test_production_auc_degrades_while_holdout_stays_high(
    faulty_world: BuildSummary,
    faulty_db: duckdb.DuckDBPyConnection,
    control_world: BuildSummary,
    control_db: duckdb.DuckDBPyConnection,
) -> None:
    """Paired with the same-seed control: shared random streams cancel most sampling noise."""
    assert faulty_world.manifest["model"] == control_world.manifest["model"]
    query = (
        "SELECT avg(auc) FROM monitoring.model_performance_daily WHERE segment = 'all' "
        "AND score_date BETWEEN DATE '2026-03-30' AND DATE '2026-04-12'"
    )
    late_faulty = faulty_db.execute(query).fetchall()[0][0]
    late_control = control_db.execute(query).fetchall()[0][0]
    assert late_control - late_faulty >= 0.02, (late_faulty, late_control)
    holdout = faulty_world.manifest["model"]["holdout_auc"]
    assert holdout - late_faulty >= 0.02
