"""`sandbox verify`: run every planted fault's verification and the healthy-world checks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

from sandbox import scenario as scenario_mod
from sandbox.faults.base import Check
from sandbox.layout import WorldPaths, read_manifest
from sandbox.world import health


@dataclass
class Verification:
    fault_checks: dict[str, list[Check]]
    health_checks: list[Check]

    @property
    def passed(self) -> bool:
        every = [c for cs in self.fault_checks.values() for c in cs] + self.health_checks
        return all(c.passed for c in every)

    def as_json(self) -> dict[str, object]:
        return {
            "passed": self.passed,
            "faults": {k: [c.model_dump() for c in v] for k, v in self.fault_checks.items()},
            "health": [c.model_dump() for c in self.health_checks],
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
    finally:
        con.close()
    return Verification(fault_checks=faults, health_checks=healthy)
