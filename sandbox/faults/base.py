"""What a fault is: parameters, the hooks it applies at pipeline stages, its answer key and its checks.

A fault transforms the value passing through a named hook point (see `hooks.HOOK_POINTS`); the stage
code calls `FaultSet.apply(point, value, ctx)` and never knows which faults exist. Everything a fault
writes into candidate-visible data must read like ordinary production data: no fault id, no telltale words.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import duckdb
from pydantic import BaseModel, ConfigDict, Field

from sandbox.clock import Calendar


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


class AnswerKey(BaseModel):
    fault_id: str
    title: str
    root_cause: str
    propagation: list[str]
    evidence: list[Evidence]
    acceptable_fixes: list[str]
    probes: list[str]


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


class Fault(ABC):
    id: ClassVar[str]
    title: ClassVar[str]
    difficulty: ClassVar[Literal["easy", "medium", "hard"]]
    observation: ClassVar[str]  # what the candidate will see, in one line
    hook_points: ClassVar[tuple[str, ...]]
    Params: ClassVar[type[FaultParams]]

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
    def answer_key(self, calendar: Calendar) -> AnswerKey: ...

    @abstractmethod
    def verify(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> list[Check]:
        """Measure the symptom in a built world (read-only connection to its DuckDB file)."""


class FaultSet:
    """The faults planted in one world, applied in scenario order at each hook point."""

    def __init__(self, faults: list[Fault]) -> None:
        self.faults = faults

    def apply(self, point: str, value: Any, ctx: HookContext) -> Any:
        for fault in self.faults:
            if point in fault.hook_points:
                value = fault.apply(point, value, ctx)
        return value

    def changelog(self, calendar: Calendar) -> list[dict[str, Any]]:
        return [entry for fault in self.faults for entry in fault.changelog(calendar)]

    @property
    def earliest_onset(self) -> int | None:
        return min((f.params.onset_day for f in self.faults), default=None)
