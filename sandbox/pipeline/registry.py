"""The world's MLflow tracking store and model registry (sqlite, inside the world directory).

Runs are logged through MLflow and then restamped (`registry_stamp`): their times follow the
simulated calendar and their artifact locations are relative to the world's `artifacts/`. MLflow's
own run and model ids are random; none of the registry enters the world's content hash.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import logging
import os
import shutil
import sqlite3
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sandbox.layout import user_cache
from sandbox.pipeline import compiled, registry_stamp
from sandbox.schema import SERVED_ALIAS

CHURN_MODEL = "churn-model"
TICKET_ENCODER = "ticket-encoder"
CHAMPION = SERVED_ALIAS
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
    _new_store(mlflow_dir)
    mlflow.set_tracking_uri(tracking_uri(mlflow_dir))
    mlflow.set_registry_uri(tracking_uri(mlflow_dir))
    if mlflow.get_experiment_by_name(experiment) is None:
        # Logging needs a location MLflow can write to; `registry_stamp.seal` makes it relative.
        mlflow.create_experiment(
            experiment, artifact_location=(mlflow_dir / "artifacts" / experiment).resolve().as_uri()
        )
    mlflow.set_experiment(experiment)
    return mlflow


def _new_store(mlflow_dir: Path) -> None:
    """A new world's store starts as a copy of an empty one made by this MLflow version.

    MLflow makes a new sqlite store by running every schema migration since its first release,
    about 4 s on the critical path of each build; the copy takes milliseconds. The empty store
    holds only the schema and MLflow's Default experiment, whose time and location `seal`
    rewrites like the rest. Where the cache cannot be written, MLflow makes the store itself."""
    store = mlflow_dir / "mlflow.db"
    if store.exists():
        return
    from importlib.metadata import version

    try:
        template = user_cache() / "mlflow-stores" / f"mlflow-{version('mlflow')}.db"
        if not template.is_file():
            _make_empty_store(template)
        shutil.copyfile(template, store)
    except Exception:  # a shortcut only: no home, a full disk, a locked file in the cache
        store.unlink(missing_ok=True)


def _make_empty_store(path: Path) -> None:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path.parent.mkdir(parents=True, exist_ok=True)
    # Made beside its place and moved in whole: two builds at once never see half a store.
    with tempfile.TemporaryDirectory(dir=path.parent) as work:
        made = Path(work) / path.name
        SqlAlchemyStore(f"sqlite:///{made}", work).engine.dispose()
        os.replace(made, path)


@contextlib.contextmanager
def job_run(
    mlflow: Any,
    mlflow_dir: Path,
    run_name: str,
    job: registry_stamp.Job,
    finished_at: dt.datetime,
) -> Iterator[Any]:
    """An MLflow run of `job` that finished at `finished_at` (simulated time); what it logged
    and registered is restamped when it ends."""
    with mlflow.start_run(run_name=run_name) as run:
        yield run
    registry_stamp.stamp_run(mlflow_dir, run.info.run_id, job, finished_at)


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
    """Load a scikit-learn model from the world's registry, e.g. `models:/churn-model@champion`
    or `models:/churn-model/3`.

    Read straight from the registry's tables and the model's skops file, with no MLflow import,
    and the recorded locations are relative to the world's `artifacts/`, so a copied world reads
    its own files. The registry belongs to the world the build wrote, so deserializing its
    models is trusted.
    """
    import skops.io

    version = model_version(mlflow_dir, uri)
    path = local_artifacts(mlflow_dir, version["storage_location"]) / SKOPS_FILE
    return skops.io.load(path, trusted=SKOPS_TRUSTED_TYPES)


def load_serving(mlflow_dir: Path, uri: str, kind: type[compiled.C]) -> compiled.C:
    """The serving form of a registered model (`compiled`), found as `load_model` finds the
    estimator: what the live services load, without scikit-learn."""
    path = _serving_path(mlflow_dir, model_version(mlflow_dir, uri))
    if not path.is_file():
        raise LookupError(
            f"{uri} has no serving form ({SERVING_FILE}): the world was built by an older "
            "version; rebuild it with `sandbox build --force`"
        )
    return compiled.load(path, kind)


def lacking_serving_forms(mlflow_dir: Path) -> list[str]:
    """The registered model versions without a serving form: a world built before they were
    logged, which the live services cannot load."""
    return [
        f"models:/{name}/{version['version']}"
        for name in (CHURN_MODEL, TICKET_ENCODER)
        for version in model_versions(mlflow_dir, name)
        if not _serving_path(mlflow_dir, version).is_file()
    ]


def _serving_path(mlflow_dir: Path, version: dict[str, Any]) -> Path:
    return local_artifacts(mlflow_dir, version["storage_location"]) / SERVING_FILE


@contextlib.contextmanager
def serving_form(estimator: Any) -> Iterator[list[str]]:
    """The `extra_files` that log an estimator's serving form beside it in the registry."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / compiled.FILE
        compiled.save(compiled.compile_estimator(estimator), path)
        yield [str(path)]


SKOPS_FILE = "model.skops"
SERVING_FILE = f"extra_files/{compiled.FILE}"  # where MLflow keeps a model's extra files


def model_version(mlflow_dir: Path, uri: str) -> dict[str, Any]:
    """The registry row `uri` names, with its tags; LookupError when there is none."""
    if not uri.startswith("models:/"):
        raise LookupError(f"not a registry URI: {uri}")
    ref = uri.removeprefix("models:/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        where, args = "a.name = ? AND a.alias = ?", [name, alias]
        join = "JOIN registered_model_aliases a ON a.name = mv.name AND a.version = mv.version"
    else:
        name, number = ref.rsplit("/", 1)
        where, args, join = "mv.name = ? AND mv.version = ?", [name, int(number)], ""
    con = sqlite3.connect(f"file:{mlflow_dir / 'mlflow.db'}?mode=ro", uri=True)
    try:
        row = con.execute(
            f"SELECT mv.name, mv.version, mv.storage_location, mv.run_id FROM model_versions mv "
            f"{join} WHERE {where}",
            args,
        ).fetchone()
        if row is None:
            raise LookupError(f"the registry has no {uri}")
        tags = dict(
            con.execute(
                "SELECT key, value FROM model_version_tags WHERE name = ? AND version = ?",
                [row[0], row[1]],
            ).fetchall()
        )
    finally:
        con.close()
    return {
        "name": row[0],
        "version": str(row[1]),
        "storage_location": row[2],
        "run_id": row[3],
        "tags": tags,
    }


def model_versions(mlflow_dir: Path, name: str) -> list[dict[str, Any]]:
    """Every registered version of `name`, oldest first, with its tags."""
    con = sqlite3.connect(f"file:{mlflow_dir / 'mlflow.db'}?mode=ro", uri=True)
    try:
        numbers = [
            v
            for (v,) in con.execute(
                "SELECT version FROM model_versions WHERE name = ? ORDER BY version", [name]
            ).fetchall()
        ]
    finally:
        con.close()
    return [model_version(mlflow_dir, f"models:/{name}/{n}") for n in numbers]


def run_param(mlflow_dir: Path, run_id: str, key: str) -> str | None:
    con = sqlite3.connect(f"file:{mlflow_dir / 'mlflow.db'}?mode=ro", uri=True)
    try:
        row = con.execute(
            "SELECT value FROM params WHERE run_uuid = ? AND key = ?", [run_id, key]
        ).fetchone()
    finally:
        con.close()
    return row[0] if row else None


def local_artifacts(mlflow_dir: Path, location: str) -> Path:
    """Where a recorded artifact location is. MLflow's proxied form (`mlflow-artifacts:/<path>`)
    and relative paths are inside this world's own `artifacts/`, wherever the world is now, as the
    MLflow UI serves them; a `file:` URI or an absolute path is taken as it is."""
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme == "mlflow-artifacts":
        return mlflow_dir / "artifacts" / urllib.parse.unquote(parsed.path).lstrip("/")
    if parsed.scheme == "file":
        return Path(urllib.parse.unquote(parsed.path))
    path = Path(location)
    return path if path.is_absolute() else mlflow_dir / "artifacts" / path
