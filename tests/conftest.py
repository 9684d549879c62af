"""Shared worlds: built once per test session at a small scale and reused by every test."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from sandbox import scenario
from sandbox.world.build import BuildSummary, build

SMALL_SCALE = 0.4  # 10,000 customers: stable weekly metrics; build time is mostly fixed costs
REPO = Path(__file__).resolve().parents[1]
CONTROL_SCENARIO = REPO / "scenarios" / "control.toml"


def _build(tmp_path_factory: pytest.TempPathFactory, name: str, spec: scenario.Scenario):
    return build(spec, tmp_path_factory.mktemp(name) / "world")


@pytest.fixture(scope="session")
def faulty_world(tmp_path_factory: pytest.TempPathFactory) -> BuildSummary:
    """The default scenario (with its planted fault) at a small scale."""
    return _build(
        tmp_path_factory, "default", scenario.load(None).with_overrides(scale=SMALL_SCALE)
    )


@pytest.fixture(scope="session")
def control_world(tmp_path_factory: pytest.TempPathFactory) -> BuildSummary:
    """The no-fault control scenario, same seed and scale as `faulty_world`."""
    spec = scenario.load(CONTROL_SCENARIO).with_overrides(seed=7, scale=SMALL_SCALE)
    return _build(tmp_path_factory, "nofaults", spec)


def connect(world: BuildSummary) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(world.root / "candidate" / "world.duckdb"), read_only=True)


@pytest.fixture
def faulty_db(faulty_world: BuildSummary):
    con = connect(faulty_world)
    yield con
    con.close()


@pytest.fixture
def control_db(control_world: BuildSummary):
    con = connect(control_world)
    yield con
    con.close()
