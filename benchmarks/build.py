"""Benchmark `sandbox build` at several scales against the README's performance budgets.

    python -m benchmarks.build [--scales 1,10] [--keep] [--workdir DIR]

Each scale is built by the real CLI in a subprocess, so the figures include start-up and the
drift worker (a spawned child process). Memory is the RSS summed over the whole process tree,
sampled every POLL_SECONDS. The report goes to stdout and to benchmarks/reports/; nothing is
asserted, but the exit status is non-zero if a build failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

GB = 1_000_000_000  # the budgets are in decimal GB
POLL_SECONDS = 0.2
LOG_TAIL_LINES = 60
REPORTS = Path(__file__).resolve().parent / "reports"
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# One row of the CLI's final progress render, e.g. "simulate   ━━━━━ 145/145 0:00:09".
STAGE_LINE = re.compile(
    r"^(?P<stage>\S.*?)\s+[━╸╺\s]*(?P<done>\d+)/(?P<total>\d+)\s+"
    r"(?P<h>\d+):(?P<m>\d{2}):(?P<s>\d{2})\s*$"
)


@dataclass(frozen=True)
class Budget:
    wall_s: float
    goal_wall_s: float
    peak_rss_bytes: int | None = None


# The README's performance budgets (2 cores, 24 GiB); scales not listed are measured but not judged.
BUDGETS: dict[float, Budget] = {
    1.0: Budget(wall_s=120, goal_wall_s=30, peak_rss_bytes=3 * GB),
    10.0: Budget(wall_s=600, goal_wall_s=180, peak_rss_bytes=6 * GB),
}


@dataclass(frozen=True)
class Stage:
    name: str
    done: int
    total: int
    seconds: int


@dataclass
class Run:
    scale: float
    world: Path
    log: Path
    exit_code: int = 0
    wall_s: float = 0.0
    peak_tree_rss: int = 0
    peak_processes: int = 0
    peak_single_rss: int = 0
    cpu_s: float = 0.0
    other_cpu_s: float = 0.0
    load_before: float = 0.0
    load_after: float = 0.0
    manifest: dict[str, Any] | None = None
    stages: list[Stage] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.manifest is not None


# --- /proc sampling -------------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, rss bytes) for every live process."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue  # exited between listing and reading
        # comm may contain spaces and ')' itself, so the fields start after the last ')'.
        fields = data[data.rindex(b")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), int(fields[21]) * PAGE_BYTES)
    return table


def tree_rss(root: int) -> tuple[int, int]:
    """(summed RSS in bytes, process count) of `root` and all its descendants.

    Walks ppid links because this kernel has no /proc/<pid>/task/<tid>/children. Shared pages
    (libraries) count once per process, so this slightly overstates the tree's real footprint.
    """
    table = _proc_table()
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (ppid, _) in table.items():
        children[ppid].append(pid)
    total, count, stack = 0, 0, [root]
    while stack:
        pid = stack.pop()
        if pid in table:
            total += table[pid][1]
            count += 1
            stack.extend(children[pid])
    return total, count


def busy_cpu_seconds() -> float:
    """CPU time the whole machine has spent busy since boot, summed over cores."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = ticks
    return (user + nice + system + irq + softirq) / CLOCK_TICKS


class TreeSampler(threading.Thread):
    """Polls a process tree's RSS in the background so the main thread can block on the exit."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.peak_rss = 0
        self.peak_processes = 0
        self._finished = threading.Event()

    def run(self) -> None:
        while True:
            rss, count = tree_rss(self.root)
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_processes = max(self.peak_processes, count)
            if self._finished.wait(POLL_SECONDS):
                return

    def stop(self) -> None:
        self._finished.set()
        self.join()


# --- running one build ----------------------------------------------------------------------


def sandbox_command() -> list[str]:
    """The venv's `sandbox` script, or the module if the script is not installed."""
    script = Path(sys.executable).parent / "sandbox"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "sandbox.cli"]


def _scale_label(scale: float) -> str:
    return f"{scale:g}"


def _wait(proc: subprocess.Popen[bytes]) -> Any:
    """Reap the child ourselves: wait4 gives its rusage (CPU, kernel RSS high-water mark)."""
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except KeyboardInterrupt:
        # The build runs in its own session, so Ctrl-C does not reach it; stop it explicitly.
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage


def run_build(scale: float, workdir: Path) -> Run:
    """Build one world with the CLI and measure it."""
    label = _scale_label(scale)
    run = Run(scale=scale, world=workdir / f"world-{label}", log=workdir / f"build-{label}.log")
    cmd = [*sandbox_command(), "build", "--out", str(run.world), "--scale", label, "--force"]
    run.load_before = os.getloadavg()[0]
    cpu_before = busy_cpu_seconds()
    with run.log.open("wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # Typer's boxed rich tracebacks are too long for a log tail; ask for plain ones.
            env={**os.environ, "TYPER_STANDARD_TRACEBACK": "1"},
        )
        sampler = TreeSampler(proc.pid)
        sampler.start()
        try:
            usage = _wait(proc)
        finally:
            run.wall_s = time.perf_counter() - started
            sampler.stop()
    run.exit_code = proc.returncode
    run.peak_tree_rss, run.peak_processes = sampler.peak_rss, sampler.peak_processes
    # ru_maxrss (KiB) is the largest single process in the tree, from the kernel: a check on
    # the sampled figure, which can miss a short spike between polls.
    run.peak_single_rss = usage.ru_maxrss * 1024
    run.cpu_s = usage.ru_utime + usage.ru_stime
    # Whatever the machine did beyond our build (tests, other jobs) inflates the wall time.
    run.other_cpu_s = max(0.0, busy_cpu_seconds() - cpu_before - run.cpu_s)
    run.load_after = os.getloadavg()[0]
    run.manifest = read_manifest(run.world) if run.exit_code == 0 else None
    run.stages = parse_stages(run.log.read_text(errors="replace"))
    return run


def read_manifest(world: Path) -> dict[str, Any] | None:
    try:
        return json.loads((world / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def parse_stages(log_text: str) -> list[Stage]:
    """Per-stage elapsed times from the CLI's final progress render (whole seconds)."""
    stages = []
    for line in log_text.splitlines():
        m = STAGE_LINE.match(line)
        if m:
            seconds = int(m["h"]) * 3600 + int(m["m"]) * 60 + int(m["s"])
            stages.append(Stage(m["stage"].strip(), int(m["done"]), int(m["total"]), seconds))
    return stages


def log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


# --- the report -----------------------------------------------------------------------------


def _gb(n: int) -> str:
    return f"{n / GB:.2f}"


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _summary_row(run: Run) -> list[str]:
    m = run.manifest or {}
    rows = sum(m.get("tables", {}).values()) if m else None
    auc = m.get("model", {}).get("holdout_auc") if m else None
    return [
        _scale_label(run.scale),
        f"{m['customers']:,}" if m else "—",
        "ok" if run.ok else f"FAILED (exit {run.exit_code})",
        f"{run.wall_s:.1f}",
        f"{m['build_seconds']:.1f}" if m else "—",
        _gb(run.peak_tree_rss),
        str(run.peak_processes),
        _gb(run.peak_single_rss),
        f"{run.cpu_s:.0f}",
        f"{rows:,}" if rows is not None else "—",
        f"{auc:.3f}" if auc is not None else "—",
    ]


def summary_table(runs: list[Run]) -> list[str]:
    header = [
        "scale",
        "customers",
        "result",
        "wall s",
        "build s (manifest)",
        "peak RSS GB (tree)",
        "procs",
        "peak RSS GB (largest proc)",
        "CPU s",
        "total rows",
        "holdout AUC",
    ]
    return _table(header, (_summary_row(r) for r in runs))


def _verdict(run: Run, measured: float, limit: float) -> str:
    if not run.ok:
        return "n/a (build failed)"
    return "within" if measured <= limit else "over"


def _budget_rows(run: Run) -> list[list[str]]:
    label = _scale_label(run.scale)
    budget = BUDGETS.get(run.scale)
    if budget is None:
        return [[label, "—", "—", "—", "no budget for this scale"]]
    rows = [
        [label, "wall time", f"≤ {budget.wall_s:.0f} s", f"{run.wall_s:.1f} s"],
        [label, "wall time (later goal)", f"≤ {budget.goal_wall_s:.0f} s", f"{run.wall_s:.1f} s"],
    ]
    rows[0].append(_verdict(run, run.wall_s, budget.wall_s))
    rows[1].append(_verdict(run, run.wall_s, budget.goal_wall_s))
    if budget.peak_rss_bytes is not None:
        rss = run.peak_tree_rss
        verdict = _verdict(run, rss, budget.peak_rss_bytes)
        rows.append(
            [label, "peak RSS (tree)", f"≤ {_gb(budget.peak_rss_bytes)} GB", _gb(rss), verdict]
        )
    return rows


def budget_table(runs: list[Run]) -> list[str]:
    header = ["scale", "what", "budget", "measured", "verdict"]
    return _table(header, (row for r in runs for row in _budget_rows(r)))


def stage_table(runs: list[Run]) -> list[str]:
    rows = [
        [_scale_label(r.scale), s.name, f"{s.done}/{s.total}", str(s.seconds)]
        for r in runs
        for s in r.stages
    ]
    if not rows:
        return ["(no stage timings found in the logs)"]
    return _table(["scale", "stage", "progress", "elapsed s"], rows)


def load_table(runs: list[Run]) -> list[str]:
    rows = [
        [
            _scale_label(r.scale),
            f"{r.load_before:.2f}",
            f"{r.load_after:.2f}",
            f"{r.other_cpu_s:.0f}",
            f"{r.other_cpu_s / r.wall_s:.2f}" if r.wall_s else "—",
        ]
        for r in runs
    ]
    header = ["scale", "load 1m before", "load 1m after", "other CPU s", "other cores busy"]
    return _table(header, rows)


def failures(runs: list[Run]) -> list[str]:
    lines: list[str] = []
    for r in runs:
        if r.ok:
            continue
        why = f"exit code {r.exit_code}" if r.exit_code else "exit 0 but no readable manifest"
        lines += ["", f"### scale {_scale_label(r.scale)} failed: {why}", f"log: `{r.log}`"]
        lines += ["", "```", log_tail(r.log), "```"]
    return lines


def render(runs: list[Run], started: datetime, workdir: Path) -> str:
    cores = os.cpu_count()
    lines = [
        f"# `sandbox build` benchmark, {started:%Y-%m-%d %H:%M:%S} UTC",
        "",
        f"Machine: {cores} cores, {_mem_total_gib():.1f} GiB RAM. Command: "
        f"`{' '.join(sandbox_command())} build --out DIR --scale N --force`. Logs: `{workdir}`.",
        "",
        "## Results",
        "",
        *summary_table(runs),
        "",
        "## Budgets (README, Performance)",
        "",
        *budget_table(runs),
        "",
        "## Stages",
        "",
        *stage_table(runs),
        "",
        "## Other load on the machine during each build",
        "",
        *load_table(runs),
        "",
        "## Notes",
        "",
        f"- Peak RSS (tree) sums RSS over the build and all its descendants, polled every "
        f"{POLL_SECONDS} s; shared pages count once per process. Largest proc is the kernel's "
        "high-water mark for the single biggest process. GB = 10^9 bytes.",
        "- Stage times come from the CLI's progress bars: whole seconds, from a stage's first "
        "report until it completes; a stage left short of its total runs to the end of the build.",
        "- Other CPU s is the machine's busy CPU time during the build minus the build's own; "
        "well above 0 means the timings are inflated by other work.",
        *failures(runs),
    ]
    return "\n".join(lines) + "\n"


def _mem_total_gib() -> float:
    with open("/proc/meminfo") as f:
        kib = int(f.readline().split()[1])  # first line is MemTotal
    return kib / 2**20


def write_report(text: str, started: datetime) -> Path:
    REPORTS.mkdir(parents=True, exist_ok=True)
    path = REPORTS / f"build-{started:%Y%m%dT%H%M%SZ}.md"
    path.write_text(text)
    return path


# --- command line ---------------------------------------------------------------------------


def parse_scales(text: str) -> list[float]:
    scales = [float(part) for part in text.split(",") if part.strip()]
    if not scales or any(s <= 0 for s in scales):
        raise argparse.ArgumentTypeError("scales must be positive numbers, e.g. 1,10")
    return scales


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.build", description=__doc__)
    parser.add_argument("--scales", type=parse_scales, default=[1.0], help="e.g. 1,10")
    parser.add_argument("--keep", action="store_true", help="keep the built worlds")
    parser.add_argument("--workdir", type=Path, help="where worlds and logs go (default: temp)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sandbox-bench-"))
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    runs = []
    for scale in args.scales:
        print(f"building scale {_scale_label(scale)} (log in {workdir})…", file=sys.stderr)
        run = run_build(scale, workdir)
        print(f"  exit {run.exit_code} after {run.wall_s:.1f} s", file=sys.stderr)
        if not args.keep:
            shutil.rmtree(run.world, ignore_errors=True)
        runs.append(run)
    report = render(runs, started, workdir)
    print(report)
    print(f"report written to {write_report(report, started)}", file=sys.stderr)
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
