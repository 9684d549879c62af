"""Shared worlds: built at a small scale, once per machine while the code that shapes them is
unchanged, and reused by every test.

Every registered fault and decoy is planted in exactly one of `FAULT_WORLDS` (faults that do not
disturb each other share a world), so the catalog tests can check each one on a real build.

Tests that use a built world (or a running stack) are marked `world`; `make test-fast` runs the
others.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import tomllib
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import duckdb
import pytest

from sandbox import scenario
from sandbox.world.build import BuildSummary, build
from sandbox.world.layout import IncompleteWorld, read_manifest

SMALL_SCALE = 0.4  # 10,000 customers: stable weekly metrics; build time is mostly fixed costs
REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "scenarios"
CONTROL_SCENARIO = scenario.builtin_path("control")

# name -> an example scenario file, or the faults and decoys to plant with the default brief.
FAULT_WORLDS: dict[str, Path | dict[str, list[dict[str, Any]]]] = {
    "default": Path("default"),
    "leakage": EXAMPLES / "label-leakage.toml",
    "embedding": EXAMPLES / "embedding-index-mismatch.toml",
    "composite": EXAMPLES / "composite.toml",
    "immature-labels": {
        "faults": [{"id": "retrain-immature-labels"}, {"id": "upstream-unit-change"}],
        "decoys": [{"kind": "infra-incident", "day": 24}],
    },
    "time-travel": {
        "faults": [{"id": "training-time-travel"}, {"id": "metric-series-dropped"}],
        "decoys": [],
    },
    "version-mismatch": {
        "faults": [{"id": "served-version-mismatch"}, {"id": "online-offline-skew"}],
        "decoys": [],
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


def scenario_for(name: str) -> scenario.Scenario:
    source = {**FAULT_WORLDS, **EDGE_WORLDS, "control": CONTROL_SCENARIO}[name]
    if source == Path("default"):
        spec = scenario.load(None)
    elif isinstance(source, Path):
        spec = scenario.load(source)
    else:
        default = tomllib.loads(scenario.load(None).text)
        raw = {"world": default["world"], "brief": default["brief"], **source}
        spec = scenario.Scenario(raw, f"<test world {name}>")
    return spec.with_overrides(seed=7, scale=SMALL_SCALE)


# Built worlds are kept here, each under a key of everything that shapes it (the simulation's
# sources, the libraries that compute it, the scenario, seed and scale), so a run reuses what an
# earlier run on this machine built from the same code. Services and the review read worlds but
# do not shape them.
WORLD_CACHE = Path(
    os.environ.get("SANDBOX_TEST_WORLDS")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "ml-incident-sandbox"
    / "test-worlds"
)
NOT_SHAPING = ("services", "review", "__pycache__")
SHAPING_LIBRARIES = ("numpy", "polars", "duckdb", "scikit-learn", "faiss-cpu", "mlflow", "pandas")


def _sources_digest() -> str:
    digest = hashlib.sha256()
    package = REPO / "sandbox"
    for path in sorted(package.rglob("*")):
        relative = path.relative_to(package)
        if path.is_file() and not set(relative.parts) & set(NOT_SHAPING):
            digest.update(str(relative).encode() + b"\0" + path.read_bytes() + b"\0")
    for library in SHAPING_LIBRARIES:
        try:
            digest.update(f"{library}=={importlib.metadata.version(library)}".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{library} missing".encode())
    return digest.hexdigest()


SOURCES_DIGEST = _sources_digest()


def world_key(name: str) -> str:
    spec = scenario_for(name)
    return hashlib.sha256((SOURCES_DIGEST + spec.as_toml()).encode()).hexdigest()[:16]


# Worlds are built in this many worker processes ahead of the tests that need them (2 cores).
BUILD_WORKERS = 2


def _build_named(name: str, root: str) -> BuildSummary:
    """A build (in a worker process), written beside its place in the cache and moved in whole,
    so a run that stops halfway or races another leaves nothing half-built there. One OpenMP
    thread: two builds share two cores, and idle OpenMP threads spinning for work they will not
    get slow everything down."""
    from threadpoolctl import threadpool_limits

    final = Path(root)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f"{final.name}.partial-{os.getpid()}")
    with threadpool_limits(limits=1, user_api="openmp"):
        build(scenario_for(name), partial, force=True)
    try:
        partial.rename(final)
    except OSError:  # another run put the same world there first: theirs is as good
        shutil.rmtree(partial, ignore_errors=True)
    _prune(final, name)
    return BuildSummary(root=final, manifest=read_manifest(final), seconds=0.0)


def _prune(final: Path, name: str) -> None:
    """Earlier code's builds of this world, and halves left by runs that were killed."""
    for stale in final.parent.glob(f"{name}-*"):
        if ".partial-" in stale.name:
            if not _running(int(stale.name.rsplit("-", 1)[1])):
                shutil.rmtree(stale, ignore_errors=True)
        elif stale != final:
            shutil.rmtree(stale, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Worlds:
    """Builds a named world once per session; `prefetch` starts builds in worker processes so
    they are ready by the time a test asks for them."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self.factory = factory
        self.built: dict[str, BuildSummary] = {}
        self.pending: dict[str, Future[BuildSummary]] = {}
        self.pool: ProcessPoolExecutor | None = None

    def prefetch(self, names: list[str]) -> None:
        for name in names:
            if name in self.built or name in self.pending or self._cached(name):
                continue
            if self.pool is None:
                self.pool = ProcessPoolExecutor(BUILD_WORKERS, mp_context=get_context("spawn"))
            self.pending[name] = self.pool.submit(_build_named, name, str(self._root(name)))

    def get(self, name: str) -> BuildSummary:
        if name not in self.built:
            cached = self._cached(name)
            if cached:
                self.built[name] = cached
            elif name in self.pending:
                self.built[name] = self.pending.pop(name).result()
            else:
                self.built[name] = _build_named(name, str(self._root(name)))
        return self.built[name]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def _root(self, name: str) -> Path:
        return WORLD_CACHE / f"{name}-{world_key(name)}"

    def _cached(self, name: str) -> BuildSummary | None:
        root = self._root(name)
        try:
            return BuildSummary(root=root, manifest=read_manifest(root), seconds=0.0)
        except IncompleteWorld:
            return None


def _worlds_in_test_order(items: list[pytest.Item]) -> list[str]:
    """The named worlds the collected tests use, in the order they first need them."""
    names = ["default", "control"]
    for item in items:
        callspec = getattr(item, "callspec", None)
        world = callspec.params.get("world") if callspec else None
        if isinstance(world, str) and world in {**FAULT_WORLDS, **EDGE_WORLDS}:
            names.append(world)
    return list(dict.fromkeys(names))


@pytest.fixture(scope="session")
def worlds(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    worlds = Worlds(tmp_path_factory)
    # A run that reaches the fault catalog builds most worlds: start them all now, in parallel.
    if any(item.path.name == "test_catalog.py" for item in request.session.items):
        worlds.prefetch(_worlds_in_test_order(request.session.items))
    yield worlds
    worlds.close()


@pytest.fixture(scope="session")
def faulty_world(worlds: Worlds) -> BuildSummary:
    """The default scenario (with its planted fault) at a small scale."""
    return worlds.get("default")


@pytest.fixture(scope="session")
def control_world(worlds: Worlds) -> BuildSummary:
    """The no-fault control scenario, same seed and scale as every fault world."""
    return worlds.get("control")


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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that asks for a built world, directly or through its fixtures, is a `world` test."""
    for item in items:
        if "worlds" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.world)
