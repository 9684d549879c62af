"""The catalog's test kit: hold a fault to the bar every built-in fault meets.

A package that adds a fault through the `sandbox.faults` entry point tests it like this (with
pytest; the world is built once per machine and cached while the code that shapes it is
unchanged, the control world is shared with every other fault's tests):

    import pytest
    from sandbox import testing

    @pytest.fixture(scope="session")
    def planted():
        spec = testing.planted([{"id": "billing-unit-change", "onset_day": 15}])
        return spec.faults[0], testing.cached_world("billing-unit-change", spec)

    def test_the_fault_meets_the_bar(planted):
        fault, world = planted
        testing.assert_meets_the_bar(fault, world, testing.control_world())

`sandbox.testing.bar` has the parts of the bar one by one; `sandbox.testing.worlds` builds and
caches small worlds.
"""

from sandbox.testing.bar import (
    FaultFailure,
    assert_absent_without_it,
    assert_answer_key_complete,
    assert_documented,
    assert_evidence_exists,
    assert_hooks_well_formed,
    assert_investigation_fits_tier,
    assert_investigation_reaches_evidence,
    assert_meets_the_bar,
    assert_no_tells,
    assert_nothing_names,
    assert_symptom_shows,
    assert_verifies_where_planted,
    candidate_texts,
    evidence_exists,
    symptom_levels,
    tables_read,
    telltale,
)
from sandbox.testing.worlds import (
    SEED,
    SMALL_SCALE,
    WORLD_CACHE,
    Worlds,
    cached_world,
    connect,
    control_scenario,
    control_world,
    planted,
    refresh_catalog,
    small,
    world_key,
)

__all__ = [
    "SEED",
    "SMALL_SCALE",
    "WORLD_CACHE",
    "FaultFailure",
    "Worlds",
    "assert_absent_without_it",
    "assert_answer_key_complete",
    "assert_documented",
    "assert_evidence_exists",
    "assert_hooks_well_formed",
    "assert_investigation_fits_tier",
    "assert_investigation_reaches_evidence",
    "assert_meets_the_bar",
    "assert_no_tells",
    "assert_nothing_names",
    "assert_symptom_shows",
    "assert_verifies_where_planted",
    "cached_world",
    "candidate_texts",
    "connect",
    "control_scenario",
    "control_world",
    "evidence_exists",
    "planted",
    "refresh_catalog",
    "small",
    "symptom_levels",
    "tables_read",
    "telltale",
    "world_key",
]
