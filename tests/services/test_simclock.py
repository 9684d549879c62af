"""The shared simulated clock: one now for every process, capped at the end of the world."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sandbox import scenario
from sandbox.services.simclock import SimClock


def _calendar():
    return scenario.load(None).world.calendar()


def test_time_starts_after_production_runs_at_speed_and_stops_at_the_end(tmp_path: Path) -> None:
    cal = _calendar()
    clock = SimClock.starting(cal, speed=60.0, wall=1000.0)
    assert clock.now(wall=1000.0) == cal.midnight(cal.last_production_day + 1)
    assert clock.now(wall=1010.0) - clock.now(wall=1000.0) == dt.timedelta(minutes=10)
    assert clock.now(wall=1e12) == cal.midnight(cal.last_visible_day + 1)
    later = cal.at(cal.last_production_day + 1, 6.0)
    assert clock.now(wall=clock.wall_time_of(later)) == later

    clock.save(tmp_path)
    again = SimClock.load(tmp_path)
    assert again == clock, "every process reading the file derives the same now"


def test_a_restarted_stack_resumes_where_it_left_off() -> None:
    cal = _calendar()
    left_at = cal.at(cal.last_production_day + 2, 13.5)
    clock = SimClock.starting(cal, speed=48.0, resume_at=left_at, wall=0.0)
    assert clock.now(wall=0.0) == left_at
    beyond = SimClock.starting(cal, resume_at=cal.midnight(cal.last_visible_day + 9), wall=0.0)
    assert beyond.now(wall=0.0) == cal.midnight(cal.last_visible_day + 1)
