"""The suite runs in two processes: the tests that share a stack, and the tests of a module with a
module-scoped fixture, each run on one worker, so each stack or module fixture is set up once.
Checked by running the suite's own grouping hook on a small generated suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CONFTEST = """
import os
from pathlib import Path

import pytest

from tests.grouping import mark_and_group

pytest_collection_modifyitems = pytest.hookimpl(tryfirst=True)(mark_and_group)

OUT = Path(__file__).parent / "out"


def note(what):
    OUT.mkdir(exist_ok=True)
    with (OUT / what).open("a") as f:
        f.write(os.environ.get("PYTEST_XDIST_WORKER", "main") + "\\n")


@pytest.fixture(scope="session")
def shared_stack():
    note("shared-stack-setups")


@pytest.fixture(scope="module")
def module_stack():
    note("module-stack-setups")
"""

SHARED = """
import pytest
from conftest import note


@pytest.mark.parametrize("n", range(4))
def test_on_the_shared_stack(shared_stack, n):
    note("shared-runs")
"""

MODULE = """
import pytest
from conftest import note


@pytest.mark.parametrize("n", range(6))
def test_on_the_modules_stack(module_stack, n):
    note("module-runs")


@pytest.mark.parametrize("n", range(6))
def test_alone(n):
    note("alone-runs")


@pytest.mark.long
def test_long():
    note("long-runs")
"""


PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2"]
PYTEST += ["--dist", "loadgroup", "--no-loadscope-reorder"]


def _lines(path: Path) -> list[str]:
    return path.read_text().split()


def _suite(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    for name in ("test_shared_a.py", "test_shared_b.py"):
        (tmp_path / name).write_text(SHARED)
    (tmp_path / "test_module.py").write_text(MODULE)


def _pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*args, "-c", os.devnull, "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_longest_groups_are_handed_out_first(tmp_path: Path) -> None:
    """The shared stack's tests, then the tests marked long, then each module's group, then the
    tests that stand alone."""
    _suite(tmp_path)
    run = _pytest(tmp_path, sys.executable, "-m", "pytest", "-q", "--collect-only")
    assert run.returncode == 0, run.stdout + run.stderr
    # test_module.py is collected before test_shared_*.py: the order is the hook's.
    tests = [line for line in run.stdout.splitlines() if "::" in line]
    kinds = [
        "shared"
        if "shared_stack" in t
        else "long"
        if "test_long" in t
        else "module"
        if "modules_stack" in t
        else "alone"
        for t in tests
    ]
    assert kinds == ["shared"] * 8 + ["long"] + ["module"] * 6 + ["alone"] * 6, tests


def test_a_stack_shared_by_modules_and_a_modules_own_fixture_are_set_up_once(
    tmp_path: Path,
) -> None:
    _suite(tmp_path)
    run = _pytest(tmp_path, *PYTEST)
    assert run.returncode == 0, run.stdout + run.stderr
    out = tmp_path / "out"
    assert len(_lines(out / "shared-runs")) == 8 and len(set(_lines(out / "shared-runs"))) == 1
    assert len(_lines(out / "shared-stack-setups")) == 1
    assert len(set(_lines(out / "module-runs"))) == 1
    assert len(_lines(out / "module-stack-setups")) == 1
    assert len(_lines(out / "alone-runs")) == 6
