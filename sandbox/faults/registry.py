"""The fault catalog: built-in faults plus any registered through the `sandbox.faults` entry point."""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

from sandbox.faults.base import Fault
from sandbox.faults.feature_nulls_wrong_mean import FeatureNullsWrongMean

BUILTIN: tuple[type[Fault], ...] = (FeatureNullsWrongMean,)
ENTRY_POINT_GROUP = "sandbox.faults"


@cache
def catalog() -> dict[str, type[Fault]]:
    faults: dict[str, type[Fault]] = {cls.id: cls for cls in BUILTIN}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, Fault)):
            raise TypeError(f"entry point {ep.name!r} does not name a Fault subclass")
        if cls.id in faults:
            raise ValueError(f"fault id {cls.id!r} from entry point {ep.name!r} is already taken")
        faults[cls.id] = cls
    return faults


def get(fault_id: str) -> type[Fault]:
    try:
        return catalog()[fault_id]
    except KeyError:
        known = ", ".join(sorted(catalog()))
        raise KeyError(f"unknown fault {fault_id!r}; known faults: {known}") from None
