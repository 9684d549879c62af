"""Benchmark the running stack's hardening: many candidates at once, a gateway killed with
SIGKILL mid-session, hostile SQL through the console, and many stacks on one machine.

    python -m benchmarks.hardening [--world DIR] [--scale X] [--candidates 20] [--seconds 120]
                                   [--think S] [--flood-seconds 20] [--stacks 8]
                                   [--fleet-scale X] [--fleet-seconds 60]
                                   [--fleet-worlds DIR] [--only fleet] [--keep]

Without --world the default scenario is built at --scale (default 1) by the real CLI; a given
world is copied first (without its run/), because the stack writes into it. The stack is started
once by the real CLI (`sandbox up DIR --port P`, until `GET /-/health` answers 200). Then, on
loopback only:

1. Load: --candidates simulated candidates (tests/services/candidates.py), each in its own
   session created by the operator API and its own thread, for --seconds: typical SQL queries,
   dashboard loads (every panel of a dashboard at once over up to 6 connections, as the page
   does), log searches, diagnosis saves and a look at their own query history, with a random
   pause of 0–2×--think seconds between actions. Every recorded request is tagged uniquely.
   Per route: requests, errors, p50/p95/max latency; per session: the history events against
   the requests the gateway acknowledged (200).
2. Durability: one more candidate sends probe queries and diagnosis saves as fast as it can;
   the gateway gets SIGKILL, the supervisor restarts it, the candidate keeps trying until the
   new gateway acknowledges more. Acknowledged vs found vs duplicated events; the load's
   sessions are reconciled again after the restart.
3. Hostile SQL: every query of `HOSTILE` in tests/services/console/test_hostile.py through
   `POST /api/sql` (a 400 with an error message counts as refused; any other outcome is listed),
   each followed by a normal query, timed.
4. Bombs and a flood (benchmarks/flood.py): each memory bomb with the gateway's and the console
   workers' RSS, then one session flooding the console while another session and an
   interviewer go on: their p95, and the gateway's peak RSS.
5. Fleet (benchmarks/fleet.py), once that stack is stopped: --stacks stacks at once, each on
   its own re-seeded variant of the default scenario at --fleet-scale (built two at a time, or
   reused from --fleet-worlds, where what is built is kept), each with one simulated candidate
   for --fleet-seconds while its live traffic runs: per stack and over all, the dashboard load
   p95 (all panels of one dashboard), the console query p95, errors, and each stack's idle PSS
   and RSS, against the README's fleet budget. `--stacks 0` skips it; `--only fleet` runs
   nothing else (no world is built for parts 1–4).

The report goes to stdout and to benchmarks/reports/; nothing is asserted, but the exit status
is non-zero if the stack, or a stack of the fleet, fails to start.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from benchmarks import fleet as fleets
from benchmarks import flood as flooding
from benchmarks.build import LOG_TAIL_LINES, REPORTS, _mem_total_gib, _table, log_tail
from benchmarks.stack import (
    Phase,
    StackRun,
    Usage,
    World,
    free_port,
    load_table,
    prepare_world,
    scan_events,
    scan_logs,
    start_stack,
    stop_stack,
    stop_table,
)
from tests.services.candidates import (
    TYPICAL,
    Candidate,
    Durability,
    Reconciled,
    Session,
    create_session,
    history,
    kill_gateway_while_writing,
    reconcile,
    route_stats,
    run_candidates,
    stats_table,
)
from tests.services.console.test_hostile import HOSTILE, NORMAL, NORMAL_WITHIN_S

CANDIDATES = 20
SECONDS = 120.0
THINK_S = 1.0  # mean pause between one candidate's actions: an eager candidate
DURABLE_BEFORE = 50  # acknowledged requests before the kill
DURABLE_AFTER = 20  # ...and after the restart
HOSTILE_TIMEOUT_S = 60.0
ERRORS_SHOWN = 10


@dataclass
class LoadRun:
    candidates: list[Candidate]
    wall_s: float
    reconciled: dict[str, Reconciled] = field(default_factory=dict)
    after_restart: dict[str, Reconciled] = field(default_factory=dict)
    seq_shared: int = 0  # events of different sessions with the same seq
    failure: str | None = None


@dataclass
class Hostile:
    sql: str
    expected: str
    status: int | None
    error: str
    normal_status: int | None
    normal_s: float

    @property
    def refused(self) -> bool:
        return self.status == 400 and bool(self.error)


# --- the three parts ------------------------------------------------------------------------


def run_load(url: str, world: Path, args: argparse.Namespace) -> LoadRun:
    sessions = [create_session(url, world, f"c{i:02d}") for i in range(args.candidates)]
    candidates = [
        Candidate(url, s, index=i, seed=i, think_s=args.think) for i, s in enumerate(sessions)
    ]
    wall = run_candidates(candidates, args.seconds, TYPICAL)
    for c in candidates:
        c.close()
    load = LoadRun(candidates, wall)
    reconcile_all(url, load, load.reconciled)
    return load


def reconcile_all(url: str, load: LoadRun, into: dict[str, Reconciled]) -> None:
    seqs: Counter[int] = Counter()
    for c in load.candidates:
        try:
            events = history(url, c.session)
        except httpx.HTTPError as exc:
            load.failure = f"history of {c.session.name}: {exc}"
            continue
        into[c.session.name] = reconcile(c, events)
        seqs.update(e["seq"] for e in events)
    load.seq_shared = sum(n for n in seqs.values() if n > 1)


def run_hostile(url: str, session: Session) -> list[Hostile]:
    found = []
    headers = {"Authorization": f"Bearer {session.candidate_token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=HOSTILE_TIMEOUT_S) as client:
        for sql, says in HOSTILE:
            status, error = None, ""
            try:
                reply = client.post("/api/sql", json={"sql": sql})
                status = reply.status_code
                try:
                    body = reply.json()
                    error = str(body.get("error") or body.get("detail") or "")
                except ValueError:
                    error = reply.text[:200]
            except httpx.HTTPError as exc:
                error = type(exc).__name__
            started = time.monotonic()
            normal_status = None
            try:
                normal = client.post("/api/sql", json={"sql": NORMAL})
                normal_status = normal.status_code
            except httpx.HTTPError:
                pass
            found.append(
                Hostile(sql, says, status, error, normal_status, time.monotonic() - started)
            )
    return found


# --- the report -----------------------------------------------------------------------------


def _short(text: str, n: int = 70) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= n else text[: n - 1] + "…"


def _yes(ok: bool) -> str:
    return "yes" if ok else "**NO**"


def load_section(load: LoadRun | None, args: argparse.Namespace) -> list[str]:
    if load is None:
        return ["(not run)"]
    outcomes = [o for c in load.candidates for o in c.outcomes]
    failed = [o for o in outcomes if o.failed]
    pause = f"a pause of 0–{2 * args.think:g} s" if args.think else "no pause"
    lines = [
        f"{len(load.candidates)} candidates for {load.wall_s:.0f} s, {pause} between one "
        "candidate's actions (mix: "
        + ", ".join(f"{k} {v}" for k, v in TYPICAL.items())
        + f"): {len(outcomes):,} requests, {len(outcomes) / max(load.wall_s, 1e-9):.1f}/s; "
        f"{len(failed)} not answered 200.",
        "",
        *stats_table(route_stats(outcomes)),
        "",
    ]
    if failed:
        seen = Counter((o.route, o.status, _short(o.error)) for o in failed)
        rows = [[f"`{r}`", str(s), e or "—", str(n)] for (r, s, e), n in seen.most_common()]
        lines += [
            "Errors:",
            "",
            *_table(["route", "status", "message", "count"], rows[:ERRORS_SHOWN]),
        ]
        lines.append("")
    lines += ["### History: events against acknowledged requests, per session", ""]
    if load.failure:
        lines += [f"Failure: {load.failure}", ""]
    rows = []
    for c in load.candidates:
        r = load.reconciled.get(c.session.name)
        again = load.after_restart.get(c.session.name)
        if r is None:
            rows.append([c.session.name, *["—"] * 9])
            continue
        rows.append(
            [
                c.session.name,
                str(r.acknowledged),
                str(r.unacknowledged),
                str(r.events),
                str(r.found),
                str(len(r.missing)),
                str(len(r.duplicated)),
                str(len(r.foreign)),
                _yes(r.seq_increasing),
                "—" if again is None else _yes(again.exact and again.found == r.found),
            ]
        )
    if rows:
        total = [
            load.reconciled[c.session.name]
            for c in load.candidates
            if c.session.name in load.reconciled
        ]
        rows.append(
            [
                "**all**",
                str(sum(r.acknowledged for r in total)),
                str(sum(r.unacknowledged for r in total)),
                str(sum(r.events for r in total)),
                str(sum(r.found for r in total)),
                str(sum(len(r.missing) for r in total)),
                str(sum(len(r.duplicated) for r in total)),
                str(sum(len(r.foreign) for r in total)),
                _yes(all(r.seq_increasing for r in total)),
                "",
            ]
        )
    header = ["session", "acknowledged", "not acknowledged", "events", "found", "missing"]
    header += ["duplicated", "foreign", "seq increasing", "same after gateway restart"]
    lines += _table(header, rows)
    foreign_seen = sorted({t for c in load.candidates for t in c.foreign_seen})
    lines += [
        "",
        f"Events of different sessions sharing a `seq`: {load.seq_shared}. Other candidates' "
        f"tags seen in a candidate's own history (`GET /api/my/history`) during the run: "
        f"{len(foreign_seen)}{' ' + ', '.join(foreign_seen[:5]) if foreign_seen else ''}.",
    ]
    return lines


def durability_section(run: Durability | None) -> list[str]:
    if run is None:
        return ["(not run)"]
    c = run.candidate
    recorded = c.recorded
    lines = [
        f"Gateway pid {run.victim} killed with SIGKILL after {DURABLE_BEFORE} acknowledged "
        f"requests; successor pid {run.successor or '—'}; health green again after "
        f"{'—' if run.down_s is None else f'{run.down_s:.1f}'} s.",
        "",
    ]
    if run.failure:
        lines += [f"**Failure:** {run.failure}", ""]
    r = run.reconciled
    failed = Counter(
        o.error if o.status is None else f"http {o.status}" for o in c.outcomes if o.failed
    )
    rows = [
        ["requests sent (probe queries, diagnosis saves)", str(len(recorded))],
        ["acknowledged (200)", str(len(c.acknowledged()))],
        [
            "not acknowledged (while it was down or restarting)",
            f"{len(c.unacknowledged())} ("
            + ", ".join(f"{k} ×{n}" for k, n in failed.most_common())
            + ")",
        ],
    ]
    if r is not None:
        rows += [
            ["history events", str(r.events)],
            ["acknowledged found", f"{r.found} of {r.acknowledged}"],
            ["acknowledged missing", str(len(r.missing))],
            ["duplicated (any request)", str(len(r.duplicated))],
            ["not acknowledged but recorded (once)", str(r.unacknowledged_found)],
            ["events no request explains", str(len(r.foreign))],
            ["seq unique and increasing", _yes(r.seq_increasing)],
        ]
    rows += [
        ["same candidate token after the restart", str(run.token_after or "—")],
        [
            "session state before → after",
            f"{run.state_before.get('state', '—')} → {run.state_after.get('state', '—')}",
        ],
        [
            "session timer start kept",
            _yes(
                bool(run.state_after)
                and run.state_after.get("started_at") == run.state_before.get("started_at")
            ),
        ],
        [
            "latest diagnosis is the last save",
            _yes(
                bool(run.last_diagnosis_tag)
                and run.last_diagnosis_tag in str(run.diagnosis_after.get("fields", {}))
            )
            + f" (version {run.diagnosis_after.get('version', '—')})",
        ],
    ]
    lines += _table(["", ""], rows)
    if r is not None and (r.missing or r.duplicated or r.foreign):
        lines += [
            "",
            f"Missing: {r.missing[:10]}; duplicated: {r.duplicated[:10]}; foreign: {r.foreign[:5]}",
        ]
    return lines


def hostile_section(found: list[Hostile] | None) -> list[str]:
    if found is None:
        return ["(not run)"]
    refused = [h for h in found if h.refused]
    worded = [h for h in refused if h.expected.lower() in h.error.lower()]
    other = [h for h in found if not h.refused]
    normal_s = sorted(h.normal_s for h in found)
    normal_bad = [h for h in found if h.normal_status != 200 or h.normal_s > NORMAL_WITHIN_S]
    lines = [
        f"{len(found)} hostile inputs tried; {len(refused)} refused (400 with an error message), "
        f"{len(worded)} of them with the word the test expects; {len(other)} other outcomes.",
        "",
        f"The normal query after each (`{NORMAL}`): {sum(h.normal_status == 200 for h in found)} "
        f"of {len(found)} answered 200; median {normal_s[len(normal_s) // 2]:.2f} s, max "
        f"{normal_s[-1]:.2f} s; {len(normal_bad)} failed or took over {NORMAL_WITHIN_S:g} s.",
        "",
    ]
    if other:
        rows = [
            [
                f"`{_short(h.sql, 60)}`" if h.sql.strip() else "(empty)",
                str(h.status),
                _short(h.error),
                "yes" if not h.sql and h.status == 422 else "no",
            ]
            for h in other
        ]
        lines += ["Other outcomes (the hostile test expects 422 for an empty body only):", ""]
        lines += [*_table(["query", "status", "answer", "as the test expects"], rows), ""]
    unworded = [h for h in refused if h not in worded]
    if unworded:
        rows = [[f"`{_short(h.sql, 60)}`", h.expected, _short(h.error)] for h in unworded]
        lines += ["Refused, but without the expected word:", ""]
        lines += [*_table(["query", "expected", "message"], rows), ""]
    if normal_bad:
        rows = [
            [f"`{_short(h.sql, 60)}`", str(h.normal_status), f"{h.normal_s:.2f}"]
            for h in normal_bad
        ]
        lines += ["The normal query after these failed or was slow:", ""]
        lines += [*_table(["after", "status", "s"], rows), ""]
    return lines


def render(
    world: World | None,
    run: StackRun | None,
    load: LoadRun | None,
    durable: Durability | None,
    hostile: list[Hostile] | None,
    bombs: list[flooding.Bomb] | None,
    flood: flooding.Flood | None,
    fleet: fleets.Fleet | None,
    phases: list[Phase],
    failures: list[str],
    problems: list[str],
    started: datetime,
    workdir: Path,
    args: argparse.Namespace,
) -> str:
    machine = f"Machine: {os.cpu_count()} cores, {_mem_total_gib():.1f} GiB RAM."
    if world is None:
        about = "Parts 1–4: not run (`--only fleet`)."
    else:
        m = world.manifest or {}
        customers = f"{m['customers']:,} customers" if "customers" in m else "customers unknown"
        about = (
            f"World of parts 1–4: {world.source}, scale {float(m.get('scale', 0) or 0):g}, "
            f"{customers}."
        )
    lines = [
        "# Hardening benchmark (load, kill -9, hostile SQL, bombs, flood, fleet), "
        f"{started:%Y-%m-%d %H:%M:%S} UTC",
        "",
        f"{machine} {about} Stacks: `sandbox up` at its default speed, on loopback. Logs: "
        f"`{workdir}`.",
        "",
        *[f"**A part of the benchmark broke:** {f}" for f in failures],
        "",
        "## Load",
        "",
        *load_section(load, args),
        "",
        "## The gateway killed with SIGKILL mid-session",
        "",
        *durability_section(durable),
        "",
        "## Hostile SQL",
        "",
        *hostile_section(hostile),
        "",
        "## Memory bombs, one at a time",
        "",
        *flooding.bombs_section(bombs),
        "",
        "## One session flooding the console",
        "",
        *flooding.flood_section(flood),
        "",
        "## Fleet: many stacks at once, one active candidate each",
        "",
        *fleets.fleet_section(fleet),
        "",
    ]
    if run is not None and run.stop is not None:
        lines += ["## Stop (SIGINT, as Ctrl-C)", "", *stop_table([run]), ""]
    if phases:
        lines += ["## Load on the machine", "", *load_table(phases), ""]
    lines += [
        "## Notes",
        "",
        "- Latency is the client's wall time per request (httpx, keep-alive), from sending until "
        "the whole reply is read; errors are any answer but 200, and requests that got no answer.",
        "- A dashboard load sends all its panels at once over up to 6 connections per candidate; "
        "each panel request is one row of its route. Each candidate's dashboard ranges start on "
        "its own day, a second apart, so each panel event names its request.",
        "- Acknowledged means answered 200; the gateway records an event before it answers. "
        "'Found' counts acknowledged requests with exactly one event in the session's history "
        "(`GET /api/sessions/ID/history`, the session's interviewer token); 'foreign' counts "
        "events none of that session's requests explain (another candidate's, or unexpected).",
        "- Fleet: a dashboard load's time runs from its first panel's send to its last panel's "
        "answer; the p95 counts every load and every console query, failed or not. Idle memory "
        "is summed over each stack's whole process tree after its candidate session was "
        f"created and {fleets.IDLE_SECONDS:g} s passed; peak RSS is sampled every "
        f"{fleets.SAMPLE_EVERY_S:g} s from its start to its stop. All candidates run in this "
        "one process (benchmark cores in the load table), on the stacks' cores. The builds' "
        "CPU shows as other cores busy.",
        "- The machine is shared (2 cores): other cores busy (in the load table) well above 0 "
        "means other work inflated the timings.",
        "",
        "## Process logs (`DIR/run/process-logs/`)",
        *problems,
    ]
    if world is not None and world.build_exit:
        lines += ["", f"### The build failed (exit {world.build_exit})", ""]
        if world.build_log:
            lines += ["```", log_tail(world.build_log), "```"]
    if run is not None and run.failure:
        lines += ["", f"### The stack did not start: {run.failure}", f"log: `{run.log}`", ""]
        lines += ["```", log_tail(run.log, LOG_TAIL_LINES), "```"]
    return "\n".join(lines) + "\n"


def write_report(text: str, started: datetime) -> Path:
    REPORTS.mkdir(parents=True, exist_ok=True)
    path = REPORTS / f"hardening-{started:%Y%m%dT%H%M%SZ}.md"
    path.write_text(text)
    return path


# --- command line ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hardening", description=__doc__)
    parser.add_argument("--world", type=Path, help="a built world to copy (default: build one)")
    parser.add_argument("--scale", type=float, default=1.0, help="scale of the world to build")
    parser.add_argument("--candidates", type=int, default=CANDIDATES, help="parallel sessions")
    parser.add_argument("--seconds", type=float, default=SECONDS, help="length of the load")
    parser.add_argument("--think", type=float, default=THINK_S, help="mean pause, s (0: none)")
    parser.add_argument(
        "--flood-seconds", type=float, default=flooding.FLOOD_SECONDS, help="length of the flood"
    )
    parser.add_argument(
        "--stacks", type=int, default=fleets.STACKS, help="stacks at once in the fleet (0: none)"
    )
    parser.add_argument("--fleet-scale", type=float, default=1.0, help="scale of its variants")
    parser.add_argument(
        "--fleet-seconds", type=float, default=fleets.FLEET_SECONDS, help="length of its load"
    )
    parser.add_argument(
        "--fleet-worlds", type=Path, help="where its variants are reused from and kept"
    )
    parser.add_argument("--only", choices=["fleet"], help="run this part alone")
    parser.add_argument("--keep", action="store_true", help="keep the world copies and logs")
    args = parser.parse_args(argv)
    if args.scale <= 0 or args.fleet_scale <= 0:
        parser.error("--scale and --fleet-scale must be positive")
    if not 1 <= args.candidates <= 100 or not 0 < args.seconds <= 3600 or args.think < 0:
        parser.error("--candidates 1–100, --seconds up to 3600, --think not negative")
    if not 0 <= args.stacks <= 32 or not 0 < args.fleet_seconds <= 3600:
        parser.error("--stacks 0–32, --fleet-seconds up to 3600")
    if args.only == "fleet" and args.stacks == 0:
        parser.error("--only fleet needs --stacks 1 or more")
    return args


def drive(
    world: Path, run: StackRun, args: argparse.Namespace, phases: list[Phase], failures: list[str]
) -> tuple[LoadRun | None, Durability | None, list[Hostile] | None]:
    """The three parts in turn; a part that breaks is noted and the next one still runs (the
    hostile queries only if the gateway came back)."""
    load = durable = hostile = None
    print(f"  load: {args.candidates} candidates for {args.seconds:g} s…", file=sys.stderr)
    before = Usage.now(run.tree)
    try:
        load = run_load(run.url, world, args)
    except Exception as exc:  # report it; the other parts still run
        failures.append(f"load: {exc!r}")
    phases.append(Phase("load", before, Usage.now(run.tree)))

    print("  kill -9 the gateway while a candidate writes…", file=sys.stderr)
    assert run.process is not None
    before = Usage.now(run.tree)
    try:
        durable = kill_gateway_while_writing(
            run.url,
            run.process.pid,
            create_session(run.url, world, "durable"),
            before=DURABLE_BEFORE,
            after=DURABLE_AFTER,
        )
    except Exception as exc:
        failures.append(f"durability: {exc!r}")
    phases.append(Phase("gateway kill -9 and restart", before, Usage.now(run.tree)))
    if durable is None or durable.successor is None:
        return load, durable, None
    if load is not None:
        reconcile_all(run.url, load, load.after_restart)

    print(f"  {len(HOSTILE)} hostile queries…", file=sys.stderr)
    before = Usage.now(run.tree)
    try:
        hostile = run_hostile(run.url, create_session(run.url, world, "hostile"))
    except Exception as exc:
        failures.append(f"hostile SQL: {exc!r}")
    phases.append(Phase("hostile SQL", before, Usage.now(run.tree)))
    return load, durable, hostile


def drive_flood(
    world: Path, run: StackRun, args: argparse.Namespace, phases: list[Phase], failures: list[str]
) -> tuple[list[flooding.Bomb] | None, flooding.Flood | None]:
    """The memory bombs, then one session flooding the console."""
    assert run.tree is not None
    memory = flooding.GatewayMemory(run.tree)
    memory.start()
    bombs = flood = None
    try:
        print(f"  {len(flooding.BOMBS)} memory bombs…", file=sys.stderr)
        before = Usage.now(run.tree)
        try:
            bombs = flooding.run_bombs(run.url, create_session(run.url, world, "bombs"), memory)
        except Exception as exc:
            failures.append(f"bombs: {exc!r}")
        phases.append(Phase("memory bombs", before, Usage.now(run.tree)))
        print(f"  one session flooding for {args.flood_seconds:g} s…", file=sys.stderr)
        before = Usage.now(run.tree)
        try:
            flood = flooding.run_flood(run.url, world, memory, args.flood_seconds)
        except Exception as exc:
            failures.append(f"flood: {exc!r}")
        phases.append(Phase("one session flooding", before, Usage.now(run.tree)))
    finally:
        memory.stop()
    return bombs, flood


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The stack runs in its own session: on SIGTERM, unwind so the `finally` below stops it.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    workdir = Path(tempfile.mkdtemp(prefix="sandbox-hardening-bench-")).resolve()
    started = datetime.now(UTC)
    world = None if args.only == "fleet" else prepare_world(args, workdir)
    run: StackRun | None = None
    load: LoadRun | None = None
    durable: Durability | None = None
    hostile: list[Hostile] | None = None
    bombs: list[flooding.Bomb] | None = None
    flood: flooding.Flood | None = None
    fleet: fleets.Fleet | None = None
    phases: list[Phase] = []
    failures: list[str] = []
    if world is not None and world.manifest is not None:
        run = StackRun("hardening", workdir / "up.log", free_port())
        try:  # an interrupted benchmark must not leave the stack behind
            print("starting the stack…", file=sys.stderr)
            start_stack(world.path, run)
            health = "—" if run.health_s is None else f"{run.health_s:.1f}"
            print(f"  health: {health} s {run.failure or ''}", file=sys.stderr)
            if run.failure is None:
                load, durable, hostile = drive(world.path, run, args, phases, failures)
                bombs, flood = drive_flood(world.path, run, args, phases, failures)
        finally:
            print("  stopping (SIGINT)…", file=sys.stderr)
            stop_stack(run, world.path)
    if args.stacks:  # after the stop: the fleet has the machine to itself
        fleet = fleets.run_fleet(args, workdir, phases, failures)
    run_dirs = {} if world is None else {"hardening": world.path / "run"}
    if fleet is not None:
        run_dirs |= {m.variant.label: m.variant.path / "run" for m in fleet.members}
    run_dirs = {label: d for label, d in run_dirs.items() if d.exists()}
    problems = ["", "(no stack ran)"]
    if run_dirs:
        problems = [
            *scan_logs(run_dirs),
            "",
            "## Warnings and errors in the candidate's logs (`DIR/run/spool/*.telemetry.logs.jsonl`)",
            *scan_events(run_dirs),
        ]
    report = render(
        world,
        run,
        load,
        durable,
        hostile,
        bombs,
        flood,
        fleet,
        phases,
        failures,
        problems,
        started,
        workdir,
        args,
    )
    print(report)
    print(f"report written to {write_report(report, started)}", file=sys.stderr)
    if not args.keep:
        if world is not None:
            shutil.rmtree(world.path, ignore_errors=True)
        if fleet is not None and args.fleet_worlds is None:
            shutil.rmtree(fleet.worlds, ignore_errors=True)
    stack_ok = world is None or (run is not None and run.failure is None)
    fleet_ok = fleet is None or len(fleet.running) == len(fleet.members)
    return 0 if stack_ok and fleet_ok else 1


if __name__ == "__main__":
    sys.exit(main())
