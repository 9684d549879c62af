"""Nothing the candidate can see names a planted fault: not a table, column, text value, log file,
registry entry or file name of the candidate's half of a world, whichever faults and decoys it
holds (a name there would hand the candidate the answer the session is meant to find). The
secrecy part of the bar in `sandbox.testing`, on every world the catalog tests build."""

from __future__ import annotations

import pytest

from sandbox import testing
from sandbox.decoys import registry as decoy_registry
from sandbox.faults import registry
from sandbox.testing import Worlds
from sandbox.world.build import BuildSummary
from tests.conftest import FAULT_WORLDS

NAMES = [
    *registry.catalog(),
    *(cls.__name__ for cls in registry.catalog().values()),
    *decoy_registry.catalog(),
]
TELLTALE = testing.telltale(NAMES)


@pytest.fixture(params=list(FAULT_WORLDS))
def world(request: pytest.FixtureRequest, worlds: Worlds) -> BuildSummary:
    """Every world the catalog tests build: together they plant every registered fault."""
    return worlds.get(request.param)


def test_nothing_a_candidate_can_read_names_a_planted_fault(world: BuildSummary) -> None:
    """File names, tables, columns and their descriptions, every text value in the warehouse,
    log files, index metadata, the model registry and its runs."""
    testing.assert_nothing_names(world, NAMES)


def test_the_answer_key_is_in_the_interviewer_part(world: BuildSummary) -> None:
    text = (world.root / "interviewer" / "answer_key.json").read_text()
    assert TELLTALE.search(text)  # the scan would catch it if it leaked
