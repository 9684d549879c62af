"""A run logged through MLflow, as the registry keeps it: the production job's identity and the
simulated times, and artifact locations inside the world's own directory."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml
from sklearn.dummy import DummyClassifier

from sandbox.pipeline import registry, registry_stamp

FINISHED = dt.datetime(2026, 3, 1, 16, 0)
# What MLflow would record from a build machine's git checkout.
CHECKOUT = {
    "mlflow.source.git.commit": "0a1b2c3d4e5f",
    "mlflow.source.git.repoURL": "git@builder.example:someone/sandbox.git",
}


def _ms(when: dt.datetime) -> int:
    return int(when.replace(tzinfo=dt.UTC).timestamp() * 1000)


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One training run with a metric, an artifact and a registered model, then sealed."""
    mlflow_dir = tmp_path_factory.mktemp("built") / "candidate" / "mlflow"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_RUN_CONTEXT", json.dumps(CHECKOUT))
        mlflow = registry.connect(mlflow_dir, "churn-model-training")
        with registry.job_run(
            mlflow, mlflow_dir, "churn-gbm-20260301", registry_stamp.TRAINING_JOB, FINISHED
        ):
            mlflow.log_metric("holdout_auc", 0.71)
            mlflow.log_dict({"tenure_days": 0.1}, "feature_importances.json")
            with registry.quiet():
                mlflow.sklearn.log_model(
                    DummyClassifier().fit([[0.0], [1.0]], [0, 1]),
                    name="model",
                    registered_model_name=registry.CHURN_MODEL,
                    pip_requirements=registry.pip_requirements(),
                )
    registry_stamp.seal(mlflow_dir)
    return mlflow_dir


def _rows(mlflow_dir: Path, sql: str) -> list[tuple]:
    db = sqlite3.connect(f"file:{mlflow_dir / 'mlflow.db'}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def test_runs_and_models_name_the_job_not_the_machine(logged: Path) -> None:
    job = registry_stamp.TRAINING_JOB.tags()
    run_tags = dict(_rows(logged, "SELECT key, value FROM tags WHERE key LIKE 'mlflow.%'"))
    assert run_tags == {**job, "mlflow.runName": "churn-gbm-20260301"}
    model_tags = dict(
        _rows(
            logged,
            "SELECT tag_key, tag_value FROM logged_model_tags "
            "WHERE tag_key != 'mlflow.modelVersions'",
        )
    )
    assert model_tags == job
    assert _rows(logged, "SELECT user_id, source_version FROM runs") == [("svc-ml-pipelines", "")]
    tables = [t for (t,) in _rows(logged, "SELECT name FROM sqlite_master WHERE type = 'table'")]
    texts = [
        v
        for t in tables
        for row in _rows(logged, f'SELECT * FROM "{t}"')
        for v in row
        if isinstance(v, str)
    ]
    raw = (logged / "mlflow.db").read_bytes()
    for detail in [*CHECKOUT.values(), str(logged.parent.parent)]:
        assert not [t for t in texts if detail in t], detail
        assert detail.encode() not in raw, detail  # not even in the file's free pages


def test_the_run_and_what_it_registered_carry_simulated_times(logged: Path) -> None:
    [(start, end)] = _rows(logged, "SELECT start_time, end_time FROM runs")
    assert end == _ms(FINISHED) and start == end - registry_stamp.RUN_SECONDS * 1000
    metrics = _rows(
        logged, "SELECT timestamp FROM metrics UNION SELECT timestamp FROM latest_metrics"
    )
    [(version_created, version_updated)] = _rows(
        logged, "SELECT creation_time, last_updated_time FROM model_versions"
    )
    assert all(start < ms < version_created for (ms,) in metrics)
    assert start < version_created == version_updated < end
    assert _rows(logged, "SELECT creation_time, last_updated_time FROM registered_models") == [
        (version_created, version_updated)
    ]
    [(created, updated)] = _rows(
        logged, "SELECT creation_timestamp_ms, last_updated_timestamp_ms FROM logged_models"
    )
    assert start < created <= updated < version_created
    experiments = _rows(logged, "SELECT creation_time, last_update_time FROM experiments")
    assert set(experiments) == {(start, start)}


def test_artifact_locations_are_relative_to_the_world(logged: Path, tmp_path: Path) -> None:
    locations = _rows(
        logged,
        "SELECT artifact_location FROM experiments UNION ALL SELECT artifact_uri FROM runs "
        "UNION ALL SELECT artifact_location FROM logged_models "
        "UNION ALL SELECT storage_location FROM model_versions",
    )
    assert len(locations) == 5
    assert all(loc.startswith(registry_stamp.PROXIED) for (loc,) in locations), locations
    [(model_location, created)] = _rows(
        logged, "SELECT artifact_location, creation_timestamp_ms FROM logged_models"
    )
    moved = tmp_path / "moved" / "mlflow"
    shutil.copytree(logged, moved)
    folder = registry.local_artifacts(moved, model_location)
    spec = yaml.safe_load((folder / "MLmodel").read_text())
    assert spec["artifact_path"] == model_location
    created_at = dt.datetime.fromisoformat(spec["utc_time_created"])
    assert _ms(created_at) == created
    model = registry.load_model(moved, f"models:/{registry.CHURN_MODEL}/1")
    assert model.predict([[1.0]]).tolist() in ([0], [1])
