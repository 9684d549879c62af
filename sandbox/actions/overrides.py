"""The stack's applied actions, in one small file of the world's run directory.

The gateway appends an action when it is applied (the whole file rewritten and moved into place,
so a reader never sees half of it); the services that act on it read it again when it changes. An
action is in effect from its `effective_at`, in simulated time: a service asks what is in effect
at its now, so a change shows exactly when the shared clock reaches it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, TypeAdapter

from sandbox.actions.catalog import (
    COUNT_AS_FAILED,
    ONLINE_STORE_JOBS,
    PAUSE_JOB,
    QUARANTINE_RELEASE,
    RESUME_JOB,
    SET_DRIFT_WINDOW,
    SET_FILL,
    SET_THRESHOLD,
)
from sandbox.clock import Calendar
from sandbox.pipeline.train import SCORE_HOUR

OVERRIDES_FILE = "actions.json"


class Applied(BaseModel):
    """One applied action."""

    id: str
    action: str
    params: dict[str, Any]
    requested_at: dt.datetime
    effective_at: dt.datetime
    session_id: str | None = None


_ENTRIES = TypeAdapter(list[Applied])


class Pause(NamedTuple):
    """A job paused by `pause` until `until` (None: still paused)."""

    pause: Applied
    until: dt.datetime | None

    def holds(self, at: dt.datetime) -> bool:
        return self.pause.effective_at <= at and (self.until is None or at < self.until)


class Overrides:
    """The applied actions of the stack whose run directory is `run_dir`."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / OVERRIDES_FILE
        self._lock = threading.Lock()
        self._mtime: int | None = None
        self._entries: list[Applied] = []

    def entries(self) -> list[Applied]:
        """Every applied action, in the order applied (re-read when the file changed)."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return []
        if mtime != self._mtime:
            with contextlib.suppress(ValueError):  # a file being replaced: keep what was read
                self._entries = _ENTRIES.validate_json(self.path.read_bytes())
                self._mtime = mtime
        return self._entries

    def append(self, applied: Applied) -> None:
        with self._lock:
            entries = [*self.entries(), applied]
            tmp = self.path.with_suffix(".tmp")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(_ENTRIES.dump_json(entries, indent=1))
            tmp.replace(self.path)

    def in_effect(self, action: str, now: dt.datetime) -> list[Applied]:
        """The applied `action`s in effect at `now`, the latest to take effect last."""
        found = [e for e in self.entries() if e.action == action and e.effective_at <= now]
        return sorted(found, key=lambda e: e.effective_at)

    def threshold(self, now: dt.datetime) -> float | None:
        """The decision threshold set from the console, if any is in effect."""
        found = self.in_effect(SET_THRESHOLD, now)
        return float(found[-1].params["threshold"]) if found else None

    def fill_values(self, now: dt.datetime) -> dict[str, float]:
        """Fill values set from the console and in effect, by feature."""
        return {
            e.params["feature"]: float(e.params["fill_value"])
            for e in self.in_effect(SET_FILL, now)
        }

    def quarantined(self, now: dt.datetime) -> list[tuple[str, str]]:
        """The app releases (device, app version) whose watch time is quarantined at `now`."""
        found = self.in_effect(QUARANTINE_RELEASE, now)
        return sorted({(e.params["device"], e.params["app_version"]) for e in found})

    def failed_statuses(self, now: dt.datetime) -> list[str]:
        """The billing statuses counted as failed charges at `now`, besides the job's own."""
        return sorted({e.params["status"] for e in self.in_effect(COUNT_AS_FAILED, now)})

    def pauses(self, job: str, now: dt.datetime) -> list[Pause]:
        """The spans `job` has been paused by `now`: from a pause's effective time to that of the
        next resume (a pause while paused changes nothing; a resume while running neither)."""
        changes = sorted(
            (
                e
                for e in self.entries()
                if e.action in (PAUSE_JOB, RESUME_JOB)
                and e.params.get("job") == job
                and e.effective_at <= now
            ),
            key=lambda e: e.effective_at,
        )
        spans: list[Pause] = []
        pause: Applied | None = None
        for change in changes:
            if change.action == PAUSE_JOB and pause is None:
                pause = change
            elif change.action == RESUME_JOB and pause is not None:
                spans.append(Pause(pause, change.effective_at))
                pause = None
        return [*spans, Pause(pause, None)] if pause is not None else spans

    def paused(self, job: str, now: dt.datetime) -> Applied | None:
        """The pause of `job` in effect at `now`, if it is paused: it stays paused until resumed."""
        spans = self.pauses(job, now)
        return spans[-1].pause if spans and spans[-1].until is None else None

    def online_store_pauses(self, now: dt.datetime) -> list[Pause]:
        """When no scheduled load reached the online store, by `now` (a job feeding it paused)."""
        return [p for job in ONLINE_STORE_JOBS for p in self.pauses(job, now)]

    def drift_window(self, now: dt.datetime) -> tuple[int, bool] | None:
        """(days, fixed) of the drift reference window set from the console, if any is in effect."""
        found = self.in_effect(SET_DRIFT_WINDOW, now)
        return (int(found[-1].params["days"]), bool(found[-1].params["fixed"])) if found else None


def read(run_dir: Path) -> list[dict[str, Any]]:
    """The applied actions as JSON-ready dicts (for a review read beside or after the stack)."""
    return [json.loads(e.model_dump_json()) for e in Overrides(run_dir).entries()]


def first_live_batch(entries: list[Applied], calendar: Calendar) -> dt.datetime | None:
    """The first daily batch (06:00) the model server runs itself rather than the world's: the
    first at or after the earliest applied change took effect, so every batch from then on scores
    with what the ops console changed. None: nothing applied."""
    first = min((e.effective_at for e in entries), default=None)
    if first is None:
        return None
    day = calendar.day_of(first)
    at = calendar.at(day, SCORE_HOUR)
    return at if at >= first else calendar.at(day + 1, SCORE_HOUR)
