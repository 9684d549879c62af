"""One console worker: a child process of the gateway that runs the candidate's queries.

A query runs here, never in the gateway, because DuckDB's own `memory_limit` does not bound every
allocation (a `list_value` or `repeat` bomb grows a process by gigabytes) and its time limit does
not stop every operator. The worker caps its own address space, so a bomb fails here (or kills
this process) while the gateway stays small; the pool kills a worker that outlives the deadline.

Each worker keeps its own queryable copy of the telemetry: the built world attached read-only
plus the live rows loaded from the services' spool files, the durable log they all read.
"""

from __future__ import annotations

import resource
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import duckdb

from sandbox.services.common import ServiceContext
from sandbox.services.console import query
from sandbox.services.console.telemetry import LiveTelemetry
from sandbox.services.settings import Settings


@dataclass(frozen=True)
class Limits:
    """What one worker allows a query, from the stack's settings."""

    time_limit_s: float
    memory_mb: int  # growth allowed past the worker's size once started
    max_bytes: int  # of one response's rows
    row_cap: int  # rows of one response

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            time_limit_s=settings.query_time_limit_s,
            memory_mb=settings.console_memory_mb,
            max_bytes=settings.console_max_bytes,
            row_cap=settings.row_cap,
        )


@dataclass(frozen=True)
class Request:
    sql: str
    params: dict[str, Any] | None = None
    session_id: str | None = None


def serve(conn: Connection, world: str, limits: Limits) -> None:
    """Answer requests on `conn` until it closes: ("ok", QueryResult, retire) or
    ("refused", (message, reach), retire)."""
    # Ctrl-C reaches the whole process group: the gateway stops first, and a worker follows
    # when its connection closes, without a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        store = _open_store(Path(world), limits)
    except Exception as exc:  # said to the pool, which reports it; no traceback on stderr
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    _cap_address_space(limits.memory_mb)
    conn.send(("ready", None))
    while True:
        try:
            request: Request = conn.recv()
        except (EOFError, OSError):
            return
        # The query loads the live rows of what it reads (`LiveTelemetry.prepare`).
        conn.send(_answer(store, request, limits))


def _open_store(world: Path, limits: Limits) -> LiveTelemetry:
    ctx = ServiceContext(world, "console")
    cal = ctx.calendar
    return LiveTelemetry(
        ctx.world,
        ctx.now,
        cal.midnight(cal.last_production_day + 1),
        ctx.fault_set,
        ctx.scenario.world.seed,
        cal,
        # DuckDB's own limit answers most heavy queries with a clean error; the address-space
        # limit below catches the allocations it does not count.
        memory_limit=f"{max(limits.memory_mb // 2, 64)}MB",
        time_limit_s=limits.time_limit_s,
        # One core per query: a heavy query leaves the other core to everyone else's.
        threads=1,
    )


def _answer(store: LiveTelemetry, request: Request, limits: Limits) -> tuple[str, Any, bool]:
    """(verdict, value, retire): a worker that ran out of memory asks to be replaced, since the
    allocator keeps what it reserved and the next query would start near the cap."""
    try:
        result = query.run(
            store,
            request.sql,
            request.params,
            session_id=request.session_id,
            max_bytes=limits.max_bytes,
            row_cap=limits.row_cap,
        )
    except query.QueryRefused as exc:
        return "refused", (str(exc), exc.reach), exc.reach is None and _near_cap(limits)
    except (duckdb.Error, MemoryError) as exc:
        if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
            return "refused", (query.memory_message(store), None), True
        return "refused", (str(exc), None), _near_cap(limits)
    return "ok", result, _near_cap(limits)


def _near_cap(limits: Limits) -> bool:
    """Whether this process has used up most of the growth it was allowed."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return _vm_size() > soft - limits.memory_mb * 1024 * 1024 // 2


def _vm_size() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))


def _cap_address_space(growth_mb: int) -> None:
    """Allow the process `growth_mb` more address space than it has now."""
    cap = _vm_size() + growth_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
