"""The libraries that shape a world: one list and one reading of their versions, for the world's
manifest and for the key of the test-world cache."""

from __future__ import annotations

import importlib.metadata

import pytest

from sandbox.testing import worlds
from sandbox.world import libraries
from sandbox.world.libraries import library_versions


def test_every_library_that_computes_a_world_is_read_as_installed() -> None:
    versions = library_versions()
    assert tuple(versions) == libraries.SHAPING_LIBRARIES
    # The warehouse, the simulation's frames and the models at least.
    assert {"duckdb", "polars", "numpy", "scikit-learn"} <= set(versions)
    for name, version in versions.items():
        assert version == importlib.metadata.version(name)


def test_a_library_not_installed_is_recorded_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(libraries, "SHAPING_LIBRARIES", ("numpy", "no-such-distribution"))
    assert library_versions() == {
        "numpy": importlib.metadata.version("numpy"),
        "no-such-distribution": None,
    }


def test_the_test_world_key_follows_the_library_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    digest = worlds.sources_digest.__wrapped__  # uncached: each call reads the versions again
    before = digest()
    assert digest() == before
    other = {**library_versions(), "numpy": "0.0.1"}
    monkeypatch.setattr(worlds, "library_versions", lambda: other)
    assert digest() != before
