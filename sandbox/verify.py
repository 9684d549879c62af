"""`sandbox verify`: run every planted fault's verification and the healthy-world checks.

A check passes, fails, or is not measurable (the world cannot decide it: too few labels have
matured, too few customers are affected). A world passes when no check fails and every planted
fault and decoy has at least one check that passed; checks that were not measurable are counted
and listed on their own, never as passed. The brief's claims about the business are checks too:
a brief that says something the world does not show fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import duckdb

from sandbox import scenario as scenario_mod
from sandbox.faults.base import Check, Outcome
from sandbox.layout import WorldPaths, read_manifest
from sandbox.world import claims, health

OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)


@dataclass
class Verification:
    fault_checks: dict[str, list[Check]]  # fault id, or "decoy:<id>" -> its checks
    health_checks: list[Check]
    brief_checks: list[Check] = field(default_factory=list)

    @property
    def checks(self) -> list[Check]:
        faults = [c for cs in self.fault_checks.values() for c in cs]
        return faults + self.health_checks + self.brief_checks

    @property
    def counts(self) -> dict[Outcome, int]:
        return {o: sum(c.outcome == o for c in self.checks) for o in OUTCOMES}

    @property
    def unconfirmed(self) -> list[str]:
        """Planted faults and decoys that no check that passed shows (none failed, perhaps, but
        none was measurable either)."""
        return [scope for scope, cs in self.fault_checks.items() if not any(c.passed for c in cs)]

    @property
    def passed(self) -> bool:
        return self.counts["failed"] == 0 and not self.unconfirmed

    def as_json(self) -> dict[str, object]:
        return {
            "passed": self.passed,
            "counts": self.counts,
            "unconfirmed": self.unconfirmed,
            "faults": {k: [c.model_dump() for c in v] for k, v in self.fault_checks.items()},
            "health": [c.model_dump() for c in self.health_checks],
            "brief": [c.model_dump() for c in self.brief_checks],
        }


def verify(root: Path) -> Verification:
    manifest = read_manifest(root)
    paths = WorldPaths(Path(root))
    spec = scenario_mod.parse(paths.scenario.read_text(), str(paths.scenario)).with_overrides(
        seed=manifest["seed"], scale=manifest["scale"]
    )
    cal = spec.world.calendar()
    onset = spec.fault_set.earliest_onset
    healthy_until = (onset - 1) if onset else cal.last_production_day
    con = duckdb.connect(str(paths.duckdb), read_only=True)
    try:
        faults = {f.id: f.verify(con, cal) for f in spec.faults}
        faults |= {f"decoy:{d.id}": d.verify(con, cal) for d in spec.decoys}
        healthy = health.checks(con, cal, manifest["model"]["holdout_auc"], healthy_until)
        brief = claims.checks(con, cal, spec.brief.claims)
    finally:
        con.close()
    return Verification(fault_checks=faults, health_checks=healthy, brief_checks=brief)
