"""World builds in child processes (`sandbox build`), through a queue: at most `at_once` run at
once, the others wait (`queued`).

A build writes a new world into the worlds root (`WORLDS/NAME`, `worlds.worlds_root`). A re-seeded
copy of a scenario (same faults and parameters, other data) is how each candidate gets their own
variant. Each build's state is kept in a small JSON file, so the builds survive a gateway restart:
a build that was waiting or running when the gateway went is shown `interrupted`, with its log,
and the unfinished world a running one left is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.services.fleet.worlds import NAME, manifest_of, processes_naming
from sandbox.services.launcher import command_line

LOG_LINES = 200
BUILD_COMMAND = (sys.executable, "-m", "sandbox", "build")
STATES = ("queued", "building", "built", "failed", "cancelled", "interrupted")
# A build asked to stop gets this long to go before it is killed.
STOP_GRACE_S = 5.0
SAVE_EVERY_S = 1.0  # a running build's progress is written to its file at most this often


@dataclass(eq=False)
class Build:
    id: str
    name: str
    out: Path
    toml: str  # the scenario, written for the build's process when it starts
    state: str = "queued"  # one of STATES
    process: subprocess.Popen | None = None
    stages: dict[str, dict[str, int]] = field(default_factory=dict)
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    seed: int | None = None
    follower: threading.Thread | None = None  # reads its output while it runs
    stopping: bool = False  # cancelled while it ran: it ends as "cancelled", its output removed

    @property
    def active(self) -> bool:
        return self.state in ("queued", "building")

    def record(self) -> dict[str, Any]:
        """What is kept of the build across a gateway restart."""
        return {
            "id": self.id,
            "name": self.name,
            "out": str(self.out),
            "toml": self.toml,
            "state": self.state,
            "stages": self.stages,
            "lines": list(self.lines),
            "seed": self.seed,
            "pid": self.process.pid if self.process is not None else None,
        }

    @classmethod
    def restored(cls, record: dict[str, Any], root: Path | None = None) -> Build:
        """A build from its record, as the gateway starting again finds it: one that was waiting
        or running went with the gateway and is `interrupted`. A build process it left running
        is stopped, and the unfinished world a running build wrote is removed when it is that
        build's own under the worlds root `root` (`_remove_unfinished`)."""
        build = cls(str(record["id"]), str(record["name"]), Path(record["out"]), record["toml"])
        build.state = str(record["state"])
        build.stages = {str(k): dict(v) for k, v in record.get("stages", {}).items()}
        build.lines.extend(str(line) for line in record.get("lines", []))
        build.seed = record.get("seed")
        if build.active:
            ran = build.state == "building"
            build.state = "interrupted"
            build.lines.append("the gateway stopped while this build waited or ran")
            _stop_orphan(record.get("pid"), build.out)
            # A build that only waited wrote nothing: whatever is at its `out` is not its own.
            if ran and root is not None:
                _remove_unfinished(build, root)
        return build


class BuildsClosed(RuntimeError):
    """The gateway is stopping: no build starts any more."""


class BuildQueue:
    """The operator's world builds, each a child process (`sandbox build`). At most `at_once`
    run at a time; the others wait, first come first served, and start as running ones end.
    Every waiting and running build is kept, and the last `kept` finished ones (built, failed,
    cancelled); older ones are forgotten. `close` (the gateway stopping) cancels the waiting
    builds and stops the running ones."""

    def __init__(
        self,
        at_once: int,
        kept: int,
        command: tuple[str, ...] = BUILD_COMMAND,
        state_dir: Path | None = None,
        worlds_root: Path | None = None,
    ) -> None:
        self.at_once = at_once
        self.kept = kept
        self.command = command
        self.state_dir = state_dir  # one JSON file per build, read back at the next start
        # Where builds write their worlds: an interrupted build's unfinished world is removed
        # only from here (None: never).
        self.worlds_root = worlds_root
        self._builds: dict[str, Build] = {}  # in the order they were asked for
        self._finished: deque[str] = deque()  # ids of finished builds, oldest first
        self._lock = threading.Lock()
        self._closed = False
        self._restore()

    def _restore(self) -> None:
        """The builds of the gateway's earlier runs, oldest first."""
        if self.state_dir is None or not self.state_dir.is_dir():
            return
        records = []
        for path in self.state_dir.glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):
                record = json.loads(path.read_text())
                records.append((path.stat().st_mtime, Build.restored(record, self.worlds_root)))
        with self._lock:
            for _, build in sorted(records, key=lambda r: r[0]):
                self._builds[build.id] = build
                self._end(build, build.state)

    def _save(self, build: Build) -> None:
        """Keep the build's state on disk (written whole, then renamed into place)."""
        if self.state_dir is None:
            return
        with contextlib.suppress(OSError):
            self.state_dir.mkdir(parents=True, exist_ok=True)
            path = self.state_dir / f"{build.id}.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(build.record()))
            tmp.replace(path)

    def submit(self, name: str, out: Path, toml: str) -> Build:
        """A new build into `out`, started now if a slot is free, else queued. BuildsClosed
        when the gateway is stopping; FileExistsError when another build goes into `out`."""
        with self._lock:
            if self._closed:
                raise BuildsClosed("the gateway is stopping; start the build again once it is up")
            if any(b.out == out and b.active for b in self._builds.values()):
                raise FileExistsError(f"a build into {out} is already queued or running")
            build = Build(uuid.uuid4().hex[:12], name, out, toml)
            self._builds[build.id] = build
            self._start_waiting()
            self._save(build)
        return build

    def get(self, build_id: str) -> Build | None:
        return self._builds.get(build_id)

    def all(self) -> list[Build]:
        with self._lock:
            return list(self._builds.values())

    def ahead(self, build: Build) -> int:
        """How many queued builds start before this queued one (0 when it is next)."""
        with self._lock:
            waiting = [b for b in self._builds.values() if b.state == "queued"]
        return waiting.index(build) if build in waiting else 0

    def cancel(self, build_id: str) -> Build | None:
        """Stop a build: a queued one never starts; a running one is stopped (killed if it has
        not gone within `STOP_GRACE_S`) and what it wrote removed. A build that has ended, or
        is ending on its own, stays as it ends. None for an unknown id."""
        with self._lock:
            build = self._builds.get(build_id)
            if build is None or not build.active:
                return build
            if build.state == "queued":
                self._end(build, "cancelled")
                return build
            build.stopping = _running(build)
        _stop([build])
        return build

    def close(self) -> None:
        """The gateway is stopping: cancel the waiting builds, stop the running ones, and
        return once they are gone."""
        with self._lock:
            self._closed = True
            running = []
            for build in list(self._builds.values()):
                if build.state == "queued":
                    self._end(build, "cancelled")
                elif build.state == "building":
                    build.stopping = _running(build)
                    running.append(build)
        _stop(running)

    def _start_waiting(self) -> None:
        """Start queued builds while slots are free. Called with the lock held."""
        running = sum(b.state == "building" for b in self._builds.values())
        for build in list(self._builds.values()):
            if running >= self.at_once or self._closed:
                return
            if build.state == "queued":
                self._start(build)
                running += build.state == "building"

    def _start(self, build: Build) -> None:
        if build.out.exists():  # made since the build was asked for: not this build's to replace
            build.lines.append(f"{build.out} already exists; pick another name")
            self._end(build, "failed")
            return
        scratch = Path(tempfile.mkdtemp(prefix="scenario-"))
        source = scratch / "scenario.toml"
        source.write_text(build.toml)
        try:
            build.process = subprocess.Popen(
                [*self.command, str(source), "--out", str(build.out), "--progress", "json"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                # Its own process group: stopping the build stops the processes it started too.
                process_group=0,
            )
        except OSError as exc:
            shutil.rmtree(scratch, ignore_errors=True)
            build.lines.append(f"the build did not start: {exc}")
            self._end(build, "failed")
            return
        build.state = "building"
        self._save(build)
        build.follower = threading.Thread(
            target=self._follow, args=(build, scratch), name=f"build-{build.id}", daemon=True
        )
        build.follower.start()

    def _follow(self, build: Build, scratch: Path) -> None:
        """Read the build's output to the end (a reader that stopped would block the build),
        then record how it ended and start the next one."""
        process = build.process
        assert process is not None and process.stdout is not None
        saved = time.monotonic()
        for line in process.stdout:
            _read_update(build, line.rstrip())
            if time.monotonic() - saved > SAVE_EVERY_S:
                self._save(build)
                saved = time.monotonic()
        code = process.wait()  # from here on, `cancel` leaves the build to end as it did
        shutil.rmtree(scratch, ignore_errors=True)
        with self._lock:
            stopped = build.stopping
        if stopped:
            # Nothing was at `out` when the build started: what is there now is its own.
            shutil.rmtree(build.out, ignore_errors=True)
        with self._lock:
            if stopped:
                self._end(build, "cancelled")
            else:
                self._end(build, "built" if code == 0 and build.seed is not None else "failed")
            self._start_waiting()

    def _end(self, build: Build, state: str) -> None:
        """Record a build as finished, forgetting the oldest finished ones past `kept`. Called
        with the lock held."""
        build.state = state
        self._save(build)
        self._finished.append(build.id)
        while len(self._finished) > self.kept:
            forgotten = self._finished.popleft()
            self._builds.pop(forgotten, None)
            if self.state_dir is not None:
                (self.state_dir / f"{forgotten}.json").unlink(missing_ok=True)


def _read_update(build: Build, line: str) -> None:
    try:
        update = json.loads(line)
        if update.get("done") is True:
            build.seed = int(update["seed"])
        else:
            build.stages[str(update["stage"])] = {
                "done": int(update["done"]),
                "total": int(update["total"]),
            }
    except (ValueError, TypeError, KeyError, AttributeError):
        build.lines.append(line)


def _running(build: Build) -> bool:
    """Whether the build's process is still running (not ending on its own already)."""
    return build.process is not None and build.process.poll() is None


def _stop(builds: list[Build]) -> None:
    """Stop the builds marked `stopping`, and wait until every one of `builds` has ended: each
    gets `STOP_GRACE_S` to go, then its processes are killed."""
    for build in builds:
        if build.stopping:
            _signal_group(build, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for build in builds:
        if build.follower is not None:
            build.follower.join(max(deadline - time.monotonic(), 0))
    for build in builds:
        if build.follower is not None and build.follower.is_alive():
            _signal_group(build, signal.SIGKILL)
            build.follower.join(STOP_GRACE_S)


def _stop_orphan(pid: object, out: Path) -> None:
    """Stop a build a gateway that went left running (its process group), if that process is
    still the build, and wait for it to go: `STOP_GRACE_S`, then it is killed."""
    if not isinstance(pid, int) or str(out) not in command_line(pid):
        return
    for signum in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signum)
        if _gone(pid, out):
            return


def _gone(pid: int, out: Path) -> bool:
    """Whether the build's process ended within `STOP_GRACE_S`."""
    deadline = time.monotonic() + STOP_GRACE_S
    while str(out) in command_line(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _remove_unfinished(build: Build, root: Path) -> None:
    """Remove the unfinished world an interrupted build left at its `out`, when it can only be
    that build's: it started only when nothing was there, and the checks keep everything else —
    a directory not directly under the worlds root or not by a world's name (a record that was
    changed), a link, a complete world (the build finished as the gateway went), one a process
    is writing (a build someone started into it since)."""
    out = build.out
    if out.is_symlink() or not out.is_dir():
        return  # nothing written yet, or not the build's own
    if out.parent.resolve() != root.resolve() or not NAME.match(out.name):
        build.lines.append(f"{out} is not in the worlds root {root}; left as it is")
        return
    if manifest_of(out) is not None:
        build.lines.append(f"{out} is a complete world; left as it is")
        return
    if processes_naming(out):
        build.lines.append(f"{out} was left: a process is still writing it")
        return
    shutil.rmtree(out, ignore_errors=True)
    build.lines.append(f"its unfinished world {out} was removed")


def _signal_group(build: Build, signum: int) -> None:
    """Signal the build's process and every process it started (its process group)."""
    if build.process is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(build.process.pid, signum)
