"""The import graph runs one way: a module of `sandbox` imports from its own layer or the layers
below it, never from a layer above.

The layers, lowest first (a module belongs to the longest entry that names it or its package):

- foundation: the clock, the difficulty tiers, keyed random streams, log rows, where things live
  in a world directory (`layout`), the facts of the streaming product every layer shares (`product`: devices,
  regions, app releases, the daily traffic curve, the help-center corpus) and the data model
  (`schema`: every candidate table's columns, types, descriptions, reveal rule and live writers,
  and the interviewer's truth tables).
  They know nothing of how a world is simulated, served or judged, so anything may use them.
- hooks: the hook points and the machinery faults and decoys plug into (`FaultSet`,
  `HookContext`, the `Fault` and `Decoy` base classes). The pipeline's stages call
  `FaultSet.apply` at their hook points without knowing any fault, so this sits below them.
- pipeline: the production ML stack's stages. The world drives them day by day; a stage that
  reached up into the world would make the "production system" depend on its simulation.
- monitor: metrics, alerts, model quality and drift over what the pipeline produced.
- actions: the ops console's catalog of actions and the per-stack file of applied ones. The
  running stack's services read it; it names the pipeline's features, and knows no fault.
- faults: the planted faults and the decoys. They transform the pipeline's and monitor's values at
  hook points and use those stages' constants (features, releases, alert rules); the world plants
  them, so they may not reach into the world (a decoy that needs the world's `WorldState` for an
  annotation imports it under `if TYPE_CHECKING:`).
- scenario: a scenario file's faults and decoys, and the catalog that documents them.
- world: the simulation that builds a world from a scenario, plus its health checks.
- review: what reads a built world and judges it: `verify`, the interviewer's review of a
  session, and `testing`, the bar a fault meets (it builds small worlds to judge them).
- services: the running stack's processes (`sandbox up`) over a built world and what they share
  (`common`, `spool`, `stack`, `dashboards`, ...), and the domain the gateway serves: the SQL
  console with its live telemetry (`console`) and the fleet of worlds and their builds (`fleet`).
- gateway: the one door of the running stack. Its internals are its own: the supervisor starts it
  as a process by module name, and the other services reach it over HTTP and spool files, so
  what they share with it lives in `services` or lower.
- cli: the command line on top of everything. It starts the stack as processes by module name and
  talks to a running gateway over HTTP, so it imports nothing of the gateway (`FORBIDDEN`).

Every import counts wherever it is written (module level, inside a function, under `try:`), since
it runs when that code does — except one under `if TYPE_CHECKING:`, which never runs: it only
names a type for annotations (the hook checker compares annotation text, `sandbox.faults.hooks`)
and so adds no dependency at run time. Starting a module as a process by name (`python -m
sandbox.services.gateway`) is not an import.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sandbox"
ROOT = "sandbox"

# (layer, the modules and packages in it, lowest layer first); see the module docstring for why.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "foundation",
        (
            "sandbox",
            "sandbox.clock",
            "sandbox.difficulty",
            "sandbox.rng",
            "sandbox.logs",
            "sandbox.layout",
            "sandbox.product",
            "sandbox.schema",
        ),
    ),
    ("hooks", ("sandbox.faults.base", "sandbox.faults.context", "sandbox.faults.hooks")),
    ("pipeline", ("sandbox.pipeline",)),
    ("monitor", ("sandbox.monitor",)),
    ("actions", ("sandbox.actions",)),
    ("faults", ("sandbox.faults", "sandbox.decoys")),
    ("scenario", ("sandbox.scenario", "sandbox.catalog")),
    ("world", ("sandbox.world",)),
    ("review", ("sandbox.verify", "sandbox.review", "sandbox.testing")),
    ("services", ("sandbox.services",)),
    ("gateway", ("sandbox.services.gateway",)),
    ("cli", ("sandbox.cli", "sandbox.__main__")),
)

# Layers that may not import another even though it lies below: (importer, imported, why).
FORBIDDEN = (
    (
        "cli",
        "gateway",
        "the CLI starts the gateway as a process by module name and talks to it over HTTP",
    ),
)


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int | None:
    """The index in LAYERS of the longest entry naming `module` or a package holding it (the root
    package's entry names only the package itself), or None when no entry does."""
    best: tuple[int, int] | None = None  # (entry length, layer)
    for index, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            named = module == entry or (entry != ROOT and module.startswith(entry + "."))
            if named and (best is None or len(entry) > best[0]):
                best = (len(entry), index)
    return None if best is None else best[1]


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _target(importer: str, node: ast.ImportFrom, name: str, modules: set[str]) -> str:
    """The module a `from X import name` depends on: X.name when that is a module, else X."""
    if node.level:
        is_package = importer in modules and any(m.startswith(importer + ".") for m in modules)
        package = importer if is_package else importer.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    return f"{base}.{name}" if f"{base}.{name}" in modules else base


def imports_of(importer: str, source: str, modules: set[str]) -> list[Import]:
    """Every import of a `sandbox` module in `source`, wherever it is, bar those under
    `if TYPE_CHECKING:`."""
    found: list[Import] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend(Import(importer, a.name, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.extend(
                Import(importer, _target(importer, node, a.name, modules), node.lineno)
                for a in node.names
            )
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    ours = (i for i in found if i.imported == ROOT or i.imported.startswith(ROOT + "."))
    return list(dict.fromkeys(ours))  # `from X import a, b` is one import of X


def broken_rules(imports: list[Import]) -> list[str]:
    """What each import breaks, as `importer (layer) imports imported (layer), line N: why`."""
    names = [name for name, _ in LAYERS]
    forbidden = {(a, b): why for a, b, why in FORBIDDEN}
    broken = []
    for i in imports:
        low, high = layer_of(i.importer), layer_of(i.imported)
        if low is None or high is None:
            continue  # test_every_module_has_a_layer names it
        where = f"{i.importer} ({names[low]}) imports {i.imported} ({names[high]}), line {i.line}"
        if high > low:
            broken.append(f"{where}: {names[low]} sits below {names[high]} (see LAYERS)")
        elif (names[low], names[high]) in forbidden:
            why = forbidden[names[low], names[high]]
            broken.append(f"{where}: {names[low]} may not import {names[high]}: {why}")
    return broken


def all_imports() -> list[Import]:
    modules = set(MODULES)
    return [i for m, p in MODULES.items() for i in imports_of(m, p.read_text(), modules)]


def test_every_module_has_a_layer() -> None:
    unplaced = [m for m in MODULES if layer_of(m) is None]
    assert not unplaced, f"modules in no layer (add them to LAYERS): {unplaced}"


def test_every_layer_entry_names_a_module() -> None:
    stale = [e for _, entries in LAYERS for e in entries if e not in MODULES]
    assert not stale, f"LAYERS names modules that do not exist: {stale}"


def test_imports_run_from_higher_layers_to_lower_ones() -> None:
    broken = broken_rules(all_imports())
    assert not broken, "imports against the layering:\n" + "\n".join(broken)


MODULES_FOR_CHECKS = {
    "sandbox.pipeline.serve",
    "sandbox.world",
    "sandbox.world.simulate",
    "sandbox.services.grafana",
    "sandbox.services.gateway",
    "sandbox.services.gateway.auth",
    "sandbox.cli",
    "sandbox.clock",
}


@pytest.mark.parametrize(
    ("importer", "source", "rule"),
    [
        ("sandbox.pipeline.serve", "from sandbox.world import simulate\n", "pipeline sits below"),
        (
            "sandbox.pipeline.serve",
            "def f():\n    import sandbox.world.simulate as s\n",
            "pipeline sits below",
        ),
        (
            "sandbox.pipeline.serve",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    pass\n"
            "else:\n    from sandbox.world.simulate import Simulation\n",
            "pipeline sits below",
        ),
        ("sandbox.services.grafana", "from .gateway import auth\n", "services sits below"),
        ("sandbox.cli", "from sandbox.services.gateway import auth\n", "cli may not import"),
    ],
)
def test_a_bad_import_is_named_with_the_rule_it_breaks(
    importer: str, source: str, rule: str
) -> None:
    (message,) = broken_rules(imports_of(importer, source, MODULES_FOR_CHECKS))
    assert message.startswith(f"{importer} (")
    assert rule in message


def test_imports_only_for_type_checking_do_not_count() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import typing\n"
        "if TYPE_CHECKING:\n    from sandbox.world import simulate\n"
        "if typing.TYPE_CHECKING:\n    import sandbox.world\n"
        "from sandbox import clock\n"
    )
    imports = imports_of("sandbox.pipeline.serve", source, MODULES_FOR_CHECKS)
    assert [i.imported for i in imports] == ["sandbox.clock"]
    assert not broken_rules(imports)
