"""Small worlds for tests: built once per machine while the code that shapes them is unchanged.

A world is cached under a key of everything that shapes it: the simulation's sources (this
package minus the parts that only read worlds), the sources of any fault or decoy planted from
another package, the libraries that compute it, and the scenario with its seed and scale. A run
reuses what an earlier run on this machine built from the same code; a build is written beside
its place in the cache and moved in whole, so a run that stops halfway leaves nothing half-built.

    spec = planted([{"id": "my-fault", "onset_day": 15}])
    world = cached_world("my-fault", spec)      # a BuildSummary; built the first time only
    control = control_world()                   # the same world without any fault
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import sys
import tomllib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from functools import cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import duckdb

import sandbox
from sandbox import scenario
from sandbox.layout import IncompleteWorld, read_manifest, user_cache
from sandbox.world.build import BuildSummary, build
from sandbox.world.libraries import library_versions

SEED = 7
SMALL_SCALE = 0.4  # 10,000 customers: stable weekly metrics; build time is mostly fixed costs
CONTROL = "control"  # the built-in scenario without faults: same world, one genuine change
WORLD_CACHE = Path(os.environ.get("SANDBOX_TEST_WORLDS") or user_cache() / "test-worlds")
# Parts of the package that read worlds but do not shape them. The command line only hands a
# scenario to `sandbox.world.build`, which the cache calls directly.
NOT_SHAPING = (
    "services",
    "review",
    "testing",
    "dashboards",
    "actions",
    "cli.py",
    "__main__.py",
    "__pycache__",
)
BUILD_WORKERS = 2  # worker processes building worlds ahead of the tests that need them


def small(spec: scenario.Scenario) -> scenario.Scenario:
    """The scenario at the tests' seed and small scale."""
    return spec.with_overrides(seed=SEED, scale=SMALL_SCALE)


def planted(
    faults: Iterable[dict[str, Any]],
    decoys: Iterable[dict[str, Any]] = (),
    name: str = "test world",
) -> scenario.Scenario:
    """The default world and brief with these faults (`{"id": ..., **params}`) and decoys
    (`{"kind": ..., **params}`), small."""
    default = tomllib.loads(scenario.load(None).text)
    raw = {
        "world": default["world"],
        # The default brief's claims are about the default fault's world, not these faults'.
        "brief": {k: v for k, v in default["brief"].items() if k != "claims"},
        "faults": list(faults),
        "decoys": list(decoys),
    }
    return small(scenario.Scenario(raw, f"<{name}>"))


def control_scenario() -> scenario.Scenario:
    return small(scenario.builtin(CONTROL))


def refresh_catalog() -> None:
    """Read the `sandbox.faults` and `sandbox.decoys` entry points again, after a package that
    registers faults was put on the path (or taken off it) while this process runs: `planted`
    knows a fault by its id only once the catalog lists it."""
    from sandbox.decoys import registry as decoy_registry
    from sandbox.faults import registry

    registry.catalog.cache_clear()
    decoy_registry.catalog.cache_clear()
    scenario.scenario_model.cache_clear()


def connect(world: BuildSummary | Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection to a built world's warehouse."""
    root = world.root if isinstance(world, BuildSummary) else Path(world)
    return duckdb.connect(str(root / "candidate" / "world.duckdb"), read_only=True)


# -- the cache key ------------------------------------------------------------------------------
def _digest_tree(digest: Any, root: Path, skip: Iterable[str] = ("__pycache__",)) -> None:
    skipped = set(skip)
    paths = sorted(root.rglob("*")) if root.is_dir() else [root]
    for path in paths:
        relative = path.relative_to(root) if root.is_dir() else Path(path.name)
        if path.is_file() and not set(relative.parts) & skipped:
            digest.update(str(relative).encode() + b"\0" + path.read_bytes() + b"\0")


@cache
def sources_digest() -> str:
    """The simulation's sources and the versions of the libraries that compute a world."""
    digest = hashlib.sha256()
    _digest_tree(digest, Path(sandbox.__file__).parent, NOT_SHAPING)
    for library, version in library_versions().items():
        digest.update(f"{library}=={version}".encode())
    return digest.hexdigest()


def _outside_sources(spec: scenario.Scenario) -> str:
    """The sources of planted faults and decoys that come from other packages: the whole
    top-level package each one's module belongs to."""
    roots: set[Path] = set()
    for planted_ in [*spec.faults, *spec.decoys]:
        top = type(planted_).__module__.split(".")[0]
        if top == sandbox.__name__:
            continue
        module_file = Path(sys.modules[top].__file__ or "")
        roots.add(module_file.parent if module_file.name == "__init__.py" else module_file)
    if not roots:
        return ""
    digest = hashlib.sha256()
    for root in sorted(roots):
        digest.update(root.name.encode() + b"\0")
        _digest_tree(digest, root)
    return digest.hexdigest()


def world_key(spec: scenario.Scenario) -> str:
    return hashlib.sha256(
        (sources_digest() + _outside_sources(spec) + spec.as_toml()).encode()
    ).hexdigest()[:16]


def world_root(name: str, spec: scenario.Scenario) -> Path:
    """Where the world `name` built from `spec` lives in the cache."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name):
        raise ValueError(f"a world name is lowercase letters, digits and dashes: {name!r}")
    return WORLD_CACHE / f"{name}-{world_key(spec)}"


# -- building ------------------------------------------------------------------------------------
def cached(root: Path) -> BuildSummary | None:
    try:
        return BuildSummary(root=root, manifest=read_manifest(root), seconds=0.0)
    except IncompleteWorld:
        return None


def cached_world(name: str, spec: scenario.Scenario) -> BuildSummary:
    """The world `name` built from `spec`: from the cache, or built here and cached."""
    root = world_root(name, spec)
    return cached(root) or _build_into_cache(name, spec.as_toml(), str(root))


def control_world() -> BuildSummary:
    """The control world: the scenario tests compare planted faults against."""
    return cached_world(CONTROL, control_scenario())


@contextlib.contextmanager
def _building(final: Path, name: str) -> Iterator[None]:
    """Held while `name` is built: test processes running side by side build each world once,
    the later ones waiting for it instead of building it again."""
    locks = final.parent / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with (locks / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _build_into_cache(name: str, text: str, root: str) -> BuildSummary:
    """Build (perhaps in a worker process) beside its place in the cache and move it in whole,
    unless another process has meanwhile. One OpenMP thread: two builds share two cores, and
    idle OpenMP threads spinning for work they will not get slow everything down."""
    final = Path(root)
    with _building(final, name):
        return cached(final) or _build_unlocked(name, text, final)


def _build_unlocked(name: str, text: str, final: Path) -> BuildSummary:
    from threadpoolctl import threadpool_limits

    partial = final.with_name(f"{final.name}.partial-{os.getpid()}")
    with threadpool_limits(limits=1, user_api="openmp"):
        build(scenario.parse(text, f"<test world {name}>"), partial, force=True)
    try:
        partial.rename(final)
    except OSError:  # another run put the same world there first: theirs is as good
        shutil.rmtree(partial, ignore_errors=True)
    _prune(final, name)
    return BuildSummary(root=final, manifest=read_manifest(final), seconds=0.0)


def _prune(final: Path, name: str) -> None:
    """Earlier code's builds of this world, and halves left by runs that were killed."""
    mine = re.compile(re.escape(name) + r"-[0-9a-f]{16}(\.partial-(\d+))?")
    for stale in final.parent.iterdir():
        match = mine.fullmatch(stale.name)
        if match is None or stale == final:
            continue
        if match.group(2) is None or not _running(int(match.group(2))):
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
    """Named worlds, each built once (or taken from the cache); `prefetch` starts builds in
    worker processes so they are ready by the time a test asks for them."""

    def __init__(self, scenario_for: Callable[[str], scenario.Scenario]) -> None:
        self.scenario_for = scenario_for
        self.built: dict[str, BuildSummary] = {}
        self.pending: dict[str, Future[BuildSummary]] = {}
        self.pool: ProcessPoolExecutor | None = None

    def prefetch(self, names: Iterable[str]) -> None:
        for name in names:
            if name in self.built or name in self.pending or cached(self._root(name)):
                continue
            if self.pool is None:
                self.pool = ProcessPoolExecutor(BUILD_WORKERS, mp_context=get_context("spawn"))
            text = self.scenario_for(name).as_toml()
            self.pending[name] = self.pool.submit(
                _build_into_cache, name, text, str(self._root(name))
            )

    def get(self, name: str) -> BuildSummary:
        if name not in self.built:
            root = self._root(name)
            world = cached(root)
            if world is None and name in self.pending:
                world = self.pending.pop(name).result()
            self.built[name] = world or _build_into_cache(
                name, self.scenario_for(name).as_toml(), str(root)
            )
        return self.built[name]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def _root(self, name: str) -> Path:
        return world_root(name, self.scenario_for(name))
