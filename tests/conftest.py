"""Shared worlds: built at a small scale by `sandbox.testing`, once per machine while the code
that shapes them is unchanged, and reused by every test.

Every registered fault and decoy is planted in exactly one of `FAULT_WORLDS` (faults that do not
disturb each other share a world), so the catalog tests can check each one on a real build. Those
worlds are at the standard difficulty; `TIER_WORLDS` plant the faults that declare their tells per
tier at the other two.

Tests that use a built world (or a running stack) are marked `world`; `make test-fast` runs the
others.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import pytest

from sandbox import scenario, testing
from sandbox.difficulty import Tier
from sandbox.testing import Worlds, connect
from sandbox.world.build import BuildSummary
from tests.grouping import mark_and_group

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "scenarios"

# name -> an example scenario file, or the faults and decoys to plant with the default brief.
FAULT_WORLDS: dict[str, Path | dict[str, list[dict[str, Any]]]] = {
    "default": Path("default"),
    "leakage": EXAMPLES / "label-leakage.toml",
    "embedding": EXAMPLES / "embedding-index-mismatch.toml",
    "composite": EXAMPLES / "composite.toml",
    "immature-labels": {
        "faults": [{"id": "retrain-immature-labels"}, {"id": "upstream-unit-change"}],
        "decoys": [
            {"kind": "infra-incident", "day": 24},
            # Benign drift beside the unit change's, so the drift reports at hard flag more
            # than the fault's features.
            {"kind": "plan-repricing", "day": 17, "plan": "standard", "new_price": 13.99},
        ],
    },
    "time-travel": {
        "faults": [{"id": "training-time-travel"}, {"id": "metric-series-dropped"}],
        "decoys": [],
    },
    "version-mismatch": {
        "faults": [{"id": "served-version-mismatch"}, {"id": "online-offline-skew"}],
        # Benign drift beside the skewed feature's.
        "decoys": [{"kind": "plan-repricing", "day": 19, "plan": "premium", "new_price": 18.99}],
    },
    "threshold": {
        "faults": [{"id": "stale-decision-threshold"}, {"id": "serving-default-fallback"}],
        "decoys": [],
    },
    "monitoring": {
        "faults": [{"id": "rolling-drift-reference"}, {"id": "duplicate-billing-events"}],
        "decoys": [],
    },
}
# name -> (a FAULT_WORLDS world, the difficulty it is built at instead of standard), or an example
# scenario file at its own difficulty.
TIER_WORLDS: dict[str, tuple[str, Tier] | Path] = {
    "default-guided": ("default", "guided"),
    "default-hard": EXAMPLES / "feature-nulls-wrong-mean-hard.toml",
    "leakage-guided": ("leakage", "guided"),
    "leakage-hard": EXAMPLES / "label-leakage-hard.toml",
    "version-mismatch-guided": ("version-mismatch", "guided"),
    "version-mismatch-hard": ("version-mismatch", "hard"),
    "immature-labels-guided": ("immature-labels", "guided"),
    "immature-labels-hard": ("immature-labels", "hard"),
    "embedding-guided": ("embedding", "guided"),
    "embedding-hard": EXAMPLES / "embedding-index-mismatch-hard.toml",
    "threshold-guided": ("threshold", "guided"),
    "threshold-hard": ("threshold", "hard"),
    "time-travel-guided": ("time-travel", "guided"),
    "time-travel-hard": ("time-travel", "hard"),
    "composite-guided": ("composite", "guided"),
    "composite-hard": ("composite", "hard"),
    "monitoring-guided": ("monitoring", "guided"),
    "monitoring-hard": ("monitoring", "hard"),
}
# Unusual parameters: earliest onsets with the smallest severities, and late onsets with the
# largest, each on another target where the fault has one.
EDGE_WORLDS: dict[str, dict[str, list[dict[str, Any]]]] = {
    "edge-early": {
        "faults": [
            {
                "id": "feature-nulls-wrong-mean",
                "onset_day": 1,
                "ramp_days": 0,
                "target_feature": "minutes_per_session_28d",
                "null_share": 0.05,
                "fill_multiplier": 0.4,
            },
            {"id": "label-leakage", "onset_day": 2, "leak_strength": 0.5},
            {"id": "upstream-unit-change", "onset_day": 1, "target_device": "ios"},
        ],
        "decoys": [{"kind": "app-rollout", "day": 1, "device": "web"}],
    },
    "edge-late": {
        "faults": [
            {"id": "retrain-immature-labels", "onset_day": 40, "newest_label_age_days": 0},
            {"id": "duplicate-billing-events", "onset_day": 40, "duplicate_share": 0.8},
            {"id": "embedding-index-mismatch", "onset_day": 40},
        ],
        "decoys": [{"kind": "marketing-campaign", "day": 40, "days": 7}],
    },
}


# The default scenario at the smallest scale that trains a model comfortably: what the check that
# a world rebuilds byte for byte builds again, in a fresh interpreter.
SMALLEST = "default-smallest"
SMALLEST_SCALE = 0.04  # 1,000 customers


def scenario_for(name: str) -> scenario.Scenario:
    if name == "control":
        return testing.control_scenario()
    if name == SMALLEST:
        return scenario.load(None).with_overrides(seed=testing.SEED, scale=SMALLEST_SCALE)
    tiered = TIER_WORLDS.get(name)
    if isinstance(tiered, tuple):
        return scenario_for(tiered[0]).with_overrides(difficulty=tiered[1])
    source = {**FAULT_WORLDS, **EDGE_WORLDS, **TIER_WORLDS}[name]
    if source == Path("default"):
        return testing.small(scenario.load(None))
    if isinstance(source, Path):
        return testing.small(scenario.load(source))
    return testing.planted(source["faults"], source["decoys"], f"test world {name}")


def _worlds_in_test_order(items: list[pytest.Item]) -> list[str]:
    """The named worlds the collected tests use, in the order they first need them."""
    names = ["default", "control"]
    for item in items:
        callspec = getattr(item, "callspec", None)
        world = callspec.params.get("world") if callspec else None
        if isinstance(world, str) and world in {**FAULT_WORLDS, **EDGE_WORLDS, **TIER_WORLDS}:
            names.append(world)
    return list(dict.fromkeys(names))


@pytest.fixture(scope="session")
def worlds(request: pytest.FixtureRequest):
    worlds = Worlds(scenario_for)
    # A run that reaches the fault catalog builds most worlds: start them all now, in parallel.
    if any(
        item.path.name == "test_catalog.py" and item.get_closest_marker("world")
        for item in request.session.items
    ):
        worlds.prefetch(_worlds_in_test_order(request.session.items))
    yield worlds
    worlds.close()


@pytest.fixture(scope="session")
def faulty_world(worlds: Worlds, tmp_path_factory: pytest.TempPathFactory) -> BuildSummary:
    """The default scenario (with its planted fault) at a small scale: this run's own copy, since
    the service tests write run state and sessions into it, and the suite's parallel workers
    must not share those."""
    cached = worlds.get("default")
    root = tmp_path_factory.mktemp("default-world") / cached.root.name
    shutil.copytree(cached.root, root, ignore=shutil.ignore_patterns("run"))
    return dataclasses.replace(cached, root=root)


@pytest.fixture(scope="session")
def control_world(worlds: Worlds) -> BuildSummary:
    """The no-fault control scenario, same seed and scale as every fault world."""
    return worlds.get("control")


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


# Collected first, so that xdist (which reads each test's group when its own hook runs) sees it.
pytest_collection_modifyitems = pytest.hookimpl(tryfirst=True)(mark_and_group)
