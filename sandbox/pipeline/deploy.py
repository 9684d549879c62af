"""What a built world hands to the running stack: the model server's deployment record and the
online store's materializations for the days the stack serves live.

The simulation decides both (which version the servers load, which threshold they apply, what the
online store holds each morning), so the live services reproduce the world as it was left,
including whatever went wrong in it, instead of re-deriving it from the registry.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import polars as pl
from pydantic import BaseModel

from sandbox.pipeline.features import MODEL_FEATURES

MODEL_SERVER_RECORD = "model-server.json"
SNAPSHOT_PREFIX = "materialized-"


class ModelDeployment(BaseModel):
    """The model server's deployment record, as a config management system would keep it."""

    model_name: str
    model_version: str
    model_uri: (
        str  # `models:/NAME@champion` when the servers follow the alias, else a pinned version
    )
    threshold: float
    features: list[str]
    deployed_at: dt.datetime


def write_model_deployment(directory: Path, deployment: ModelDeployment) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MODEL_SERVER_RECORD).write_text(deployment.model_dump_json(indent=2) + "\n")


def read_model_deployment(directory: Path) -> ModelDeployment:
    return ModelDeployment.model_validate(json.loads((directory / MODEL_SERVER_RECORD).read_text()))


def write_online_snapshot(directory: Path, online: pl.DataFrame) -> Path:
    """One materialization of the online store (one row per customer), named by its load time."""
    directory.mkdir(parents=True, exist_ok=True)
    loaded = online["materialized_at"].max()
    path = directory / f"{SNAPSHOT_PREFIX}{loaded:%Y-%m-%dT%H%M}.parquet"
    online.select(
        "customer_id", *MODEL_FEATURES, "event_timestamp", "materialized_at"
    ).write_parquet(path)
    return path


def online_snapshots(directory: Path) -> list[tuple[dt.datetime, Path]]:
    """Every materialization on disk with its load time, oldest first."""
    found = []
    for path in directory.glob(f"{SNAPSHOT_PREFIX}*.parquet"):
        stamp = path.stem.removeprefix(SNAPSHOT_PREFIX)
        found.append((dt.datetime.strptime(stamp, "%Y-%m-%dT%H%M"), path))
    return sorted(found)
