"""How the suite's tests are marked and grouped for its parallel run (`--dist loadgroup`): kept
apart from `tests/conftest.py` so a check can load it without the suite's worlds."""

from __future__ import annotations

import pytest


def mark_and_group(items: list[pytest.Item]) -> None:
    """A test that asks for a built world, directly or through its fixtures, is a `world` test.

    Under `--dist loadgroup` a test goes to any worker unless it has a group. The tests on the
    shared stack are one group, so it is started once, on one worker. The tests of a module with
    a module-scoped fixture (its own stack, a session, a build) are a group per module, so that
    fixture is set up once, not once per worker."""
    shared, others = [], []
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "worlds" in fixtures:
            item.add_marker(pytest.mark.world)
        if "shared_stack" in fixtures:
            item.add_marker(pytest.mark.xdist_group("shared-stack"))
            shared.append(item)
            continue
        if _has_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
        others.append(item)
    # Run in one process, the shared stack's tests come last, so it is up only once the other
    # stacks are down.
    items[:] = others + shared


def _has_module_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(
        definition.scope in ("module", "class", "package")
        for definitions in info.name2fixturedefs.values()
        for definition in definitions
    )
