"""The stack's one simulated "now", shared by every process through a small file.

The supervisor writes where simulated time starts (the end of the last production day, or where an
earlier run of the stack left off), the wall-clock moment it started, and the speed. Every process
derives the same now from those three, so no process needs to talk to another to agree on time.
Simulated time stops at the end of the world's last visible day: nothing exists beyond it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from sandbox.clock import Calendar

CLOCK_FILE = "clock.json"
# Held while the clock file is read, changed and written back: the supervisor starting time and
# the interviewer's fast-forward are two writers, and neither may undo the other's change.
CLOCK_LOCK = "clock.lock"
# A 90-minute session covers three simulated days.
DEFAULT_SPEED = 48.0


@dataclass(frozen=True)
class SimClock:
    sim_start: dt.datetime
    wall_start: float  # seconds since the epoch when the simulated clock stood at sim_start
    speed: float  # simulated seconds per wall-clock second
    sim_end: dt.datetime

    @classmethod
    def starting(
        cls,
        calendar: Calendar,
        speed: float = DEFAULT_SPEED,
        resume_at: dt.datetime | None = None,
        wall: float | None = None,
    ) -> SimClock:
        start = resume_at or calendar.midnight(calendar.last_production_day + 1)
        end = calendar.midnight(calendar.last_visible_day + 1)
        return cls(min(start, end), time.time() if wall is None else wall, speed, end)

    def now(self, wall: float | None = None) -> dt.datetime:
        elapsed = (time.time() if wall is None else wall) - self.wall_start
        advanced = elapsed * self.speed
        if advanced >= (self.sim_end - self.sim_start).total_seconds():
            return self.sim_end
        return self.sim_start + dt.timedelta(seconds=advanced)

    def moving(self, speed: float, wall: float | None = None) -> SimClock:
        """This clock, from where it stands at `wall`, running on at `speed`."""
        wall = time.time() if wall is None else wall
        return replace(self, sim_start=self.now(wall), wall_start=wall, speed=speed)

    def moved_to(self, sim: dt.datetime, wall: float | None = None) -> SimClock:
        """This clock set to `sim` (never past the end) at `wall`, at its speed."""
        wall = time.time() if wall is None else wall
        return replace(self, sim_start=min(sim, self.sim_end), wall_start=wall)

    def wall_time_of(self, sim: dt.datetime) -> float:
        """The wall-clock moment simulated time reaches `sim` (for sleeping until an event)."""
        return self.wall_start + (sim - self.sim_start).total_seconds() / self.speed

    def save(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / (CLOCK_FILE + ".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "sim_start": self.sim_start.isoformat(),
                    "wall_start": self.wall_start,
                    "speed": self.speed,
                    "sim_end": self.sim_end.isoformat(),
                }
            )
        )
        tmp.replace(run_dir / CLOCK_FILE)

    @classmethod
    def load(cls, run_dir: Path) -> SimClock:
        raw = json.loads((run_dir / CLOCK_FILE).read_text())
        return cls(
            dt.datetime.fromisoformat(raw["sim_start"]),
            float(raw["wall_start"]),
            float(raw["speed"]),
            dt.datetime.fromisoformat(raw["sim_end"]),
        )


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    with open(run_dir / CLOCK_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def change_clock(
    run_dir: Path, change: Callable[[SimClock], SimClock]
) -> tuple[SimClock, SimClock]:
    """Apply `change` to the clock as the file has it, and write the result; (before, after).
    Any process that moves the clock goes through here, so a change written by another process
    in the meantime is the one changed, never lost."""
    with _locked(run_dir):
        before = SimClock.load(run_dir)
        after = change(before)
        after.save(run_dir)
    return before, after
