"""The decoy catalog: built-in decoys plus any registered through the `sandbox.decoys` entry point."""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

from sandbox.decoys.app_rollout import AppRollout
from sandbox.decoys.competitor_launch import CompetitorLaunch
from sandbox.decoys.infra_incident import InfraIncident
from sandbox.decoys.marketing_campaign import MarketingCampaign
from sandbox.decoys.plan_repricing import PlanRepricing
from sandbox.faults.base import Decoy

BUILTIN: tuple[type[Decoy], ...] = (
    MarketingCampaign,
    InfraIncident,
    AppRollout,
    CompetitorLaunch,
    PlanRepricing,
)
ENTRY_POINT_GROUP = "sandbox.decoys"


@cache
def catalog() -> dict[str, type[Decoy]]:
    decoys: dict[str, type[Decoy]] = {cls.id: cls for cls in BUILTIN}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, Decoy)):
            raise TypeError(f"entry point {ep.name!r} does not name a Decoy subclass")
        if cls.id in decoys:
            raise ValueError(f"decoy id {cls.id!r} from entry point {ep.name!r} is already taken")
        decoys[cls.id] = cls
    return decoys


def get(decoy_id: str) -> type[Decoy]:
    try:
        return catalog()[decoy_id]
    except KeyError:
        known = ", ".join(sorted(catalog()))
        raise KeyError(f"unknown decoy {decoy_id!r}; known decoys: {known}") from None
