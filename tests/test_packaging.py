"""The wheel: what `pip install` puts in place holds every file the package reads beside its code
(dashboard definitions, the default scenario, templates, static files, the console's function
allowlist), and declares every library the code imports."""

from __future__ import annotations

import ast
import email
import importlib.metadata
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "sandbox"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    """The wheel of the working tree, built offline from a copy of it (a build writes `build/`
    and `*.egg-info` beside its sources: the checkout stays as it is)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(
        PACKAGE, source / "sandbox", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    out = tmp_path_factory.mktemp("wheel")
    offline = ["--no-deps", "--no-build-isolation", "--no-index", "--quiet"]
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", *offline, "--wheel-dir", str(out), str(source)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, (
        "building the wheel failed; it uses the environment's setuptools, which the dev extras "
        f"bring (`make` installs them):\n{done.stderr[-3000:]}"
    )
    (built,) = out.glob("*.whl")
    with zipfile.ZipFile(built) as archive:
        yield archive


def test_the_wheel_holds_every_file_the_package_reads(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    dashboards = {n for n in names if n.startswith("sandbox/dashboards/")}
    assert dashboards == {
        f"sandbox/dashboards/{p.name}" for p in (PACKAGE / "dashboards").glob("*.toml")
    }
    assert len(dashboards) >= 7
    assert "sandbox/scenarios/default.toml" in names
    data = {
        path.relative_to(REPO).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts
    }
    assert data, "the package has data files"
    assert not data - names, f"missing from the wheel: {sorted(data - names)}"


def _imported_top_levels() -> set[str]:
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {name for name in found if name not in sys.stdlib_module_names and name != "sandbox"}


def test_the_wheel_declares_every_library_the_code_imports(wheel: zipfile.ZipFile) -> None:
    (metadata_name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    metadata = email.message_from_bytes(wheel.read(metadata_name))
    runtime = {
        _canonical(re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0])
        for requirement in metadata.get_all("Requires-Dist") or []
        if "extra ==" not in requirement
    }
    assert {"plotly", "skops", "duckdb", "mlflow"} <= runtime
    providers = importlib.metadata.packages_distributions()
    undeclared = {}
    for module in sorted(_imported_top_levels()):
        distributions = {_canonical(d) for d in providers.get(module, [module])}
        if not distributions & runtime:
            undeclared[module] = sorted(distributions)
    assert not undeclared, f"imported but not a declared dependency: {undeclared}"
