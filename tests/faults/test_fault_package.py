"""A fault from another package: installed into a directory of its own, found through the
`sandbox.faults` entry point, and held to the catalog's bar by `sandbox.testing` on one small
world of its own (the control world is the one every fault is compared against)."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from sandbox import testing
from sandbox.faults import registry
from sandbox.world.build import BuildSummary

PACKAGE = Path(__file__).parents[1] / "example_fault_package"
FAULT_ID = "billing-unit-change"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The example package installed (without its dependencies, from no index) into a temporary
    directory put on the path; taken off again afterwards, so no other test sees its fault."""
    # Built from a copy: a build writes its metadata next to the sources.
    source = tmp_path_factory.mktemp("source") / PACKAGE.name
    shutil.copytree(PACKAGE, source)
    target = tmp_path_factory.mktemp("site-packages")
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"),
            *("--no-build-isolation", "--target", str(target), str(source)),
        ],
        check=True,
    )
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    testing.refresh_catalog()
    yield target
    sys.path.remove(str(target))
    for module in [m for m in sys.modules if m.split(".")[0] == "example_faults"]:
        del sys.modules[module]
    testing.refresh_catalog()


def test_the_fault_is_found_through_the_entry_point(installed: Path) -> None:
    found = {ep.name: ep.value for ep in entry_points(group=registry.ENTRY_POINT_GROUP)}
    assert found[FAULT_ID] == "example_faults.billing:BillingUnitChange"
    cls = registry.get(FAULT_ID)
    assert cls.__module__ == "example_faults.billing"
    assert Path(sys.modules[cls.__module__].__file__ or "").is_relative_to(installed)
    fault = testing.planted([{"id": FAULT_ID, "onset_day": 15}]).faults[0]
    assert isinstance(fault, cls) and fault.params.onset_day == 15
    # The bar's parts that need no world.
    testing.assert_documented(cls)
    testing.assert_hooks_well_formed(cls)
    testing.assert_answer_key_complete(fault)


@pytest.mark.world
def test_the_fault_meets_the_bar_on_a_small_world(
    installed: Path, control_world: BuildSummary
) -> None:
    spec = testing.planted([{"id": FAULT_ID}], name=FAULT_ID)
    world = testing.cached_world(FAULT_ID, spec)
    assert testing.control_world().root == control_world.root  # one control world for all
    testing.assert_meets_the_bar(spec.faults[0], world, control_world)
