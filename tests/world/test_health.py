"""The healthy world is healthy, and the planted fault shows against it."""

from __future__ import annotations

import duckdb

from sandbox import scenario
from sandbox.verify import verify
from sandbox.world import health
from sandbox.world.build import BuildSummary


def test_control_world_passes_every_health_check(control_world: BuildSummary) -> None:
    result = verify(control_world.root)
    assert result.fault_checks == {}
    failed = [c for c in result.health_checks if not c.passed]
    assert not failed, failed


def test_control_world_auc_tracks_holdout_every_week(control_world: BuildSummary) -> None:
    holdout = control_world.manifest["model"]["holdout_auc"]
    con = duckdb.connect(str(control_world.root / "candidate" / "world.duckdb"), read_only=True)
    weekly = con.sql(
        "SELECT (date_diff('day', DATE '2026-03-02', score_date) // 7) AS w, avg(auc) "
        "FROM monitoring.model_performance_daily WHERE segment = 'all' "
        "AND score_date <= DATE '2026-04-12' GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert len(weekly) == 6
    assert all(abs(auc - holdout) <= health.AUC_TOLERANCE for _, auc in weekly), (holdout, weekly)


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
) -> None:
    assert faulty_world.manifest["model"] == control_world.manifest["model"]
    before, after = faulty_db.execute(
        "SELECT avg(auc) FILTER (WHERE score_date < DATE '2026-03-16'), "
        "avg(auc) FILTER (WHERE score_date >= DATE '2026-03-23' AND score_date <= '2026-04-12') "
        "FROM monitoring.model_performance_daily WHERE segment = 'all'"
    ).fetchall()[0]
    assert before - after >= 0.02
