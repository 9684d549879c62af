"""What a fault is: parameters, the hooks it applies at pipeline stages, its answer key and its checks.

A fault transforms the value passing through a named hook point (see `hooks.HOOK_POINTS`) with a
handler method marked `@hook("point")`; the stage code calls `FaultSet.apply(point, value, ctx)`
and never knows which faults exist. Everything a fault writes into candidate-visible data must
read like ordinary production data: no fault id, no telltale words.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import inspect
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, TypeVar

import duckdb
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator

from sandbox.clock import Calendar
from sandbox.difficulty import DEFAULT, Tier
from sandbox.faults.context import NO_DATA, HookContext, WorldData
from sandbox.faults.hooks import HOOK_POINTS, same_type
from sandbox.schema import SERVED_ALIAS, Column

__all__ = ["HookContext", "WorldData"]


class FaultParams(BaseModel):
    """Parameters every fault shares; a fault subclasses this to add its own."""

    model_config = ConfigDict(extra="forbid")

    onset_day: int = Field(15, ge=1, le=42, description="Production day the fault starts (1..42).")
    ramp_days: int = Field(
        7, ge=0, le=21, description="Days from onset until full severity (0 = a step change)."
    )
    difficulty: Tier | None = Field(
        None,
        description="How explicit this fault's trail is (guided, standard, hard); unset, the "
        "scenario's difficulty.",
    )

    def intensity(self, day: int) -> float:
        """0 before onset, rising linearly to 1 over the ramp."""
        if day < self.onset_day:
            return 0.0
        if self.ramp_days == 0:
            return 1.0
        return min(1.0, (day - self.onset_day + 1) / self.ramp_days)

    def mean_intensity(self, last_day: int) -> float:
        """The mean intensity over the days from onset to `last_day`."""
        days = range(self.onset_day, last_day + 1)
        return sum(self.intensity(d) for d in days) / max(len(days), 1)


EvidenceKind = Literal["table_column", "metric", "log_pattern", "changelog"]
# What an ops-console action (`sandbox.actions`) does to a planted fault or decoy: eases its
# symptom, removes its cause, makes things worse, or nothing.
Verdict = Literal["mitigates", "fixes", "harmful", "no effect"]
VERDICTS: tuple[Verdict, ...] = ("fixes", "mitigates", "harmful", "no effect")


class Evidence(BaseModel):
    """Where the planted evidence lives, and when: used to mark the candidate's history in review."""

    id: str
    kind: EvidenceKind
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


# Columns the review's recovery query names itself; a symptom's id may not be one of them.
SYMPTOM_RESERVED = ("t", "n", "own")


class Symptom(BaseModel):
    """A live series that shows the fault, for the review's recovery chart: `value`, an SQL
    aggregate over the rows of `source` (a FROM clause over the candidate's tables, joins
    allowed) that `where` selects, in each time bucket of `time` (an expression of those rows).
    The review charts it from before the candidate's first action to the simulated now, against
    its level in the week before the fault began; the catalog tests check that it moves where
    the fault is planted and not without it. `own` selects the rows the session's own calls
    added (None: the source has no such rows); `rows` says what a row is, in the plural."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z_][a-z0-9_]*$")
    title: str
    unit: str = ""
    value: str
    source: str = "serving.predictions"
    time: str = "request_ts"
    where: str = "source = 'online' AND score IS NOT NULL"
    own: str | None = "client = 'workspace'"
    rows: str = "online requests"

    @field_validator("id")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in SYMPTOM_RESERVED:
            raise ValueError(f"a symptom's id may not be one of {', '.join(SYMPTOM_RESERVED)}")
        return value


class AnswerKey(BaseModel):
    fault_id: str
    title: str
    difficulty: Tier = DEFAULT
    root_cause: str
    propagation: list[str]
    evidence: list[Evidence]
    acceptable_fixes: list[str]
    probes: list[str]
    investigation: list[InvestigationStep] = Field(default_factory=list)
    actions: dict[str, Verdict] = Field(
        default_factory=dict, description="Ops-console action id -> what it does to this fault."
    )
    symptoms: list[Symptom] = Field(
        default_factory=list, description="The live series the review charts its recovery by."
    )
    acts_when: dict[str, dict[str, list[Any]]] = Field(
        default_factory=dict,
        description="Ops-console action id -> {parameter: the values for which its verdict "
        "holds}; with any other value the action has no effect on this fault.",
    )


# The changelog kinds that change a service's code or configuration.
ROLLOUT_KINDS = ("deploy", "config")


@dataclass(frozen=True)
class Rollout:
    """A deployment of a service's code or configuration, at `at` (the first replica's)."""

    service: str  # as the ops console's rollback names it, e.g. "model-server"
    at: dt.datetime
    what: str


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


Outcome = Literal["passed", "failed", "not measurable"]


class Check(BaseModel):
    """One verification: what was expected, and what the world shows.

    A check measures and passes or fails: `Check(name=..., passed=..., detail=...)`. When the
    world cannot decide it (too few labels have matured, too few customers are affected), it is
    `Check(name=..., outcome="not measurable", detail=...)`, which neither passes nor fails and
    says why in its detail.
    """

    name: str
    outcome: Outcome
    detail: str

    def __init__(
        self,
        *,
        name: str,
        detail: str,
        passed: bool | None = None,
        outcome: Outcome | None = None,
    ) -> None:
        if outcome is None:
            if passed is None:
                raise TypeError(f"check {name!r}: say whether it passed, or give its outcome")
            outcome = "passed" if passed else "failed"
        super().__init__(name=name, outcome=outcome, detail=detail)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def passed(self) -> bool:
        return self.outcome == "passed"

    @property
    def measured(self) -> bool:
        return self.outcome != "not measurable"


class UnknownHookPoint(TypeError):
    """A fault, decoy or stage named a hook point that no stage exposes."""


class BadHandler(TypeError):
    """A hook handler whose signature does not fit its hook point."""


def check_hook_point(point: str, who: str) -> None:
    """Refuse a hook point no stage exposes, naming it and the nearest real one: a misspelled
    hook would otherwise be planted and silently never act."""
    if point not in HOOK_POINTS:
        near = difflib.get_close_matches(point, HOOK_POINTS, n=1)
        hint = (
            f"; did you mean {near[0]!r}?" if near else f"; hook points: {', '.join(HOOK_POINTS)}"
        )
        raise UnknownHookPoint(f"{who}: unknown hook point {point!r}{hint}")


Handler = TypeVar("Handler", bound=Callable[..., Any])


def hook(point: str) -> Callable[[Handler], Handler]:
    """Mark a method as the handler of `point`: `(self, value: T, ctx: HookContext) -> T`, with
    T the point's declared type. Checked when the class is defined."""

    def mark(handler: Handler) -> Handler:
        check_hook_point(point, handler.__qualname__)
        check_handler(point, handler)
        handler.__hook_point__ = point  # type: ignore[attr-defined]
        return handler

    return mark


def check_handler(point: str, handler: Callable[..., Any]) -> None:
    """Refuse a handler whose signature does not fit `point` (BadHandler, naming both)."""
    declared = HOOK_POINTS[point].value
    who = f"{handler.__qualname__} (hook {point!r})"
    params = list(inspect.signature(handler).parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if len(params) != 3 or any(p.kind not in positional for p in params):
        raise BadHandler(f"{who}: a handler takes (self, value: {declared}, ctx: HookContext)")
    value, ctx = params[1].annotation, params[2].annotation
    returns = inspect.signature(handler).return_annotation
    for what, annotation in (("value", value), ("return", returns)):
        if annotation is inspect.Parameter.empty:
            raise BadHandler(f"{who}: annotate the {what} as {declared}")
        text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
        if not same_type(text, declared):
            raise BadHandler(f"{who}: the {what} is {text}, but the hook carries {declared}")
    if ctx not in (inspect.Parameter.empty, HookContext, "HookContext"):
        raise BadHandler(f"{who}: the context is a HookContext, not {ctx}")


class Planted(ABC):
    """What faults and decoys share: handlers found by `@hook`, one per hook point."""

    Params: ClassVar[type[BaseModel]]  # from the class's type argument: Fault[Params]
    handlers: ClassVar[dict[str, str]] = {}  # hook point -> method name
    hook_points: ClassVar[tuple[str, ...]] = ()
    # Columns this one's rows add to declared candidate tables (`sandbox.schema`), by table: the
    # world it is planted in has them after the declared columns. Undeclared, the build refuses
    # the rows.
    adds_columns: ClassVar[dict[str, tuple[Column, ...]]] = {}
    # What each ops-console action (by id, `sandbox.actions`) does to this one; the answer key
    # carries it next to the fixes, and the review judges the candidate's actions by it. An
    # action not named has no effect.
    actions: ClassVar[dict[str, Verdict]] = {}
    # The service a `rollback-deploy` must name for its verdict in `actions` to hold: rolling
    # back another service does nothing to this one.
    rollback_service: ClassVar[str] = "model-server"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # `class X(Fault[Params])` names the parameters once: X.Params is that class.
        for base in cls.__dict__.get("__orig_bases__", ()):
            origin, args = typing.get_origin(base), typing.get_args(base)
            planted = isinstance(origin, type) and issubclass(origin, Planted)
            if planted and args and isinstance(args[0], type):
                cls.Params = args[0]
        if "hook_points" in cls.__dict__:
            raise BadHandler(
                f"{cls.__name__}: hook points come from @hook handlers, not a hook_points list"
            )
        handlers = dict(cls.handlers)
        own: set[str] = set()
        for name, attr in cls.__dict__.items():
            point = getattr(attr, "__hook_point__", None)
            if point is None:
                continue
            if point in own:
                raise BadHandler(f"{cls.__name__}: two handlers for hook {point!r}")
            own.add(point)
            handlers[point] = name
        cls.handlers = handlers
        cls.hook_points = tuple(handlers)

    def handle(self, point: str, value: Any, ctx: HookContext) -> Any:
        """Run this one's handler for `point` (the value unchanged if it has none)."""
        name = self.handlers.get(point)
        return value if name is None else getattr(self, name)(value, ctx)

    def changelog(self, calendar: Calendar) -> list[dict[str, Any]]:
        """Ordinary-looking ops entries this one's story leaves behind."""
        return []

    def acts_when(self) -> dict[str, dict[str, list[Any]]]:
        """For an action in `actions` whose effect depends on its parameters: the values of each
        parameter for which its verdict holds (setting the fill of a feature this one did not
        touch does nothing to it). Any other value: no effect."""
        return {}

    def rollouts(self, calendar: Calendar) -> list[Rollout]:
        """The deployments of a service's code or configuration this one's story rolls out,
        whether or not the changelog tells of them: the deploy system knows them, so the ops
        console's rollback goes back past them, and a handler that acts because of one asks
        `HookContext.rolled_out`."""
        return []

    @abstractmethod
    def verify(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> list[Check]:
        """Measure that it happened in a built world (read-only connection to its DuckDB)."""


P = TypeVar("P", bound="FaultParams")


class Fault(Planted, Generic[P]):
    """A planted fault; `Fault[Params]` types `self.params` as the fault's own parameters."""

    id: ClassVar[str]
    title: ClassVar[str]
    # How hard the fault is to find with its full trail shown; the tier (`self.tier`) is how
    # much of that trail a world shows.
    rating: ClassVar[Literal["easy", "medium", "hard"]]
    observation: ClassVar[str]  # what the candidate will see, in one line
    Params: ClassVar[type[FaultParams]]
    # Customers a world needs for the symptom to stand out of its noise (`verify` passes); a
    # scenario whose scale gives fewer is refused before the build.
    min_customers: ClassVar[int] = 0

    def __init__(self, params: P, tier: Tier = DEFAULT) -> None:
        self.params = params
        # The fault entry's own difficulty wins over the scenario's.
        self.tier: Tier = params.difficulty or tier

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.split(".")[0] for p in self.hook_points))

    @abstractmethod
    def answer_key(self, calendar: Calendar) -> AnswerKey:
        """Root cause, propagation, evidence pointers, fixes and probes; `key()` adds the
        reference investigation."""

    @abstractmethod
    def investigation(self, calendar: Calendar) -> list[Step]:
        """The handful of queries an expert would run to reach this fault's evidence."""

    def key(self, calendar: Calendar) -> AnswerKey:
        key = self.answer_key(calendar)
        key.difficulty = self.tier
        key.investigation = [step.public() for step in self.investigation(calendar)]
        key.actions = dict(self.actions)
        key.symptoms = self.symptoms(calendar)
        key.acts_when = {**self._deployment_when(), **self.acts_when()}
        return key

    def _deployment_when(self) -> dict[str, dict[str, list[Any]]]:
        """The parameter values every fault's deployment verdicts need: a rollback of the service
        its story deployed, a move of the alias the servers follow (moving another changes
        nothing they serve)."""
        when: dict[str, dict[str, list[Any]]] = {}
        if self.actions.get("rollback-deploy", "no effect") != "no effect":
            when["rollback-deploy"] = {"service": [self.rollback_service]}
        if self.actions.get("move-alias", "no effect") != "no effect":
            when["move-alias"] = {"alias": [SERVED_ALIAS]}
        return when

    def symptoms(self, calendar: Calendar) -> list[Symptom]:
        """The live series that show this fault, the first the one it moves most surely
        (`toolkit` has the common ones); the review charts them after the candidate acts."""
        return []

    def tells(self, tier: Tier) -> tuple[str, ...]:
        """Phrases and names (case-insensitive) that must not appear in candidate-visible text
        when this fault is planted at `tier`: each alone would point at the root cause. A fault
        declares them for every tier (guided usually none); the catalog tests hold it to them.
        One that declares none shows the same trail at every tier."""
        return ()

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
    actions: dict[str, Verdict] = Field(
        default_factory=dict, description="Ops-console action id -> what it does here."
    )
    acts_when: dict[str, dict[str, list[Any]]] = Field(
        default_factory=dict,
        description="Ops-console action id -> {parameter: the values for which its verdict "
        "holds}; with any other value the action has no effect here.",
    )


D = TypeVar("D", bound="DecoyParams")


class Decoy(Planted, Generic[D]):
    """A harmless change in the same window as the faults: ordinary production life that a
    candidate may chase. It hooks stages exactly as a fault does, but has no root cause."""

    id: ClassVar[str]
    title: ClassVar[str]
    Params: ClassVar[type[DecoyParams]]

    def __init__(self, params: D) -> None:
        self.params = params

    @abstractmethod
    def note(self, calendar: Calendar) -> DecoyNote: ...

    def key(self, calendar: Calendar) -> DecoyNote:
        """The note as the answer key holds it, with what each action does here."""
        return self.note(calendar).model_copy(
            update={"actions": dict(self.actions), "acts_when": self.acts_when()}
        )

    @abstractmethod
    def verify(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> list[Check]:
        """The decoy really happened in the built world."""


class FaultSet:
    """The faults and decoys planted in one world, applied in scenario order at each hook point
    (faults first)."""

    def __init__(
        self, faults: list[Fault], decoys: list[Decoy] | None = None, data: WorldData = NO_DATA
    ) -> None:
        self.faults = faults
        self.decoys = decoys or []
        self.data = data

    def with_data(self, data: WorldData) -> FaultSet:
        """The same planted faults, their handlers reading `data` (the world so far)."""
        return FaultSet(self.faults, self.decoys, data)

    def acts_at(self, *points: str) -> bool:
        """Whether anything planted acts at any of `points`."""
        for point in points:
            check_hook_point(point, "FaultSet.acts_at")
        return any(
            point in planted.handlers
            for planted in [*self.faults, *self.decoys]
            for point in points
        )

    def apply(self, point: str, value: Any, ctx: HookContext) -> Any:
        check_hook_point(point, "FaultSet.apply")
        if ctx.data is NO_DATA:
            ctx = dataclasses.replace(ctx, data=self.data)
        for planted in [*self.faults, *self.decoys]:
            value = planted.handle(point, value, ctx)
        return value

    def changelog(self, calendar: Calendar) -> list[dict[str, Any]]:
        return [e for planted in [*self.faults, *self.decoys] for e in planted.changelog(calendar)]

    def rollouts(self, calendar: Calendar, service: str) -> list[dt.datetime]:
        """When what is planted rolled out changes to `service`, oldest first: the rollouts it
        declares, and every deploy or config change of `service` its changelog tells of (the
        deploy system knows each one, so a rollback goes back past it as past any other)."""
        declared = {
            r.at
            for planted in [*self.faults, *self.decoys]
            for r in planted.rollouts(calendar)
            if r.service == service
        }
        told = {
            calendar.at(e["day"], e["hour"])
            for e in self.changelog(calendar)
            if e["service"] == service and e["kind"] in ROLLOUT_KINDS
        }
        return sorted(declared | told)

    def added_columns(self) -> dict[str, list[Column]]:
        """The columns what is planted adds to candidate tables, by table, in scenario order."""
        added: dict[str, list[Column]] = {}
        for planted in [*self.faults, *self.decoys]:
            for table, columns in planted.adds_columns.items():
                have = added.setdefault(table, [])
                have += [c for c in columns if c not in have]
        return added

    @property
    def earliest_onset(self) -> int | None:
        return min((f.params.onset_day for f in self.faults), default=None)
