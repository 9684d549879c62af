"""The hardening benchmark's fleet part: many stacks on one machine, each on its own variant of
the default scenario with one active candidate, against the README's fleet budget.

1. Variants: `--stacks` re-seeded variants of the default scenario (seed `FIRST_SEED` + i, at
   `--fleet-scale`), built by the real CLI (`sandbox build --seed S --scale X --out
   DIR/variant-i`), at most `BUILDS_AT_ONCE` at a time. With `--fleet-worlds DIR` a variant
   already there with the same seed and scale, built from the same simulation code, is reused;
   what is built is kept there. A reused variant's `run/` (its last stack's state) is removed
   first, so every stack starts fresh.
2. Start: one `sandbox up DIR/variant-i --port P` after another, each until `GET /-/health`
   answers 200; then one candidate session per stack, `IDLE_SECONDS` of idling (the stacks' own
   traffic and jobs keep running) and the summed PSS and RSS of each stack's process tree, with
   the machine's MemAvailable.
3. Load: one simulated candidate per stack (tests/services/candidates.py), all at once, for
   `--fleet-seconds`, with the load's pause between actions. A dashboard load is every panel of
   one dashboard fetched at once: its time runs from the first panel's send to the last panel's
   answer. Console queries are `POST /api/sql`.
4. Stop: SIGINT to every stack, and whatever of them is still alive afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.build import GB, _scale_label, _table, read_manifest, sandbox_command
from benchmarks.stack import (
    Memory,
    Phase,
    StackRun,
    Usage,
    _kib_field,
    free_port,
    memory_now,
    proc_table,
    start_stack,
    stop_stack,
    stop_table,
)
from sandbox import scenario
from sandbox.services import stack as stack_files
from sandbox.testing.worlds import world_key
from tests.services.candidates import (
    PANEL_ROUTE,
    SQL_ROUTE,
    TYPICAL,
    Candidate,
    Outcome,
    Session,
    create_session,
    percentile,
    route_stats,
    run_candidates,
    stats_table,
)

STACKS = 8
FLEET_SECONDS = 60.0
FIRST_SEED = 1000  # variant i is the default scenario at seed FIRST_SEED + i
BUILDS_AT_ONCE = 2  # one build per core
BUILD_POLL_S = 0.5
IDLE_SECONDS = 20.0
SAMPLE_EVERY_S = 1.0  # one /proc scan for all stacks: a scan per stack costs a core's share
GIB = 2**30

# The README's fleet budget (2 cores, 24 GiB, scale 1).
STACKS_BUDGET = 8
DASHBOARD_P95_S = 1.5
CONSOLE_P95_MS = 300.0
PSS_BUDGET = 1.0 * GB
RSS_BUDGET = 1.5 * GB


@dataclass
class Variant:
    index: int
    seed: int
    path: Path
    log: Path
    built_s: float | None = None  # None: reused
    build_exit: int = 0
    stale: bool = False  # rebuilt because the simulation's code changed since

    @property
    def label(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class DashboardLoad:
    seconds: float  # first panel sent -> last panel answered
    panels: int
    failed: int  # panels not answered 200


@dataclass
class Member:
    """One stack of the fleet: its variant, its run, its candidate and what was measured."""

    variant: Variant
    run: StackRun
    session: Session | None = None
    candidate: Candidate | None = None
    idle: Memory | None = None
    peak_rss: int = 0  # summed over the tree, sampled from its start to its stop
    failure: str | None = None

    @property
    def outcomes(self) -> list[Outcome]:
        return self.candidate.outcomes if self.candidate else []

    def loads(self) -> list[DashboardLoad]:
        return dashboard_loads(self.outcomes)

    def console_ms(self) -> list[float]:
        return [o.seconds * 1000 for o in self.outcomes if o.route == SQL_ROUTE]


@dataclass
class Fleet:
    stacks: int
    scale: float
    seconds: float
    think_s: float
    worlds: Path
    variants: list[Variant] = field(default_factory=list)
    build_wall_s: float = 0.0
    members: list[Member] = field(default_factory=list)
    available_before: int = 0  # MemAvailable before the first stack started
    available_idle: int = 0  # ...with every stack idle
    available_low: int = 0  # ...lowest seen from the first start to the stop
    load_wall_s: float = 0.0

    @property
    def running(self) -> list[Member]:
        return [m for m in self.members if m.run.failure is None and m.failure is None]


def dashboard_loads(outcomes: list[Outcome]) -> list[DashboardLoad]:
    """Panel requests grouped by their load: a panel's tag ends in `@START`, the range start
    unique to one load of one candidate."""
    by_load: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        if o.route == PANEL_ROUTE and o.tag:
            by_load[o.tag.rpartition("@")[2]].append(o)
    return [
        DashboardLoad(
            max(o.started + o.seconds for o in panels) - min(o.started for o in panels),
            len(panels),
            sum(o.failed for o in panels),
        )
        for panels in by_load.values()
    ]


def mem_available() -> int:
    return _kib_field("/proc/meminfo", "MemAvailable")


# --- variants -------------------------------------------------------------------------------


def _key_file(variant: Path) -> Path:
    return variant.with_name(variant.name + ".key")


def _reusable(variant: Path, seed: int, scale: float, key: str) -> bool | None:
    """True: built with this seed, scale and code; None: built, but by older code; False: not
    built (or another seed or scale). A variant without a key file was built elsewhere and is
    trusted on its manifest."""
    m = read_manifest(variant)
    if not m or not m.get("complete") or m.get("seed") != seed:
        return False
    if abs(float(m.get("scale", 0)) - scale) > 1e-9:
        return False
    recorded = _key_file(variant)
    if recorded.exists() and recorded.read_text().strip() != key:
        return None
    return True


def build_variants(fleet: Fleet, workdir: Path) -> None:
    """Build the variants not already there, `BUILDS_AT_ONCE` at a time, with the real CLI."""
    default = scenario.load(None)
    todo: list[tuple[Variant, str]] = []
    for i in range(fleet.stacks):
        seed = FIRST_SEED + i
        variant = Variant(
            i, seed, fleet.worlds / f"variant-{i}", workdir / f"build-variant-{i}.log"
        )
        fleet.variants.append(variant)
        key = world_key(default.with_overrides(seed=seed, scale=fleet.scale))
        reusable = _reusable(variant.path, seed, fleet.scale, key)
        variant.stale = reusable is None
        if not reusable:
            todo.append((variant, key))
    fleet.worlds.mkdir(parents=True, exist_ok=True)
    running: dict[subprocess.Popen[bytes], tuple[Variant, str, float]] = {}
    started = time.perf_counter()
    try:
        while todo or running:
            while todo and len(running) < BUILDS_AT_ONCE:
                variant, key = todo.pop(0)
                print(f"  building {variant.label} (seed {variant.seed})…", file=sys.stderr)
                _key_file(variant.path).unlink(missing_ok=True)
                cmd = [*sandbox_command(), "build", "--seed", str(variant.seed)]
                cmd += ["--scale", _scale_label(fleet.scale), "--out", str(variant.path)]
                with variant.log.open("wb") as log:
                    proc = subprocess.Popen(
                        [*cmd, "--force"],
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                running[proc] = (variant, key, time.perf_counter())
            time.sleep(BUILD_POLL_S)
            for proc in [p for p in running if p.poll() is not None]:
                variant, key, began = running.pop(proc)
                variant.built_s = time.perf_counter() - began
                variant.build_exit = proc.returncode
                if proc.returncode == 0:
                    _key_file(variant.path).write_text(key + "\n")
    finally:  # an interrupted benchmark must not leave builds behind
        for proc in running:
            proc.terminate()
            proc.wait()
    fleet.build_wall_s = time.perf_counter() - started


# --- the stacks -----------------------------------------------------------------------------


class FleetSampler(threading.Thread):
    """Every stack's summed RSS at its peak and the machine's lowest MemAvailable, from one
    scan of /proc per sample (the stack runs' own samplers are stopped once they are up)."""

    def __init__(self, fleet: Fleet) -> None:
        super().__init__(daemon=True)
        self.fleet = fleet
        self._done = threading.Event()

    def sample(self) -> None:
        table = proc_table()
        for m in list(self.fleet.members):
            if m.run.tree is not None and m.run.stop is None:
                rss = sum(p.rss for p, _ in m.run.tree.snapshot(table))
                m.peak_rss = max(m.peak_rss, rss)
        self.fleet.available_low = min(self.fleet.available_low, mem_available())

    def run(self) -> None:
        while not self._done.wait(SAMPLE_EVERY_S):
            self.sample()

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=10)


def fleet_usage(fleet: Fleet) -> Usage:
    """CPU accounting at this moment with every stack's processes as the stack's."""
    usage = Usage.now(None)
    table = proc_table()
    for m in fleet.members:
        if m.run.tree is not None and m.run.stop is None:
            usage.stack.update({p.key: (svc, p.cpu_s) for p, svc in m.run.tree.snapshot(table)})
    return usage


def _stack_answers(world: Path) -> bool:
    """Whether a stack already runs on this world (its last run directory names a live one)."""
    with contextlib.suppress(OSError, ValueError, KeyError, httpx.HTTPError):
        url = stack_files.gateway_url(world / "run")
        return httpx.get(url + "/-/health", timeout=2).status_code in (200, 503)
    return False


def start_fleet(fleet: Fleet, workdir: Path) -> None:
    """Start the built variants' stacks one after another, each until its health is green."""
    for variant in fleet.variants:
        run = StackRun(variant.label, workdir / f"up-{variant.label}.log", free_port())
        member = Member(variant, run)
        if variant.build_exit or read_manifest(variant.path) is None:
            member.failure = f"not built (exit {variant.build_exit}, log `{variant.log}`)"
            fleet.members.append(member)
            continue
        if _stack_answers(variant.path):
            member.failure = "a stack already runs on this variant"
            fleet.members.append(member)
            continue
        shutil.rmtree(variant.path / "run", ignore_errors=True)
        fleet.members.append(member)
        print(f"  starting {variant.label}…", file=sys.stderr)
        start_stack(variant.path, run)
        if run.sampler is not None:
            run.sampler.stop()  # the fleet's sampler takes over
        health = "—" if run.health_s is None else f"{run.health_s:.1f}"
        print(f"    health: {health} s {run.failure or ''}", file=sys.stderr)


def open_sessions(fleet: Fleet, think_s: float) -> None:
    for i, m in enumerate(fleet.running):
        try:
            m.session = create_session(m.run.url, m.variant.path, f"fleet{i}")
        except (httpx.HTTPError, OSError) as exc:
            m.failure = f"no session: {exc!r}"
            continue
        m.candidate = Candidate(m.run.url, m.session, seed=i, think_s=think_s)


def measure_idle(fleet: Fleet) -> None:
    table = proc_table()
    for m in fleet.running:
        assert m.run.tree is not None
        m.idle = memory_now(m.run.tree, table)
    fleet.available_idle = mem_available()


def run_fleet(
    args: argparse.Namespace, workdir: Path, phases: list[Phase], failures: list[str]
) -> Fleet:
    """The whole fleet part; every stack it started is stopped before it returns."""
    worlds = args.fleet_worlds.resolve() if args.fleet_worlds else workdir / "fleet-worlds"
    fleet = Fleet(args.stacks, args.fleet_scale, args.fleet_seconds, args.think, worlds)
    print(f"fleet: {args.stacks} variants in {worlds}…", file=sys.stderr)
    before = Usage.now(None)
    build_variants(fleet, workdir)
    if _built(fleet):
        phases.append(Phase(f"fleet: build {len(_built(fleet))} variants", before, Usage.now(None)))
    fleet.available_before = fleet.available_low = mem_available()
    sampler = FleetSampler(fleet)
    sampler.start()
    try:  # an interrupted benchmark must not leave the stacks behind
        before = Usage.now(None)
        start_fleet(fleet, workdir)
        phases.append(Phase(f"fleet: start {args.stacks} stacks", before, fleet_usage(fleet)))
        before = fleet_usage(fleet)
        open_sessions(fleet, args.think)
        print(f"  idling {IDLE_SECONDS:g} s…", file=sys.stderr)
        time.sleep(IDLE_SECONDS)
        measure_idle(fleet)
        phases.append(Phase(f"fleet: {len(fleet.running)} stacks idle", before, fleet_usage(fleet)))
        candidates = [m.candidate for m in fleet.running if m.candidate is not None]
        print(f"  {len(candidates)} candidates for {args.fleet_seconds:g} s…", file=sys.stderr)
        before = fleet_usage(fleet)
        try:
            fleet.load_wall_s = run_candidates(candidates, args.fleet_seconds, TYPICAL)
        except Exception as exc:  # report it; the stacks are still stopped
            failures.append(f"fleet load: {exc!r}")
        phases.append(Phase(f"fleet: {len(candidates)} candidates", before, fleet_usage(fleet)))
        for c in candidates:
            c.close()
    finally:
        sampler.sample()
        print(f"  stopping {len(fleet.members)} stacks (SIGINT)…", file=sys.stderr)
        for m in fleet.members:
            stop_stack(m.run, m.variant.path)
        sampler.stop()
    return fleet


def _built(fleet: Fleet) -> list[Variant]:
    return [v for v in fleet.variants if v.built_s is not None]


# --- the report -----------------------------------------------------------------------------


def _quantiles(values: list[float], fmt: str) -> str:
    if not values:
        return "—"
    return " / ".join(format(percentile(values, q), fmt) for q in (50, 95, 100))


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("within" if ok else "**over**")


def _gib(n: int) -> str:
    return f"{n / GIB:.1f}"


def member_row(m: Member) -> list[str]:
    v = m.variant
    built = "reused" if v.built_s is None else f"{v.built_s:.0f}"
    loads = m.loads()
    outcomes = m.outcomes
    failed = sum(o.failed for o in outcomes)
    if m.run.failure or m.failure:
        up = f"FAILED: {m.run.failure or m.failure}"
    else:
        up = "—" if m.run.health_s is None else f"{m.run.health_s:.1f}"
    return [
        v.label,
        str(v.seed),
        built,
        up,
        "—" if m.idle is None else f"{m.idle.pss / GB:.2f}",
        "—" if m.idle is None else f"{m.idle.rss / GB:.2f}",
        f"{m.peak_rss / GB:.2f}" if m.peak_rss else "—",
        str(len(outcomes)),
        str(failed),
        f"{len(loads)} ({sum(ld.failed > 0 for ld in loads)})",
        _quantiles([ld.seconds for ld in loads], ".2f"),
        str(len(m.console_ms())),
        _quantiles(m.console_ms(), ".0f"),
    ]


def budget_rows(fleet: Fleet) -> list[list[str]]:
    running = fleet.running
    healthy = len(running)
    at_size = fleet.stacks >= STACKS_BUDGET
    stacks_ok = (healthy >= STACKS_BUDGET) if at_size else None

    def worst(what: list[tuple[float, str]]) -> tuple[float, str] | None:
        return max(what) if what else None

    dash = worst(
        [
            (percentile([ld.seconds for ld in m.loads()], 95), m.variant.label)
            for m in running
            if m.loads()
        ]
    )
    console = worst(
        [(percentile(m.console_ms(), 95), m.variant.label) for m in running if m.console_ms()]
    )
    pss = worst([(m.idle.pss / GB, m.variant.label) for m in running if m.idle])
    rss = worst([(m.idle.rss / GB, m.variant.label) for m in running if m.idle])
    errors = sum(o.failed for m in running for o in m.outcomes)

    def shown(found: tuple[float, str] | None, fmt: str, unit: str) -> str:
        return "—" if found is None else f"{format(found[0], fmt)} {unit} ({found[1]})"

    def within(found: tuple[float, str] | None, limit: float) -> bool | None:
        return None if found is None else found[0] <= limit

    return [
        [
            "stacks at once, each with one active candidate",
            f"{STACKS_BUDGET}",
            f"{healthy} healthy of {fleet.stacks} started",
            _verdict(stacks_ok) + ("" if at_size else f" (fewer than {STACKS_BUDGET} asked)"),
        ],
        [
            "dashboard load p95 (all panels), worst stack",
            f"≤ {DASHBOARD_P95_S:g} s",
            shown(dash, ".2f", "s"),
            _verdict(within(dash, DASHBOARD_P95_S)),
        ],
        [
            "console query p95 (`POST /api/sql`), worst stack",
            f"≤ {CONSOLE_P95_MS:g} ms",
            shown(console, ".0f", "ms"),
            _verdict(within(console, CONSOLE_P95_MS)),
        ],
        [
            "whole stack idle, PSS summed, largest",
            f"≤ {PSS_BUDGET / GB:g} GB",
            shown(pss, ".2f", "GB"),
            _verdict(within(pss, PSS_BUDGET / GB)),
        ],
        [
            "whole stack idle, RSS summed, largest",
            f"≤ {RSS_BUDGET / GB:g} GB",
            shown(rss, ".2f", "GB"),
            _verdict(within(rss, RSS_BUDGET / GB)),
        ],
        [
            "candidates' requests not answered 200",
            "0",
            str(errors),
            _verdict(errors == 0 if running else None),
        ],
    ]


# The parts of a console answer's `Server-Timing` header, in the order they happen, and what the
# report calls them. `worker` holds `live` and `query`; what the client measured beyond `wait`,
# `worker` and `record` is the gateway's own work and the way there and back.
TIMING_PARTS = {
    "wait": "waiting for a worker",
    "worker": "round trip to the worker",
    "live": "…of which loading live rows",
    "query": "…of which running the query",
    "record": "recording the history event",
}


def timing_rows(answers: list[Outcome]) -> list[list[str]]:
    """Per part of the answers' time: its median and p95 over `answers`, in ms."""
    rows = []
    for part, label in TIMING_PARTS.items():
        ms = [o.timing.get(part, 0.0) for o in answers]
        rows.append([label, f"{percentile(ms, 50):.0f}", f"{percentile(ms, 95):.0f}"])
    rest = [
        o.seconds * 1000 - sum(o.timing.get(p, 0.0) for p in ("wait", "worker", "record"))
        for o in answers
    ]
    rows.append(
        [
            "the gateway's own work and the network",
            *(f"{percentile(rest, q):.0f}" for q in (50, 95)),
        ]
    )
    return rows


def timing_section(outcomes: list[Outcome]) -> list[str]:
    """Where console queries' time went: all of them, and those over the budget."""
    answered = [o for o in outcomes if o.route == SQL_ROUTE and o.timing]
    slow = [o for o in answered if o.seconds * 1000 > CONSOLE_P95_MS]
    if not answered:
        return []
    lines = [
        f"Where the console queries' time went (their `Server-Timing`), all {len(answered)} "
        f"answered and the {len(slow)} over {CONSOLE_P95_MS:g} ms:",
        "",
    ]
    header = ["part", "all: p50 ms", "all: p95 ms"]
    rows = timing_rows(answered)
    if slow:
        header += ["over budget: p50 ms", "over budget: p95 ms"]
        rows = [[*a, *b[1:]] for a, b in zip(rows, timing_rows(slow), strict=True)]
    return [*lines, *_table(header, rows), ""]


def fleet_section(fleet: Fleet | None) -> list[str]:
    if fleet is None:
        return ["(not run)"]
    built, stale = _built(fleet), [v for v in fleet.variants if v.stale]
    failed_builds = [v for v in fleet.variants if v.build_exit]
    seeds = f"{FIRST_SEED}–{FIRST_SEED + fleet.stacks - 1}" if fleet.stacks > 1 else str(FIRST_SEED)
    if built:
        how = (
            f"{len(built)} built, at most {BUILDS_AT_ONCE} at a time, in "
            f"{fleet.build_wall_s:.0f} s wall"
            + (f" ({len(stale)} because the simulation's code changed)" if stale else "")
            + f"; {fleet.stacks - len(built)} reused"
            + (f"; **{len(failed_builds)} builds failed**" if failed_builds else "")
        )
    else:
        how = "all reused"
    lines = [
        f"{fleet.stacks} variants of the default scenario (seeds {seeds}, scale "
        f"{fleet.scale:g}) in `{fleet.worlds}`: {how}.",
        "",
        f"The stacks were started one after another (`sandbox up`, default speed, live traffic "
        f"and jobs running), one candidate session each, {IDLE_SECONDS:g} s idle, then one "
        f"simulated candidate per stack, all at once, for {fleet.load_wall_s:.0f} s with "
        + (f"a pause of 0–{2 * fleet.think_s:g} s" if fleet.think_s else "no pause")
        + " between one candidate's actions. MemAvailable: "
        f"{_gib(fleet.available_before)} GiB before the first start, "
        f"{_gib(fleet.available_idle)} GiB with {len(fleet.running)} stacks idle, lowest "
        f"{_gib(fleet.available_low)} GiB (sampled every {SAMPLE_EVERY_S:g} s until the stop).",
        "",
    ]
    if fleet.scale != 1.0:
        lines += [
            f"(The budgets are for scale 1; these variants are at scale {fleet.scale:g}.)",
            "",
        ]
    lines += [*_table(["budget", "limit", "measured", "verdict"], budget_rows(fleet)), ""]
    header = ["stack", "seed", "build s", "health after s", "idle PSS GB", "idle RSS GB"]
    header += ["peak RSS GB", "requests", "errors", "dashboard loads (failed)"]
    header += ["load p50 / p95 / max s", "console queries", "console p50 / p95 / max ms"]
    rows = [member_row(m) for m in fleet.members]
    loads = [ld for m in fleet.running for ld in m.loads()]
    console = [ms for m in fleet.running for ms in m.console_ms()]
    outcomes = [o for m in fleet.running for o in m.outcomes]
    rows.append(
        [
            "**all**",
            "",
            "",
            "",
            f"{sum(m.idle.pss for m in fleet.running if m.idle) / GB:.2f}",
            f"{sum(m.idle.rss for m in fleet.running if m.idle) / GB:.2f}",
            "",
            str(len(outcomes)),
            str(sum(o.failed for o in outcomes)),
            f"{len(loads)} ({sum(ld.failed > 0 for ld in loads)})",
            _quantiles([ld.seconds for ld in loads], ".2f"),
            str(len(console)),
            _quantiles(console, ".0f"),
        ]
    )
    lines += [*_table(header, rows), ""]
    for m in fleet.members:
        if m.run.failure:
            lines += [f"`{m.variant.label}` did not start: {m.run.failure}; log `{m.run.log}`.", ""]
    if outcomes:
        lines += ["Every stack's candidate, per route:", "", *stats_table(route_stats(outcomes))]
        lines.append("")
        lines += timing_section(outcomes)
    lines += ["Stop (SIGINT, as Ctrl-C):", "", *stop_table([m.run for m in fleet.members])]
    return lines
