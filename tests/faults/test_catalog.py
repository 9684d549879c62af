"""Every registered fault, on a real small world: it verifies where planted and not in the control
world, its reference investigation reaches its evidence, and its answer key points at real data."""

from __future__ import annotations

import re

import duckdb
import polars as pl
import pytest

from sandbox import scenario
from sandbox.catalog import fault_table_markdown
from sandbox.decoys import registry as decoy_registry
from sandbox.faults import registry
from sandbox.faults.base import Decoy, Evidence, Fault
from sandbox.world.build import BuildSummary
from tests.conftest import (
    CONTROL_SCENARIO,
    EDGE_WORLDS,
    FAULT_WORLDS,
    REPO,
    Worlds,
    connect,
    scenario_for,
)

CAL = scenario.load(None).world.calendar()


def _planted() -> dict[str, str]:
    """fault id -> the FAULT_WORLDS world it is planted in."""
    return {f.id: name for name in FAULT_WORLDS for f in scenario_for(name).faults}


def _fault(world: str, fault_id: str) -> Fault:
    return next(f for f in scenario_for(world).faults if f.id == fault_id)


FAULTS = sorted(_planted().items())
EDGE = [(name, f.id) for name in EDGE_WORLDS for f in scenario_for(name).faults]


def test_every_registered_fault_and_decoy_is_exercised() -> None:
    assert set(_planted()) == set(registry.catalog())
    decoys = {d.id for name in FAULT_WORLDS for d in scenario_for(name).decoys}
    decoys |= {d.id for d in scenario.load(CONTROL_SCENARIO).decoys}
    assert decoys == set(decoy_registry.catalog())


def test_the_catalog_is_large_and_covers_every_stage() -> None:
    catalog = registry.catalog().values()
    assert len(catalog) >= 14
    stages = {stage for cls in catalog for stage in cls(cls.Params()).stages}
    assert {"ingest", "features", "materialize", "train", "serve", "retrieve", "monitor"} <= stages


@pytest.mark.parametrize("fault_id", sorted(registry.catalog()))
def test_every_fault_is_documented(fault_id: str) -> None:
    cls = registry.get(fault_id)
    module = __import__(cls.__module__, fromlist=["__doc__"])
    assert module.__doc__ and len(module.__doc__) > 200, "the module docstring tells the story"
    assert cls.title and cls.observation and cls.hook_points
    assert f"`{fault_id}`" in (REPO / "README.md").read_text(), "README lists every fault"


def test_the_readme_fault_table_is_current() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme.split("<!-- fault-table -->\n")[1].split("\n<!-- /fault-table -->")[0]
    assert table == fault_table_markdown(), "regenerate it: sandbox faults list --markdown"


@pytest.mark.parametrize(("fault_id", "world"), FAULTS)
def test_fault_verifies_where_planted(worlds: Worlds, fault_id: str, world: str) -> None:
    con = connect(worlds.get(world))
    try:
        checks = _fault(world, fault_id).verify(con, CAL)
    finally:
        con.close()
    assert checks
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]


@pytest.mark.parametrize(("fault_id", "world"), FAULTS)
def test_fault_symptom_is_absent_without_the_fault(
    control_db: duckdb.DuckDBPyConnection, fault_id: str, world: str
) -> None:
    checks = _fault(world, fault_id).verify(control_db, CAL)
    assert not checks[0].passed, checks[0]


def _run(con: duckdb.DuckDBPyConnection, sql: str) -> pl.DataFrame | None:
    try:
        return con.sql(sql).pl()
    except duckdb.Error:
        return None  # a column or table that only exists when the fault is planted


@pytest.mark.parametrize(("fault_id", "world"), FAULTS)
def test_reference_investigation_reaches_the_evidence(
    worlds: Worlds, control_db: duckdb.DuckDBPyConnection, fault_id: str, world: str
) -> None:
    fault = _fault(world, fault_id)
    steps = fault.investigation(CAL)
    evidence_ids = {e.id for e in fault.answer_key(CAL).evidence}
    assert 3 <= len(steps) <= 6
    con = connect(worlds.get(world))
    try:
        for step in steps:
            assert step.evidence in evidence_ids, step.evidence
            result = con.sql(step.sql).pl()
            assert step.found(result), (step.question, result)
    finally:
        con.close()
    on_control = [_run(control_db, step.sql) for step in steps]
    assert not all(r is not None and s.found(r) for s, r in zip(steps, on_control, strict=True))


def _evidence_exists(con: duckdb.DuckDBPyConnection, e: Evidence) -> bool:
    if e.kind == "table_column":
        schema, table, column = e.ref.split(".")
        query = (
            "SELECT count(*) FROM duckdb_columns() "
            "WHERE schema_name = ? AND table_name = ? AND column_name = ?"
        )
        return con.execute(query, [schema, table, column]).fetchall()[0][0] == 1
    if e.kind == "metric":
        query = "SELECT count(*) FROM telemetry.metrics WHERE metric = ?"
    elif e.kind == "changelog":
        query = "SELECT count(*) FROM ops.changelog WHERE title = ?"
    else:
        re.compile(e.ref)
        query = "SELECT count(*) FROM telemetry.logs WHERE regexp_matches(attrs, ?)"
    return con.execute(query, [e.ref]).fetchall()[0][0] > 0


@pytest.mark.parametrize(("fault_id", "world"), FAULTS)
def test_answer_key_points_at_real_evidence(worlds: Worlds, fault_id: str, world: str) -> None:
    fault = _fault(world, fault_id)
    key = fault.key(CAL)
    assert key.root_cause and len(key.propagation) >= 3 and key.acceptable_fixes
    assert any("experiment" in p for p in key.probes)
    assert len(key.investigation) >= 3
    con = connect(worlds.get(world))
    try:
        for e in key.evidence:
            assert e.window_start <= e.window_end, e
            assert _evidence_exists(con, e), e
    finally:
        con.close()


@pytest.mark.parametrize(("world", "fault_id"), EDGE)
def test_unusual_parameters_still_verify(worlds: Worlds, world: str, fault_id: str) -> None:
    fault = _fault(world, fault_id)
    con = connect(worlds.get(world))
    try:
        checks = fault.verify(con, CAL)
        key = fault.key(CAL)
        for e in key.evidence:
            assert _evidence_exists(con, e), e
    finally:
        con.close()
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
    # The key describes what was planted: its evidence lies in the fault's window.
    onset = CAL.date(fault.params.onset_day)
    for e in key.evidence:
        assert e.window_end >= onset and e.window_start <= CAL.date(CAL.last_visible_day), e


@pytest.mark.parametrize("world", [*FAULT_WORLDS, *EDGE_WORLDS, "control"])
def test_decoys_happen_and_are_explained_to_the_interviewer(
    worlds: Worlds, control_world: BuildSummary, world: str
) -> None:
    if world == "control":
        spec, built = scenario.load(CONTROL_SCENARIO), control_world
    else:
        spec, built = scenario_for(world), worlds.get(world)
    con = connect(built)
    try:
        decoys: list[Decoy] = spec.decoys
        for decoy in decoys:
            checks = decoy.verify(con, CAL)
            assert all(c.passed for c in checks), (decoy.id, checks)
    finally:
        con.close()
    key = (built.root / "interviewer" / "answer_key.json").read_text()
    for decoy in spec.decoys:
        assert decoy.id in key
