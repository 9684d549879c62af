"""Where things live in a world directory, and which half of it the candidate may see.

DIR/manifest.json           written last: a world without it is incomplete
DIR/candidate/              everything the candidate's tools may read
    world.duckdb            raw tables, feature store, predictions, logs, metrics, ops
    mlflow/                 tracking store + model registry (sqlite) and artifacts
    indexes/                the FAISS index and its build metadata
    deploy/                 what the model servers load (deployment record)
    online-store/           the online store's materializations for the days served live
    reports/                drift reports rendered on first view
    logs/                   structured JSON logs, one file per service
DIR/interviewer/            never served to a candidate
    scenario.toml           the scenario as given
    answer_key.json         per planted fault: root cause, chain, evidence, fixes, probes
    truth.duckdb            the simulation's latent state
DIR/run/                    the running stack's state: clock, telemetry spool (`sandbox up`)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.difficulty import Tier

MANIFEST = "manifest.json"


def user_cache() -> Path:
    """This user's cache for the project (`$XDG_CACHE_HOME`, else `~/.cache`): what is costly
    to make and the same on every run, never a world's content."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ml-incident-sandbox"


@dataclass(frozen=True)
class WorldPaths:
    root: Path

    @property
    def candidate(self) -> Path:
        return self.root / "candidate"

    @property
    def interviewer(self) -> Path:
        return self.root / "interviewer"

    @property
    def duckdb(self) -> Path:
        return self.candidate / "world.duckdb"

    @property
    def mlflow(self) -> Path:
        return self.candidate / "mlflow"

    @property
    def indexes(self) -> Path:
        return self.candidate / "indexes"

    @property
    def deploy(self) -> Path:
        return self.candidate / "deploy"

    @property
    def online_store(self) -> Path:
        return self.candidate / "online-store"

    @property
    def reports(self) -> Path:
        return self.candidate / "reports"

    @property
    def logs(self) -> Path:
        return self.candidate / "logs"

    @property
    def scenario(self) -> Path:
        return self.interviewer / "scenario.toml"

    @property
    def answer_key(self) -> Path:
        return self.interviewer / "answer_key.json"

    @property
    def truth(self) -> Path:
        return self.interviewer / "truth.duckdb"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    def make(self) -> None:
        for d in (
            self.candidate,
            self.interviewer,
            self.mlflow,
            self.indexes,
            self.reports,
            self.logs,
        ):
            d.mkdir(parents=True, exist_ok=True)


class IncompleteWorld(RuntimeError):
    pass


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest of a completely built world, or IncompleteWorld naming what is wrong."""
    path = WorldPaths(Path(root)).manifest
    if not path.is_file():
        raise IncompleteWorld(f"{root}: no {MANIFEST}; not a world, or its build did not finish")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, OSError):
        raise IncompleteWorld(
            f"{root}: its {MANIFEST} is unreadable; the build did not finish"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("complete") is not True:
        raise IncompleteWorld(f"{root}: the build did not finish")
    return manifest


def world_difficulty(root: Path) -> Tier:
    """The difficulty a complete world was built at. A world built before difficulty tiers
    existed shows everything, as guided does."""
    tier: Tier = read_manifest(root).get("difficulty", "guided")
    return tier
