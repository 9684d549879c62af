"""The console's worker processes, shared fairly between the sessions on one stack.

Every query the gateway runs for a caller (console, dashboard panels, logs, changelog) goes to a
worker process (`worker`), so no query can take the gateway's memory or threads:
- a worker caps its own address space, and one that outlives the time limit by
  `KILL_GRACE_S` is killed and replaced;
- a caller (a session, or the interviewers) runs at most `per_owner` queries at once; more wait
  in the caller's own queue (a dashboard sends all its panels together), and past
  `per_owner_waiting` waiting one more is refused at once with `ConsoleBusy` (HTTP 429);
- a free worker goes to the callers with something waiting in turn, so a session that floods
  waits behind itself, never in front of another session or the interviewer;
- interviewers and the operator come first: the next free worker is theirs, and candidates
  together never hold more than `max_workers`, so when they do, the pool keeps
  `staff_reserve` more ready for the interviewers;
- the pool grows to `max_workers` when every worker is busy and shrinks back when the flood
  is over.

The sizes and limits here are the stack's settings (`sandbox.services.settings`, `console_*`).

Workers are forked from a preloaded server process: a new one is ready in a fraction of a
second, and the imported code is shared between them rather than loaded again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import multiprocessing
import os
import re
import signal
import time
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from sandbox.services.console.query import QueryRefused, QueryResult
from sandbox.services.console.worker import Limits, Request, serve
from sandbox.services.settings import Settings

KILL_GRACE_S = 0.5  # past the time limit, before a worker that did not stop is killed
START_TIMEOUT_S = 60.0  # the first worker waits for the preloaded server to import everything
IDLE_RETIRE_S = 60.0  # extra workers idle this long go away
# Paths and file names never reach the candidate, not even inside an engine's error message.
HOST_PATH = re.compile(r"(?:[A-Za-z]:)?(?:/[\w.@%+~-]+){2,}/?")

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["sandbox.services.console.preload"])


class ConsoleBusy(RuntimeError):
    """The caller already has as many queries running as it may; the message says so."""


@dataclass(eq=False)
class _Worker:
    process: Any  # multiprocessing.Process
    conn: Connection
    idle_since: float = field(default_factory=time.monotonic)


class ConsolePool:
    def __init__(self, world: Path, settings: Settings) -> None:
        self.world = Path(world).resolve()
        self.limits = Limits.of(settings)
        self.min_workers = settings.console_workers
        self.max_workers = max(settings.console_max_workers, settings.console_workers)
        self.per_owner = settings.console_per_owner
        self.per_owner_waiting = settings.console_per_owner_waiting
        self.staff_reserve = settings.console_staff_reserve
        self._staff: set[str] = set()  # owners served first
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._count = 0  # workers alive or starting
        self._starting = 0  # of which still starting
        # Owners with queries waiting, in the order they are served: the one served last goes
        # to the back, so no owner's queue can keep the others from their turn.
        self._queues: collections.OrderedDict[str, collections.deque[asyncio.Future[_Worker]]] = (
            collections.OrderedDict()
        )
        self._holding: collections.Counter[str] = collections.Counter()  # workers held per owner
        # One thread per worker waits for its answer, the interviewers' reserve included.
        self._replies = anyio.CapacityLimiter(self.max_workers + self.staff_reserve)
        self.killed = 0  # workers stopped at the deadline or dead mid-query
        self._closed = False

    async def start(self) -> None:
        """Start the standing workers (the first start also starts the preloaded server)."""
        self._loop = asyncio.get_running_loop()
        self._count += self.min_workers
        started = await asyncio.gather(
            *(self._spawn() for _ in range(self.min_workers)), return_exceptions=True
        )
        for worker in started:
            if isinstance(worker, BaseException):
                self._count -= 1
            else:
                self._release(worker)

    def close(self) -> None:
        self._closed = True
        for worker in list(self._all):
            self._stop(worker)
        self._idle.clear()

    def status(self) -> dict[str, Any]:
        busy = sum(self._holding.values())
        waiting = self._waiting()
        return {
            "workers": self._count,
            "busy": busy,
            "waiting": waiting,
            "saturated": busy >= self.max_workers and waiting > 0,
            "killed": self.killed,
        }

    async def run(
        self,
        sql: str,
        params: dict[str, Any] | None = None,
        *,
        owner: str,
        session_id: str | None = None,
        staff: bool = False,
    ) -> QueryResult:
        """Run one statement for `owner` (the fairness key: a session, or an interviewer);
        `staff` owners are served before candidates. Raises QueryRefused (bad query, limits) or
        ConsoleBusy (too many of the owner's)."""
        queued = len(self._queues.get(owner, ()))
        if self._holding[owner] + queued >= self.per_owner + self.per_owner_waiting:
            raise ConsoleBusy(
                f"{self._holding[owner] + queued} of your queries are running or waiting; wait "
                "for them to finish (or cancel them) before starting another"
            )
        if staff:
            self._staff.add(owner)
        asked = time.perf_counter()
        worker = await self._acquire(owner)
        sent = time.perf_counter()
        try:
            verdict, value = await anyio.to_thread.run_sync(
                self._exchange, worker, Request(sql, params, session_id), limiter=self._replies
            )
        finally:
            self._let_go(owner)
        if verdict == "ok":
            return replace(
                value,
                wait_ms=round((sent - asked) * 1000, 1),
                worker_ms=round((time.perf_counter() - sent) * 1000, 1),
            )
        message, reach = value
        raise QueryRefused(scrub(message), reach)

    def _exchange(self, worker: _Worker, request: Request) -> tuple[str, Any]:
        """Send one request and wait for its answer, at most until the deadline (a thread)."""
        deadline = self.limits.time_limit_s + KILL_GRACE_S
        try:
            worker.conn.send(request)
            if worker.conn.poll(deadline):
                verdict, value, retire = worker.conn.recv()
                if retire:
                    self._stop(worker)
                    self._replace_soon()
                else:
                    self._hand_back(worker)
                return verdict, value
            stopped = (
                f"the query was stopped at the console's {self.limits.time_limit_s:g} s time "
                "limit: filter, aggregate or add LIMIT"
            )
        except (EOFError, OSError):  # the worker died: its address-space cap, most likely
            stopped = (
                "the query needed more memory than the console allows "
                f"({self.limits.memory_mb} MB): filter or aggregate first"
            )
        self.killed += 1
        self._stop(worker)
        self._replace_soon()
        return "refused", (stopped, None)

    def _hand_back(self, worker: _Worker) -> None:
        self._loop.call_soon_threadsafe(self._release, worker)

    def _replace_soon(self) -> None:
        self._loop.call_soon_threadsafe(self._replace)

    def _replace(self) -> None:
        """Start a worker in place of one that went away (its slot is still counted)."""
        if self._closed:
            self._count -= 1
            return
        self._starting += 1
        self._loop.create_task(self._start_one())

    async def _acquire(self, owner: str) -> _Worker:
        """A worker for `owner`, at its turn."""
        self._loop = asyncio.get_running_loop()
        self._retire_idle()
        waiter: asyncio.Future[_Worker] = self._loop.create_future()
        self._queues.setdefault(owner, collections.deque()).append(waiter)
        self._dispatch()
        try:
            # Long enough to wait behind the owner's own queries (a dashboard's panels run
            # `per_owner` at a time) and a full round of everyone else's.
            return await asyncio.wait_for(waiter, self.limits.time_limit_s * 4)
        except TimeoutError:
            raise QueryRefused(
                "the console is busy with other queries; try again in a moment"
            ) from None
        except BaseException:
            # Cancelled (the caller went away) after a worker was handed over: give it back.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._let_go(owner)
                self._release(waiter.result())
            raise
        finally:
            queue = self._queues.get(owner)
            if queue is not None:
                with contextlib.suppress(ValueError):
                    queue.remove(waiter)
                if not queue:
                    del self._queues[owner]
            if owner not in self._queues and owner not in self._holding:
                self._staff.discard(owner)

    def _let_go(self, owner: str) -> None:
        self._holding[owner] -= 1
        if self._holding[owner] <= 0:
            del self._holding[owner]
            if owner not in self._queues:
                self._staff.discard(owner)
        self._dispatch()  # the owner's next query may run now

    def _release(self, worker: _Worker) -> None:
        """A free worker: to the next owner in turn, or kept idle."""
        worker.idle_since = time.monotonic()
        self._idle.append(worker)
        self._dispatch()

    def _runnable(self, owner: str) -> int:
        """How many of the owner's waiting queries may start now."""
        queue = self._queues.get(owner, ())
        while queue and queue[0].done():  # timed out or cancelled
            queue.popleft()
        return min(len(queue), max(self.per_owner - self._holding[owner], 0))

    def _candidates_room(self) -> int:
        """How many more workers candidates may hold together."""
        held = sum(n for owner, n in self._holding.items() if owner not in self._staff)
        return max(self.max_workers - held, 0)

    def _next_in_turn(self) -> tuple[str, asyncio.Future[_Worker]] | None:
        staff_first = sorted(self._queues, key=lambda owner: owner not in self._staff)
        for owner in staff_first:  # a stable sort: each group keeps its turn order
            if owner not in self._staff and not self._candidates_room():
                break
            if self._runnable(owner):
                return owner, self._queues[owner].popleft()
        return None

    def _dispatch(self) -> None:
        """Hand idle workers to waiting queries, owner by owner in turn; start workers when the
        waiting outnumber the idle and the pool may grow."""
        while self._idle and (turn := self._next_in_turn()):
            owner, waiter = turn
            worker = self._idle.pop()
            self._holding[owner] += 1
            waiter.set_result(worker)
            self._queues.move_to_end(owner)
            if not self._queues[owner]:
                del self._queues[owner]
        staff = sum(self._runnable(owner) for owner in self._queues if owner in self._staff)
        candidates = sum(
            self._runnable(owner) for owner in self._queues if owner not in self._staff
        )
        runnable = staff + min(candidates, self._candidates_room())
        spare = 1 if not self._idle and self._starting == 0 else 0  # ready for the next caller
        ceiling = self.max_workers + self.staff_reserve
        while self._count < ceiling and self._starting < runnable + spare:
            spare = 0
            self._count += 1
            self._starting += 1
            self._loop.create_task(self._start_one())

    async def _start_one(self) -> None:
        try:
            worker = await self._spawn()
        except Exception:
            self._count -= 1
            self._fail_waiters_if_empty()
            return
        finally:
            self._starting -= 1
        if self._closed:
            self._stop(worker)
            return
        self._release(worker)

    def _waiting(self) -> int:
        return sum(sum(not w.done() for w in queue) for queue in self._queues.values())

    def _retire_idle(self) -> None:
        now = time.monotonic()
        while len(self._idle) > self.min_workers and now - self._idle[0].idle_since > IDLE_RETIRE_S:
            self._stop(self._idle.pop(0))
            self._count -= 1

    def _fail_waiters_if_empty(self) -> None:
        if self._count == 0:
            for queue in self._queues.values():
                for waiter in queue:
                    if not waiter.done():
                        waiter.set_exception(QueryRefused("the console is restarting; try again"))

    def _stop(self, worker: _Worker) -> None:
        self._all.discard(worker)
        _kill(worker)

    async def _spawn(self) -> _Worker:
        self._loop = asyncio.get_running_loop()
        ours, theirs = _CONTEXT.Pipe()
        process = _CONTEXT.Process(
            target=serve,
            args=(theirs, str(self.world), self.limits),
            name="console-worker",
            daemon=True,
        )
        await anyio.to_thread.run_sync(process.start)
        theirs.close()
        worker = _Worker(process, ours)
        self._all.add(worker)
        ready = await anyio.to_thread.run_sync(ours.poll, START_TIMEOUT_S)
        if not ready:
            self._stop(worker)
            raise RuntimeError("no worker was ready in time")
        try:
            said, why = ours.recv()
        except (EOFError, OSError):
            said, why = "failed", f"exit code {process.exitcode}"
        if said != "ready":
            self._stop(worker)
            raise RuntimeError(f"the worker did not start: {why}")
        return worker


def _kill(worker: _Worker) -> None:
    with contextlib.suppress(Exception):
        worker.conn.close()
    pid = worker.process.pid
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            worker.process.join(timeout=2)


def scrub(message: str) -> str:
    """An engine's message without the host's paths in it."""
    return HOST_PATH.sub("…", message)
