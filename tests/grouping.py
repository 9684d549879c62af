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
    shared, long, grouped, others = [], [], [], []
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "worlds" in fixtures:
            item.add_marker(pytest.mark.world)
        if item.get_closest_marker("long"):
            group = item.nodeid.split("::")[0] if _has_module_fixture(item) else item.nodeid
            item.add_marker(pytest.mark.xdist_group(group))
            long.append(item)
        elif "shared_stack" in fixtures:
            item.add_marker(pytest.mark.xdist_group("shared-stack"))
            shared.append(item)
        elif _has_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
            grouped.append(item)
        else:
            others.append(item)
    # Workers take groups in this order. The longest go first (the shared stack's tests run for
    # minutes on one worker; a test marked `long` for a minute or more; a module's own stack or
    # build for tens of seconds), so the many short tests fill the other worker meanwhile and
    # the run does not end on one worker finishing a long group while the other waits.
    items[:] = shared + long + grouped + others


def _has_module_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(
        definition.scope in ("module", "class", "package")
        for definitions in info.name2fixturedefs.values()
        for definition in definitions
    )
