"""The hardening benchmark's flood part: the console's bombs one by one, then one session
flooding the console while another session and an interviewer go on working.

Measured on a running stack (loopback only, bounded in time and count):
- per bomb: status, time to the answer, the gateway's RSS before and at its peak during it, and
  the console workers' peak RSS;
- the flood: `FLOODERS` threads of one session sending slow queries back to back for
  `--flood-seconds`, while another session runs `SELECT 1` and the interviewer reads the review;
  their p50/p95/max latency, the flooding session's answers by status, whether `/-/health`
  showed the console saturated, and the gateway's peak RSS.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.build import _table
from benchmarks.stack import Tree, service_name
from sandbox.services.launcher import command_line
from tests.services.candidates import Session, create_session
from tests.services.console.test_pool import BOMBS, SLOW

FLOODERS = 45  # as many as the attack that stalled an interviewer
FLOOD_SECONDS = 20.0
SAMPLE_EVERY_S = 0.05
TIMEOUT_S = 60.0
MB = 1024 * 1024


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


class GatewayMemory(threading.Thread):
    """Samples the gateway's own RSS and its console workers' (its descendants) until stopped."""

    def __init__(self, tree: Tree) -> None:
        super().__init__(daemon=True)
        self.tree = tree
        self.gateway_peak = 0
        self.worker_peak = 0
        self._done = threading.Event()

    def gateway_pid(self) -> int | None:
        for proc, _service in self.tree.snapshot():
            if service_name(command_line(proc.pid)) == "gateway":
                return proc.pid
        return None

    def reset(self) -> None:
        self.gateway_peak = self.worker_peak = 0

    def run(self) -> None:
        while not self._done.wait(SAMPLE_EVERY_S):
            snapshot = self.tree.snapshot()
            gateway = next(
                (p for p, _ in snapshot if service_name(command_line(p.pid)) == "gateway"),
                None,
            )
            if gateway is None:
                continue
            self.gateway_peak = max(self.gateway_peak, _rss(gateway.pid))
            below = {p.pid for p, _ in snapshot if p.ppid == gateway.pid}
            workers = [p for p, _ in snapshot if p.ppid in below]
            self.worker_peak = max([self.worker_peak, *(_rss(p.pid) for p in workers)])

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=2)


@dataclass
class Bomb:
    sql: str
    status: int | None
    seconds: float
    gateway_before: int
    gateway_peak: int
    worker_peak: int
    error: str = ""


@dataclass
class Flood:
    seconds: float
    flood_status: Counter[int | None] = field(default_factory=Counter)
    other_s: list[float] = field(default_factory=list)
    other_errors: int = 0
    review_s: list[float] = field(default_factory=list)
    review_errors: int = 0
    saturated_seen: bool = False
    gateway_peak: int = 0
    worker_peak: int = 0


def run_bombs(url: str, session: Session, memory: GatewayMemory) -> list[Bomb]:
    found = []
    headers = {"Authorization": f"Bearer {session.candidate_token}"}
    pid = memory.gateway_pid()
    with httpx.Client(base_url=url, headers=headers, timeout=TIMEOUT_S) as client:
        for sql in BOMBS:
            before = _rss(pid) if pid else 0
            memory.reset()
            started = time.monotonic()
            status, error = None, ""
            try:
                reply = client.post("/api/sql", json={"sql": sql})
                status = reply.status_code
                if status != 200:
                    error = str(reply.json().get("error", ""))
            except (httpx.HTTPError, ValueError) as exc:
                error = type(exc).__name__
            seconds = time.monotonic() - started
            time.sleep(SAMPLE_EVERY_S * 2)  # let the sampler see the end
            found.append(
                Bomb(sql, status, seconds, before, memory.gateway_peak, memory.worker_peak, error)
            )
    return found


def run_flood(url: str, world: Path, memory: GatewayMemory, seconds: float) -> Flood:
    flooder = create_session(url, world, "flooder")
    other = create_session(url, world, "bystander")
    flood = Flood(seconds)
    memory.reset()
    deadline = time.monotonic() + seconds
    lock = threading.Lock()

    def flood_loop() -> None:
        headers = {"Authorization": f"Bearer {flooder.candidate_token}"}
        with httpx.Client(base_url=url, headers=headers, timeout=TIMEOUT_S) as client:
            while time.monotonic() < deadline:
                try:
                    status: int | None = client.post("/api/sql", json={"sql": SLOW}).status_code
                except httpx.HTTPError:
                    status = None
                with lock:
                    flood.flood_status[status] += 1

    def timed(client: httpx.Client, method: str, path: str, **kwargs: object) -> float | None:
        started = time.monotonic()
        try:
            reply = client.request(method, path, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError:
            return None
        return time.monotonic() - started if reply.status_code == 200 else None

    threads = [threading.Thread(target=flood_loop, daemon=True) for _ in range(FLOODERS)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # the flood is under way
    mine = {"Authorization": f"Bearer {other.candidate_token}"}
    theirs = {"Authorization": f"Bearer {other.interviewer_token}"}
    with (
        httpx.Client(base_url=url, headers=mine, timeout=TIMEOUT_S) as candidate,
        httpx.Client(base_url=url, headers=theirs, timeout=TIMEOUT_S) as interviewer,
        httpx.Client(base_url=url, timeout=TIMEOUT_S) as anyone,
    ):
        while time.monotonic() < deadline:
            took = timed(candidate, "POST", "/api/sql", json={"sql": "SELECT 1"})
            if took is None:
                flood.other_errors += 1
            else:
                flood.other_s.append(took)
            took = timed(interviewer, "GET", f"/api/sessions/{other.id}/review")
            if took is None:
                flood.review_errors += 1
            else:
                flood.review_s.append(took)
            try:
                health = anyone.get("/-/health").json()
                flood.saturated_seen |= health["services"].get("console") == "saturated"
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.2)
    for t in threads:
        t.join(timeout=TIMEOUT_S)
    flood.gateway_peak, flood.worker_peak = memory.gateway_peak, memory.worker_peak
    return flood


def _quantiles(values: list[float]) -> str:
    if not values:
        return "—"
    ordered = sorted(values)
    p95 = statistics.quantiles(ordered, n=20)[-1] if len(ordered) > 1 else ordered[0]
    return f"{statistics.median(ordered):.3f} / {p95:.3f} / {ordered[-1]:.3f}"


def bombs_section(bombs: list[Bomb] | None) -> list[str]:
    if bombs is None:
        return ["(not run)"]
    rows = [
        [
            f"`{b.sql}`",
            str(b.status),
            f"{b.seconds:.2f}",
            f"{(b.gateway_peak - b.gateway_before) / MB:+.0f}",
            f"{b.gateway_peak / MB:.0f}",
            f"{b.worker_peak / MB:.0f}",
            " ".join(b.error.split())[:60],
        ]
        for b in bombs
    ]
    return _table(
        [
            "query",
            "status",
            "s",
            "gateway growth MB",
            "gateway peak MB",
            "worker peak MB",
            "answer",
        ],
        rows,
    )


def flood_section(flood: Flood | None) -> list[str]:
    if flood is None:
        return ["(not run)"]
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(flood.flood_status.items(), key=str))
    return [
        f"{FLOODERS} threads of one session sent `{SLOW}` back to back for {flood.seconds:g} s "
        f"(answers by status: {statuses}). Meanwhile, every 0.2 s:",
        "",
        *_table(
            ["who", "requests", "failed", "p50 / p95 / max s"],
            [
                [
                    "another session: `SELECT 1`",
                    str(len(flood.other_s) + flood.other_errors),
                    str(flood.other_errors),
                    _quantiles(flood.other_s),
                ],
                [
                    "its interviewer: `GET /api/sessions/ID/review`",
                    str(len(flood.review_s) + flood.review_errors),
                    str(flood.review_errors),
                    _quantiles(flood.review_s),
                ],
            ],
        ),
        "",
        f"Gateway peak RSS {flood.gateway_peak / MB:.0f} MB; console workers' peak "
        f"{flood.worker_peak / MB:.0f} MB each; `/-/health` showed the console saturated: "
        f"{'yes' if flood.saturated_seen else 'no'}.",
    ]
