"""The shared simulated clock: one now for every process, capped at the end of the world."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

from sandbox import scenario
from sandbox.services.simclock import SimClock, change_clock


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


def test_writers_changing_the_clock_at_once_lose_none_of_each_others_changes(
    tmp_path: Path,
) -> None:
    cal = _calendar()
    start = cal.midnight(cal.last_production_day + 1)
    SimClock(start, 0.0, 0.0, cal.midnight(cal.last_visible_day + 1)).save(tmp_path)

    def forward_an_hour_twenty_times() -> None:
        for _ in range(20):
            change_clock(tmp_path, lambda c: c.moved_to(c.now(0.0) + dt.timedelta(hours=1), 0.0))

    writers = [threading.Thread(target=forward_an_hour_twenty_times) for _ in range(6)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert SimClock.load(tmp_path).now(0.0) == start + dt.timedelta(hours=120)


def test_a_clock_set_moving_goes_on_from_where_it_stood() -> None:
    cal = _calendar()
    held = SimClock.starting(cal, speed=1e-9, wall=0.0).moved_to(
        cal.at(cal.last_production_day + 1, 5.0), 10.0
    )
    moving = held.moving(60.0, wall=20.0)
    assert moving.now(wall=20.0) == held.now(wall=20.0)
    assert moving.now(wall=80.0) - moving.now(wall=20.0) == dt.timedelta(hours=1)
    assert held.moved_to(cal.midnight(cal.last_visible_day + 9), 0.0).now(0.0) == held.sim_end
