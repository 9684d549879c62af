"""Which churn-model version the model server serves, and where the registry's aliases point, once
the ops console's deployment actions are in effect.

The world leaves a deployment (`deploy.ModelDeployment`: a version, the server's threshold, and
whether the servers follow the champion alias or a pinned version), the registry's aliases and the
servers' deploy history (their `model_loaded` lines). The applied actions change that in the order
they take effect, as a release team's would:

- `pin-served-version` loads one version and stops following the alias;
- `move-alias` points an alias at another version; moving champion changes what a server that
  follows the alias loads;
- `rollback-deploy` goes back to the deployment before the current one, pinned when that is
  another version (the alias still points at the version rolled away from). A rollout of the
  servers' code or configuration is a deployment too (the planted story's `rollouts`, known to
  the deploy system whether or not the changelog tells of them): going back past one serves the
  configuration from before it, which the serving hooks see as `HookContext.config_as_of`, with
  the same version, still following the alias if the servers did;
- `set-decision-threshold` changes the threshold of the deployment in place;
- `retrain` registers a new version (the one after the latest registered or retrained) and
  loads it, pinned, with the threshold the servers use now (the model server trains it).

A version the servers served before comes back with the threshold it was served with (its
deployment config); one never served keeps the threshold the servers use now. The registry file is
never written: the candidate's registry is read-only, so a moved alias lives in the overrides file
and is laid over what the registry answers (`overlay_registered_model`, `overlay_model_version`).
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import duckdb

from sandbox.actions.catalog import (
    MODEL_SERVER,
    MOVE_ALIAS,
    PIN_VERSION,
    RETRAIN,
    ROLLBACK,
    SET_THRESHOLD,
    rolls_back,
)
from sandbox.actions.overrides import Applied
from sandbox.layout import WorldPaths
from sandbox.pipeline import deploy, registry

CHAMPION = registry.CHAMPION
MODEL = registry.CHURN_MODEL
DEPLOYMENT_ACTIONS = (PIN_VERSION, MOVE_ALIAS, ROLLBACK, SET_THRESHOLD, RETRAIN)


# The configuration of a server deployed before any rollout the world records.
FIRST_CONFIG = dt.datetime.min
# The model server's configuration over time: (from, `HookContext.config_as_of`), oldest first.
Periods = list[tuple[dt.datetime, dt.datetime | None]]
AS_LEFT: Periods = [(FIRST_CONFIG, None)]  # no action changed it


class Deployed(NamedTuple):
    """One deployment of the model server: a model version with its threshold, and its code and
    configuration as rolled out at `config_as_of` (a rollout of those alone is a deployment
    too, with the version and threshold before it)."""

    version: str
    threshold: float
    config_as_of: dt.datetime = FIRST_CONFIG


@dataclass(frozen=True)
class Deployment:
    """What the model server serves at one time."""

    version: str
    threshold: float
    follows_alias: bool  # loads whatever champion points at (else a pinned version)
    aliases: dict[str, str]  # the churn model's aliases in effect, alias -> version
    # Each deployment, oldest first; the last is the one served.
    history: tuple[Deployed, ...] = ()
    since: dt.datetime | None = None  # when the latest change took effect (None: as left)
    changed: bool = False  # whether any applied action is in effect
    latest: int = 0  # the newest version number registered or retrained so far

    @property
    def config_as_of(self) -> dt.datetime | None:
        """The rollout time of the code and configuration served, once an applied action is in
        effect (None: as the world left it; see `HookContext.config_as_of`)."""
        if not self.changed or not self.history:
            return None
        return self.history[-1].config_as_of

    @property
    def model_uri(self) -> str:
        return (
            f"models:/{MODEL}@{CHAMPION}"
            if self.follows_alias
            else f"models:/{MODEL}/{self.version}"
        )

    def _deploy(self, version: str, follows_alias: bool, at: dt.datetime) -> Deployment:
        if version == self.version:
            return replace(self, follows_alias=follows_alias, since=at)
        threshold = next(
            (d.threshold for d in reversed(self.history) if d.version == version), self.threshold
        )
        # A new model version goes out with the code and configuration the servers run now.
        config = self.history[-1].config_as_of if self.history else FIRST_CONFIG
        return replace(
            self,
            version=version,
            threshold=threshold,
            follows_alias=follows_alias,
            history=(*self.history, Deployed(version, threshold, config)),
            since=at,
        )

    def apply(self, entry: Applied) -> Deployment:
        """This deployment with one more action in effect (actions of other kinds change nothing)."""
        at, params = entry.effective_at, entry.params
        if entry.action == ROLLBACK and not rolls_back(entry.action, params, MODEL_SERVER):
            return self  # another service's rollback
        state = replace(self, changed=True) if entry.action in DEPLOYMENT_ACTIONS else self
        if entry.action == PIN_VERSION:
            return state._deploy(str(params["version"]), False, at)
        if entry.action == MOVE_ALIAS:
            alias, version = str(params.get("alias", CHAMPION)), str(params["version"])
            state = replace(state, aliases={**state.aliases, alias: version})
            if alias == CHAMPION and state.follows_alias:
                return state._deploy(version, True, at)
            return state
        if entry.action == ROLLBACK:
            if len(state.history) < 2:
                return state  # nothing before the current deployment: it stays
            history = state.history[:-1]
            version, threshold, _ = history[-1]
            # Back to another version: pinned, as the alias still names the one rolled away from.
            # Back past a rollout of code or configuration alone: the version is the one the
            # alias names, so a server that followed it still does.
            follows = state.follows_alias and version == state.version
            return replace(
                state,
                version=version,
                threshold=threshold,
                follows_alias=follows,
                history=history,
                since=at,
            )
        if entry.action == RETRAIN:
            version = state.latest + 1
            return replace(state, latest=version)._deploy(str(version), False, at)
        if entry.action == SET_THRESHOLD:
            threshold = float(params["threshold"])
            last = state.history[-1] if state.history else Deployed(state.version, threshold)
            history = (*state.history[:-1], last._replace(threshold=threshold))
            return replace(state, threshold=threshold, history=history)
        return state


def in_effect(base: Deployment, entries: Iterable[Applied], now: dt.datetime) -> Deployment:
    """`base` with every applied action in effect at `now`, in the order they took effect."""
    due = sorted((e for e in entries if e.effective_at <= now), key=lambda e: e.effective_at)
    state = base
    for entry in due:
        state = state.apply(entry)
    return state


def retrain_versions(latest: int, entries: Iterable[Applied]) -> dict[str, str]:
    """The version each applied retrain registers, by change id: numbered after `latest` in the
    order they take effect (as `in_effect` applies them), whether or not they are in effect yet."""
    retrains = sorted((e for e in entries if e.action == RETRAIN), key=lambda e: e.effective_at)
    return {e.id: str(latest + i) for i, e in enumerate(retrains, start=1)}


def retrained(latest: int, entries: Iterable[Applied], now: dt.datetime) -> set[str]:
    """The versions applied retrains have registered by `now` (each once it is in effect): the
    deployment actions may name them as they name the registry's."""
    entries = list(entries)
    done = {e.id for e in entries if e.action == RETRAIN and e.effective_at <= now}
    return {v for change, v in retrain_versions(latest, entries).items() if change in done}


def latest_version(versions: Iterable[str]) -> int:
    """The newest registered version number (0 for none)."""
    return max((int(v) for v in versions), default=0)


@dataclass
class Registry:
    """The churn model's registered versions and aliases, read once from the world's registry."""

    versions: dict[str, dict[str, Any]] = field(default_factory=dict)  # version -> row with tags
    aliases: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, mlflow_dir: Path) -> Registry:
        versions = {v["version"]: v for v in registry.model_versions(mlflow_dir, MODEL)}
        con = sqlite3.connect(f"file:{mlflow_dir / 'mlflow.db'}?mode=ro", uri=True)
        try:
            rows = con.execute(
                "SELECT alias, version FROM registered_model_aliases WHERE name = ?", [MODEL]
            ).fetchall()
        finally:
            con.close()
        return cls(versions, {alias: str(version) for alias, version in rows})

    def features(self, mlflow_dir: Path, version: str) -> list[str] | None:
        """The inputs the version was trained on, in order (from its training run)."""
        run_id = self.versions[version]["run_id"]
        found = registry.run_param(mlflow_dir, run_id, "features") if run_id else None
        return found.split(",") if found else None


def deploy_history(world_db: Path, rollouts: Iterable[dt.datetime] = ()) -> list[Deployed]:
    """The servers' deployments, oldest first: the model versions their logs record loading, and
    the `rollouts` of their code or configuration (which the deploy system knows, whether or not
    anyone wrote them down), each with the version and threshold served before it."""
    with duckdb.connect(str(world_db), read_only=True) as con:
        rows = con.execute(
            "SELECT ts, attrs FROM telemetry.logs WHERE service = 'model-server' "
            "AND event = 'model_loaded' ORDER BY ts"
        ).fetchall()
    loads = [(ts, json.loads(attrs)) for ts, attrs in rows]
    steps = sorted(
        [*((ts, loaded) for ts, loaded in loads), *((at, None) for at in rollouts)],
        key=lambda step: step[0],
    )
    history: list[Deployed] = []
    config = FIRST_CONFIG
    for at, loaded in steps:
        if loaded is None:  # a rollout: what was served, with new code or configuration
            config = at
            if history:
                history.append(history[-1]._replace(config_as_of=config))
            continue
        entry = Deployed(str(loaded["model_version"]), float(loaded["threshold"]), config)
        if not history or history[-1].version != entry.version:  # not a restart
            history.append(entry)
    return history


def baseline(
    record: deploy.ModelDeployment,
    history: Iterable[tuple[str, float] | Deployed],
    aliases: dict[str, str],
    latest: int = 0,
) -> Deployment:
    """What the world left deployed, before any action."""
    steps = [h if isinstance(h, Deployed) else Deployed(*h) for h in history]
    config = steps[-1].config_as_of if steps else FIRST_CONFIG
    served = Deployed(record.model_version, record.threshold, config)
    if not steps or steps[-1].version != record.model_version:
        steps = [*steps, served]
    else:
        steps = [*steps[:-1], served]
    return Deployment(
        version=record.model_version,
        threshold=record.threshold,
        follows_alias="@" in record.model_uri,
        aliases=dict(aliases),
        history=tuple(steps),
        latest=max(latest, int(record.model_version)),
    )


def world_baseline(
    world_db: Path, mlflow_dir: Path, deploy_dir: Path, rollouts: Iterable[dt.datetime] = ()
) -> Deployment:
    """What the world left deployed, with the `rollouts` of the servers' code or configuration
    in its history (the same the model server reads, so both count the same deployments back)."""
    found = Registry.read(mlflow_dir)
    return baseline(
        deploy.read_model_deployment(deploy_dir),
        deploy_history(world_db, rollouts),
        found.aliases,
        latest_version(found.versions),
    )


def moved_aliases(base: Deployment, state: Deployment) -> dict[str, str]:
    """The aliases `state` has where `base` had others (or none)."""
    return {a: v for a, v in state.aliases.items() if base.aliases.get(a) != v}


def overlay_registered_model(model: dict[str, Any], moved: dict[str, str]) -> dict[str, Any]:
    """A registry `registered_model` object (MLflow's REST form) with the moved aliases."""
    if model.get("name") != MODEL or not moved:
        return model
    kept = [a for a in model.get("aliases") or [] if a.get("alias") not in moved]
    added = [{"alias": a, "version": v} for a, v in moved.items()]
    out = {**model, "aliases": sorted([*kept, *added], key=lambda a: a["alias"])}
    if "latest_versions" in model:
        out["latest_versions"] = [
            overlay_model_version(v, moved) for v in model["latest_versions"] or []
        ]
    return out


def overlay_model_version(version: dict[str, Any], moved: dict[str, str]) -> dict[str, Any]:
    """A registry `model_version` object with the moved aliases."""
    if version.get("name") != MODEL or not moved:
        return version
    number = str(version.get("version"))
    kept = [a for a in version.get("aliases") or [] if a not in moved]
    added = [a for a, v in moved.items() if v == number]
    return {**version, "aliases": sorted([*kept, *added])}


def overlay_reply(body: dict[str, Any], moved: dict[str, str]) -> dict[str, Any]:
    """Any registry reply (a model, a version, or a list of either) with the moved aliases."""
    out = dict(body)
    if isinstance(out.get("registered_model"), dict):
        out["registered_model"] = overlay_registered_model(out["registered_model"], moved)
    if isinstance(out.get("registered_models"), list):
        out["registered_models"] = [
            overlay_registered_model(m, moved) for m in out["registered_models"]
        ]
    if isinstance(out.get("model_version"), dict):
        out["model_version"] = overlay_model_version(out["model_version"], moved)
    if isinstance(out.get("model_versions"), list):
        out["model_versions"] = [overlay_model_version(v, moved) for v in out["model_versions"]]
    return out


def config_periods(base: Deployment, entries: Iterable[Applied], now: dt.datetime) -> Periods:
    """The model server's code and configuration over time up to `now`, oldest first, as (from,
    `HookContext.config_as_of`): as `base` left it from the start, then a new period from each
    applied action's effective time that changed it (a rollback past a planted rollout)."""
    periods: Periods = [(FIRST_CONFIG, base.config_as_of)]
    due = [e for e in entries if e.effective_at <= now]
    for at in sorted({e.effective_at for e in due}):
        config = in_effect(base, due, at).config_as_of
        if config != periods[-1][1]:
            periods.append((at, config))
    return periods


class ConfigHistory:
    """The model server's configuration periods as the processes beside it see them (the
    gateway's live series, the scheduler's restored points). Its deploy history is read once,
    and only when a planted fault rolls out a change to it and an action has taken effect."""

    def __init__(self, paths: WorldPaths, rollouts: list[dt.datetime]) -> None:
        self.paths = paths
        self.rollouts = rollouts
        self._base: Deployment | None = None

    def periods(self, entries: Iterable[Applied], now: dt.datetime) -> Periods:
        entries = list(entries)
        if not self.rollouts or not any(e.effective_at <= now for e in entries):
            return AS_LEFT
        if self._base is None:  # the same the model server reads
            self._base = world_baseline(
                self.paths.duckdb, self.paths.mlflow, self.paths.deploy, self.rollouts
            )
        return config_periods(self._base, entries, now)
