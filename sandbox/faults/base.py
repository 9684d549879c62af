"""What a fault is: parameters, the hooks it applies at pipeline stages, its answer key and its checks.

A fault transforms the value passing through a named hook point (see `hooks.HOOK_POINTS`); the stage
code calls `FaultSet.apply(point, value, ctx)` and never knows which faults exist. Everything a fault
writes into candidate-visible data must read like ordinary production data: no fault id, no telltale words.
"""

from __future__ import annotations

import datetime as dt
import difflib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import duckdb
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from sandbox.clock import Calendar
from sandbox.faults.hooks import HOOK_POINTS


class FaultParams(BaseModel):
    """Parameters every fault shares; a fault subclasses this to add its own."""

    model_config = ConfigDict(extra="forbid")

    onset_day: int = Field(15, ge=1, le=42, description="Production day the fault starts (1..42).")
    ramp_days: int = Field(
        7, ge=0, le=21, description="Days from onset until full severity (0 = a step change)."
    )

    def intensity(self, day: int) -> float:
        """0 before onset, rising linearly to 1 over the ramp."""
        if day < self.onset_day:
            return 0.0
        if self.ramp_days == 0:
            return 1.0
        return min(1.0, (day - self.onset_day + 1) / self.ramp_days)


class Evidence(BaseModel):
    """Where the planted evidence lives, and when: used to mark the candidate's history in review."""

    id: str
    kind: Literal["table_column", "metric", "log_pattern", "changelog"]
    ref: str = Field(description="table.column, metric name, log regex, or changelog title.")
    description: str
    window_start: dt.date
    window_end: dt.date


class InvestigationStep(BaseModel):
    """One step of the reference investigation, as the answer key shows it to the interviewer."""

    question: str
    sql: str
    evidence: str = Field(description="The Evidence id this step reaches.")
    finding: str = Field(description="What the result shows when the evidence is there.")


class AnswerKey(BaseModel):
    fault_id: str
    title: str
    root_cause: str
    propagation: list[str]
    evidence: list[Evidence]
    acceptable_fixes: list[str]
    probes: list[str]
    investigation: list[InvestigationStep] = Field(default_factory=list)


@dataclass(frozen=True)
class Step:
    """A query an expert would run, and how to tell from its result that it found the evidence.

    `found` must be false on the no-fault world for at least one step of every investigation,
    or the investigation proves nothing (the catalog tests check both directions).
    """

    question: str
    sql: str
    evidence: str
    finding: str
    found: Callable[[pl.DataFrame], bool]

    def public(self) -> InvestigationStep:
        return InvestigationStep(
            question=self.question, sql=self.sql, evidence=self.evidence, finding=self.finding
        )


class Check(BaseModel):
    """One measured verification: what was expected, what the world shows."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class HookContext:
    seed: int
    day: int
    calendar: Calendar


class UnknownHookPoint(TypeError):
    """A fault, decoy or stage named a hook point that no stage exposes."""


def check_hook_point(point: str, who: str) -> None:
    """Refuse a hook point no stage exposes, naming it and the nearest real one: a misspelled
    hook would otherwise be planted and silently never act."""
    if point not in HOOK_POINTS:
        near = difflib.get_close_matches(point, HOOK_POINTS, n=1)
        hint = (
            f"; did you mean {near[0]!r}?" if near else f"; hook points: {', '.join(HOOK_POINTS)}"
        )
        raise UnknownHookPoint(f"{who}: unknown hook point {point!r}{hint}")


def _check_hook_points(cls: type) -> None:
    for point in cls.__dict__.get("hook_points", ()):
        check_hook_point(point, cls.__name__)


class Fault(ABC):
    id: ClassVar[str]
    title: ClassVar[str]
    difficulty: ClassVar[Literal["easy", "medium", "hard"]]
    observation: ClassVar[str]  # what the candidate will see, in one line
    hook_points: ClassVar[tuple[str, ...]]
    Params: ClassVar[type[FaultParams]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _check_hook_points(cls)

    def __init__(self, params: FaultParams) -> None:
        self.params = params

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.split(".")[0] for p in self.hook_points))

    def apply(self, point: str, value: Any, ctx: HookContext) -> Any:
        """Transform the value flowing through `point`; the default leaves it alone."""
        return value

    def changelog(self, calendar: Calendar) -> list[dict[str, Any]]:
        """Ordinary-looking ops entries this fault's story leaves behind."""
        return []

    @abstractmethod
    def answer_key(self, calendar: Calendar) -> AnswerKey:
        """Root cause, propagation, evidence pointers, fixes and probes; `key()` adds the
        reference investigation."""

    @abstractmethod
    def investigation(self, calendar: Calendar) -> list[Step]:
        """The handful of queries an expert would run to reach this fault's evidence."""

    def key(self, calendar: Calendar) -> AnswerKey:
        key = self.answer_key(calendar)
        key.investigation = [step.public() for step in self.investigation(calendar)]
        return key

    @abstractmethod
    def verify(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> list[Check]:
        """Measure the symptom in a built world (read-only connection to its DuckDB file)."""


class DecoyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    day: int = Field(20, ge=1, le=42, description="Production day it happens.")


class DecoyNote(BaseModel):
    """What the interviewer reads about a red herring: what happened and why it is harmless."""

    decoy_id: str
    title: str
    what_happened: str
    why_harmless: str
    evidence: list[Evidence]


class Decoy(ABC):
    """A harmless change in the same window as the faults: ordinary production life that a
    candidate may chase. It hooks stages exactly as a fault does, but has no root cause."""

    id: ClassVar[str]
    title: ClassVar[str]
    hook_points: ClassVar[tuple[str, ...]]
    Params: ClassVar[type[DecoyParams]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _check_hook_points(cls)

    def __init__(self, params: DecoyParams) -> None:
        self.params = params

    def apply(self, point: str, value: Any, ctx: HookContext) -> Any:
        return value

    def changelog(self, calendar: Calendar) -> list[dict[str, Any]]:
        return []

    @abstractmethod
    def note(self, calendar: Calendar) -> DecoyNote: ...

    @abstractmethod
    def verify(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> list[Check]:
        """The decoy really happened in the built world."""


class FaultSet:
    """The faults and decoys planted in one world, applied in scenario order at each hook point
    (faults first)."""

    def __init__(self, faults: list[Fault], decoys: list[Decoy] | None = None) -> None:
        self.faults = faults
        self.decoys = decoys or []

    def acts_at(self, *points: str) -> bool:
        """Whether anything planted acts at any of `points`."""
        for point in points:
            check_hook_point(point, "FaultSet.acts_at")
        return any(
            point in planted.hook_points
            for planted in [*self.faults, *self.decoys]
            for point in points
        )

    def apply(self, point: str, value: Any, ctx: HookContext) -> Any:
        check_hook_point(point, "FaultSet.apply")
        for planted in [*self.faults, *self.decoys]:
            if point in planted.hook_points:
                value = planted.apply(point, value, ctx)
        return value

    def changelog(self, calendar: Calendar) -> list[dict[str, Any]]:
        return [e for planted in [*self.faults, *self.decoys] for e in planted.changelog(calendar)]

    @property
    def earliest_onset(self) -> int | None:
        return min((f.params.onset_day for f in self.faults), default=None)
