"""Scenario files (TOML): the world, its seed and scale, the incident brief, and the planted faults.

The model is assembled from the fault catalog so that each fault entry is validated against that
fault's own parameters, and errors name the file and the exact field.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import tomllib
from collections.abc import Sequence
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)

from sandbox.clock import Calendar
from sandbox.difficulty import DEFAULT, Tier
from sandbox.faults.base import Decoy, Fault, FaultSet, HookContext
from sandbox.pipeline.release import INITIAL_RELEASE

MIN_CUSTOMERS = 500


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the file and the field."""


class WorldSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("streamwave", pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=60)
    seed: int = Field(7, ge=0, le=2**31 - 1)
    scale: float = Field(1.0, gt=0, le=100, description="Multiplies the customer count.")
    customers: int = Field(25_000, ge=100, le=1_000_000, description="Customers at scale 1.")
    start_date: dt.date = Field(dt.date(2026, 3, 2), description="Date of production day 1.")
    prehistory_days: int = Field(56, ge=28, le=120)
    production_days: int = Field(42, ge=14, le=90)
    live_days: int = Field(5, ge=0, le=14)
    label_horizon_days: int = Field(14, ge=1, le=60)

    @property
    def n_customers(self) -> int:
        return round(self.customers * self.scale)

    def calendar(self) -> Calendar:
        return Calendar(
            start_date=self.start_date,
            burn_in_days=28,
            prehistory_days=self.prehistory_days,
            production_days=self.production_days,
            live_days=self.live_days,
            label_horizon_days=self.label_horizon_days,
        )


class Claim(BaseModel):
    """A statement of the brief about the business that the built world must bear out: over
    production weeks `weeks` (first, last; week 1 starts on production day 1), actual `metric`
    is `direction` finance's plan (`finance.weekly_plan`). `sandbox verify` checks it."""

    model_config = ConfigDict(extra="forbid")

    metric: Literal["cancellations", "revenue"]
    direction: Literal["above", "below", "not below", "not above"]
    weeks: tuple[int, int] = Field(description="First and last production week, inclusive.")

    @model_validator(mode="after")
    def _ordered(self) -> Claim:
        first, last = self.weeks
        if not 1 <= first <= last:
            raise ValueError(f"weeks: {list(self.weeks)} is not a range of production weeks")
        return self


class Brief(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=200)
    text: str = Field(min_length=1)
    claims: list[Claim] = Field(
        default_factory=list,
        description="What the text says about the business, for `sandbox verify` to check.",
    )


# The scenario file's model is made at run time from whatever faults and decoys are registered
# (entry points included), so its field types are values here, not annotations: `Any` to mypy.
def _entry_model(cls: type[Fault[Any]] | type[Decoy[Any]], key: str) -> Any:
    tag: Any = Literal[cls.id]  # type: ignore[valid-type]
    fields: dict[str, Any] = {key: (tag, Field(description=cls.title))}
    return create_model(f"{cls.__name__}Entry", __base__=cls.Params, **fields)


def _union(entries: Sequence[Any], discriminator: str) -> Any:
    if len(entries) == 1:
        return entries[0]
    return Annotated[Union[tuple(entries)], Field(discriminator=discriminator)]  # noqa: UP007


def _registries() -> tuple[Any, Any]:
    # Imported on use: the catalog pulls in every fault's dependencies, which processes that only
    # need a world's calendar (`world_spec`) should not pay for.
    from sandbox.decoys import registry as decoy_registry
    from sandbox.faults import registry

    return registry, decoy_registry


@cache
def scenario_model() -> type[BaseModel]:
    registry, decoy_registry = _registries()
    faults = [_entry_model(cls, "id") for cls in registry.catalog().values()]
    decoys = [_entry_model(cls, "kind") for cls in decoy_registry.catalog().values()]
    fields: dict[str, Any] = {
        "difficulty": (
            Tier,
            Field(
                DEFAULT,
                description="How much of each fault's trail the world shows, and how mature "
                "its monitoring is: guided, standard or hard. A fault entry may override it.",
            ),
        ),
        "world": (WorldSpec, Field(default_factory=WorldSpec)),
        "brief": (Brief, ...),
        "faults": (list[_union(faults, "id")], Field(default_factory=list)),  # type: ignore[misc]
        "decoys": (list[_union(decoys, "kind")], Field(default_factory=list)),  # type: ignore[misc]
    }
    model: type[BaseModel] = create_model(
        "Scenario", __config__=ConfigDict(extra="forbid"), **fields
    )
    return model


class Scenario:
    """A validated scenario: the world spec, the brief, and the fault instances."""

    def __init__(self, raw: dict[str, Any], source: str, text: str = "") -> None:
        model: Any  # the run-time model's instance (see `_entry_model`)
        try:
            model = scenario_model().model_validate(raw)
        except ValidationError as exc:
            raise ScenarioError(_describe(exc, source)) from None
        self.source = source
        self.raw = raw
        self.text = text
        self.world: WorldSpec = model.world
        self.difficulty: Tier = model.difficulty
        if self.world.n_customers < MIN_CUSTOMERS:
            raise ScenarioError(
                f"{source}: world.scale: {self.world.scale} x {self.world.customers} customers is "
                f"{self.world.n_customers}; a world needs at least {MIN_CUSTOMERS} to train a model"
            )
        self.brief: Brief = model.brief
        complete_weeks = self.world.production_days // 7
        for index, claim in enumerate(self.brief.claims):
            if claim.weeks[1] > complete_weeks:
                raise ScenarioError(
                    f"{source}: brief.claims[{index}].weeks: week {claim.weeks[1]} is not a "
                    f"complete production week (there are {complete_weeks})"
                )
        self.faults: list[Fault] = []
        for index, entry in enumerate(model.faults):
            cls = _registries()[0].get(entry.id)
            params = cls.Params.model_validate(entry.model_dump(exclude={"id"}))
            if params.onset_day > self.world.production_days:
                raise ScenarioError(
                    f"{source}: faults[{index}].onset_day: {params.onset_day} is after the last "
                    f"production day ({self.world.production_days})"
                )
            self.faults.append(cls(params, self.difficulty))
            self._refuse_too_small(index, cls, source)
        self.decoys: list[Decoy] = []
        for index, entry in enumerate(model.decoys):
            decoy_cls = _registries()[1].get(entry.kind)
            decoy_params = decoy_cls.Params.model_validate(entry.model_dump(exclude={"kind"}))
            if decoy_params.day > self.world.production_days:
                raise ScenarioError(
                    f"{source}: decoys[{index}].day: {decoy_params.day} is after the last "
                    f"production day ({self.world.production_days})"
                )
            self.decoys.append(decoy_cls(decoy_params))
        self._refuse_colliding_releases(source)

    def _refuse_too_small(self, index: int, cls: type[Fault[Any]], source: str) -> None:
        """A fault whose symptom this many customers would drown in noise: the world would
        build, and `sandbox verify` would fail on it."""
        world = self.world
        if world.n_customers >= cls.min_customers:
            return
        scale = math.ceil(cls.min_customers / world.customers * 100) / 100
        raise ScenarioError(
            f"{source}: faults[{index}] ({cls.id}) needs at least {cls.min_customers:,} "
            f"customers to show; scale {world.scale} gives {world.n_customers:,}. "
            f"Use --scale {scale} or more."
        )

    def _refuse_colliding_releases(self, source: str) -> None:
        """Two faults releasing a model on the same day: the simulation keeps one release per
        day, so one fault would silently vanish while its answer key stayed."""
        ctx = HookContext(self.world.seed, 0, self.world.calendar())
        released: dict[int, str] = {}
        for index, fault in enumerate(self.faults):
            if "train.releases" not in fault.hook_points:
                continue
            mine = f"faults[{index}] ({fault.id})"
            days = {r.day for r in fault.handle("train.releases", [INITIAL_RELEASE], ctx)}
            for day in sorted(days - {INITIAL_RELEASE.day}):
                if day in released:
                    raise ScenarioError(
                        f"{source}: {released[day]} and {mine} both release a model on "
                        f"production day {day}, and a day has one release: move one onset_day"
                    )
                released[day] = mine

    @property
    def fault_set(self) -> FaultSet:
        return FaultSet(self.faults, self.decoys)

    def with_overrides(
        self, seed: int | None = None, scale: float | None = None, difficulty: Tier | None = None
    ) -> Scenario:
        raw = {**self.raw, "world": {**self.raw.get("world", {})}}
        if difficulty is not None:
            raw = {"difficulty": difficulty, **{k: v for k, v in raw.items() if k != "difficulty"}}
        if seed is not None:
            raw["world"]["seed"] = seed
        if scale is not None:
            raw["world"]["scale"] = scale
        return Scenario(raw, self.source, self.text)

    def as_toml(self) -> str:
        """The scenario as it is built: the text as given, unless overrides changed it."""
        if self.text and tomllib.loads(self.text) == self.raw:
            return self.text
        return dump_toml(self.raw)


def dump_toml(raw: dict[str, Any]) -> str:
    """TOML for a scenario's shape: top-level tables and arrays of tables of plain values."""
    out: list[str] = []
    for key, value in raw.items():
        if isinstance(value, dict):
            out += [f"[{key}]", *(f"{k} = {_toml_value(v)}" for k, v in value.items()), ""]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                out += [f"[[{key}]]", *(f"{k} = {_toml_value(v)}" for k, v in item.items()), ""]
        else:
            out.insert(0, f"{key} = {_toml_value(value)}")
    return "\n".join(out)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic strings
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _describe(exc: ValidationError, source: str) -> str:
    lines = []
    registry, decoy_registry = _registries()
    fault_ids = set(registry.catalog()) | set(decoy_registry.catalog())
    for err in exc.errors():
        # The discriminated union puts the fault id into the path; it reads better without it.
        parts = [p for p in err["loc"] if p not in fault_ids]
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")
        lines.append(f"{source}: {loc or '(top level)'}: {err['msg']}")
    return "\n".join(lines)


def parse(text: str, source: str) -> Scenario:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: not valid TOML: {exc}") from None
    return Scenario(raw, source, text)


BUILTIN = ("default", "control")


def builtin(name: str) -> Scenario:
    """A scenario that ships with the package: "default" (one planted fault) or "control" (no
    fault; the same world with one genuine change in it)."""
    return parse(builtin_path(name).read_text(), f"{name}.toml")


def builtin_path(name: str) -> Path:
    """The file of a built-in scenario."""
    if name not in BUILTIN:
        raise ScenarioError(f"no built-in scenario {name!r}; built in: {', '.join(BUILTIN)}")
    return Path(str(files("sandbox") / "scenarios" / f"{name}.toml"))


def load(path: Path | None) -> Scenario:
    """Load a scenario file; None means the built-in default scenario."""
    if path is None:
        return builtin("default")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from None
    return parse(text, str(path))


def world_spec(path: Path) -> WorldSpec:
    """Only the [world] table of a scenario file: enough for a calendar, without the catalog."""
    try:
        raw = tomllib.loads(Path(path).read_text())
        return WorldSpec.model_validate(raw.get("world", {}))
    except (OSError, tomllib.TOMLDecodeError, ValidationError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None


def json_schema() -> dict[str, Any]:
    return scenario_model().model_json_schema()
