"""The world's MLflow tracking store and model registry (sqlite, inside the world directory).

MLflow's own run ids and timestamps come from the wall clock; everything about simulated time goes
into tags, and none of it enters the world's content hash.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHURN_MODEL = "churn-model"
TICKET_ENCODER = "ticket-encoder"
CHAMPION = "champion"
# skops refuses types it cannot audit; the world's own gradient-boosted trees are ours to trust.
SKOPS_TRUSTED_TYPES = ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"]


def quiet_mlflow_env() -> None:
    """No usage telemetry (the machines have no network) and no progress bars in build output."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


def pip_requirements() -> list[str]:
    """Pinned explicitly: MLflow's own inference spawns a subprocess per model, seconds each."""
    from importlib.metadata import version

    return [f"scikit-learn=={version('scikit-learn')}", f"numpy=={version('numpy')}"]


def tracking_uri(mlflow_dir: Path) -> str:
    return f"sqlite:///{(mlflow_dir / 'mlflow.db').resolve()}"


def connect(mlflow_dir: Path, experiment: str) -> Any:
    """Point MLflow at the world's store and make sure `experiment` exists; returns the module."""
    quiet_mlflow_env()
    import mlflow  # slow import: only build and registry readers pay it

    # Registration chatter ("Successfully registered model ...") would bury the build's summary;
    # mlflow sets its logger up on import, so this has to come after it.
    logging.getLogger("mlflow").setLevel(logging.ERROR)

    mlflow_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri(mlflow_dir))
    mlflow.set_registry_uri(tracking_uri(mlflow_dir))
    if mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(
            experiment, artifact_location=(mlflow_dir / "artifacts" / experiment).resolve().as_uri()
        )
    mlflow.set_experiment(experiment)
    return mlflow


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence MLflow's registration prints (it writes them to stderr directly); errors still raise."""
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def set_alias(mlflow: Any, name: str, alias: str, version: str, tags: dict[str, str]) -> None:
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(name, alias, version)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def load_model(mlflow_dir: Path, uri: str) -> Any:
    """Load a scikit-learn model from the world's registry, e.g. `models:/churn-model@champion`.

    The registry belongs to the world the build wrote, so deserializing its models is trusted.
    """
    quiet_mlflow_env()
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "true"
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(mlflow_dir))
    mlflow.set_registry_uri(tracking_uri(mlflow_dir))
    return mlflow.sklearn.load_model(uri)
