"""The registry as production would have left it, not as the build machine wrote it.

MLflow stamps what it records with the build's wall clock, user, command line, git checkout and
absolute paths; the candidate reads all of it in the MLflow UI. A run is restamped once it has
ended: its times follow the simulated calendar, its identity is the production job's. Once the
build's last run is in, `seal` derives the remaining times from the runs' and writes every
artifact location in MLflow's proxied form, `mlflow-artifacts:/<path under artifacts/>`: the
MLflow UI serves those from the world's own `artifacts/` (`--serve-artifacts`), the serving
processes resolve them the same way, and the world directory can be moved.

Every value written here derives from the simulated times, so the same world gets the same
records.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

PROXIED = "mlflow-artifacts:/"
MLMODEL_FILE = "MLmodel"
# A run's records, in the order MLflow writes them: seconds after the run started.
RUN_SECONDS = 60
METRICS_AT = 20
MODEL_LOGGED_AT = 35
MODEL_READY_AT = 50
VERSION_AT = 55
# Columns that hold an artifact location.
LOCATIONS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
)


@dataclass(frozen=True)
class Job:
    """Who a run says it was: the scheduled job that ran it, under the pipelines' account."""

    name: str
    user: str = "svc-ml-pipelines"

    def tags(self) -> dict[str, str]:
        return {
            "mlflow.user": self.user,
            "mlflow.source.name": self.name,
            "mlflow.source.type": "JOB",
        }


TRAINING_JOB = Job("train_churn_model")
ENCODER_JOB = Job("fit_ticket_encoder")


def _host_tags(key: str) -> str:
    """The condition on a tag table's `key` column that picks the tags MLflow fills in from the
    machine and process a run or model was logged from."""
    return f"({key} = 'mlflow.user' OR {key} LIKE 'mlflow.source.%' OR {key} = 'mlflow.gitRepoURL')"


def millis(when: dt.datetime) -> int:
    """Epoch milliseconds of a simulated time; the calendar's naive times are UTC."""
    return int(when.replace(tzinfo=dt.UTC).timestamp() * 1000)


@contextlib.contextmanager
def _store(mlflow_dir: Path) -> Iterator[sqlite3.Connection]:
    # One transaction: a half-stamped run is never left behind.
    with contextlib.closing(sqlite3.connect(mlflow_dir / "mlflow.db", timeout=30)) as con, con:
        yield con


def stamp_run(mlflow_dir: Path, run_id: str, job: Job, finished_at: dt.datetime) -> None:
    """Give an ended run, the models it logged and the versions registered from them the times
    of a job that finished at `finished_at`, and the job's identity instead of the build's."""
    start = millis(finished_at) - RUN_SECONDS * 1000
    end = start + RUN_SECONDS * 1000
    tags = list(job.tags().items())
    with _store(mlflow_dir) as con:
        con.execute(
            "UPDATE runs SET start_time = ?, end_time = ?, user_id = ?, source_type = 'JOB', "
            "source_name = ?, source_version = '', entry_point_name = '' WHERE run_uuid = ?",
            [start, end, job.user, job.name, run_id],
        )
        con.execute(f"DELETE FROM tags WHERE run_uuid = ? AND {_host_tags('key')}", [run_id])
        con.executemany(
            "INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?)",
            [(k, v, run_id) for k, v in tags],
        )
        metrics_at = start + METRICS_AT * 1000
        con.execute("UPDATE metrics SET timestamp = ? WHERE run_uuid = ?", [metrics_at, run_id])
        con.execute(
            "UPDATE latest_metrics SET timestamp = ? WHERE run_uuid = ?", [metrics_at, run_id]
        )
        con.execute(
            "UPDATE logged_model_metrics SET metric_timestamp_ms = ? WHERE run_id = ?",
            [metrics_at, run_id],
        )
        con.execute(
            "UPDATE logged_models SET creation_timestamp_ms = ?, last_updated_timestamp_ms = ? "
            "WHERE source_run_id = ?",
            [start + MODEL_LOGGED_AT * 1000, start + MODEL_READY_AT * 1000, run_id],
        )
        models = con.execute(
            "SELECT model_id, experiment_id FROM logged_models WHERE source_run_id = ?", [run_id]
        ).fetchall()
        for model_id, experiment_id in models:
            con.execute(
                f"DELETE FROM logged_model_tags WHERE model_id = ? AND {_host_tags('tag_key')}",
                [model_id],
            )
            con.executemany(
                "INSERT INTO logged_model_tags (model_id, experiment_id, tag_key, tag_value) "
                "VALUES (?, ?, ?, ?)",
                [(model_id, experiment_id, k, v) for k, v in tags],
            )
        version_at = start + VERSION_AT * 1000
        con.execute(
            "UPDATE model_versions SET creation_time = ?, last_updated_time = ? WHERE run_id = ?",
            [version_at, version_at, run_id],
        )


def seal(mlflow_dir: Path) -> None:
    """After the build's last run: times that follow from the runs', and every artifact location
    in the proxied form, its `MLmodel` files included."""
    artifacts = (mlflow_dir / "artifacts").resolve()
    built = artifacts.as_uri() + "/"
    with _store(mlflow_dir) as con:
        con.execute(
            "UPDATE registered_models SET "
            "creation_time = (SELECT min(creation_time) FROM model_versions v "
            "  WHERE v.name = registered_models.name), "
            "last_updated_time = (SELECT max(last_updated_time) FROM model_versions v "
            "  WHERE v.name = registered_models.name) "
            "WHERE name IN (SELECT name FROM model_versions)"
        )
        # An experiment appears with its first run; MLflow's Default one with the first of all.
        con.execute(
            "UPDATE experiments SET creation_time = coalesce("
            "  (SELECT min(start_time) FROM runs r WHERE r.experiment_id = experiments.experiment_id),"
            "  (SELECT min(start_time) FROM runs)) "
            "WHERE EXISTS (SELECT 1 FROM runs)"
        )
        con.execute("UPDATE experiments SET last_update_time = creation_time")
        for table, column in LOCATIONS:
            con.execute(
                f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                f"WHERE substr({column}, 1, ?) = ?",
                [PROXIED, len(built) + 1, len(built), built],
            )
        # MLflow's Default experiment (no runs) points into the build's working directory; a
        # server run with `--serve-artifacts` gives it this location.
        con.execute(
            "UPDATE experiments SET artifact_location = ? || experiment_id "
            "WHERE substr(artifact_location, 1, ?) != ?",
            [PROXIED, len(PROXIED), PROXIED],
        )
        models = con.execute(
            "SELECT artifact_location, creation_timestamp_ms FROM logged_models"
        ).fetchall()
    # Rewritten values would otherwise linger in the file's free pages.
    with contextlib.closing(sqlite3.connect(mlflow_dir / "mlflow.db", timeout=30)) as con:
        con.execute("VACUUM")
    for location, created in models:
        if location.startswith(PROXIED):
            _restamp_mlmodel(artifacts / location.removeprefix(PROXIED), location, created)


def _restamp_mlmodel(directory: Path, location: str, created_ms: int) -> None:
    """`MLmodel` records where the model was logged to and when, from the build machine."""
    path = directory / MLMODEL_FILE
    if not path.is_file():
        return
    spec = yaml.safe_load(path.read_text())
    spec["artifact_path"] = location
    created = dt.datetime.fromtimestamp(created_ms / 1000, dt.UTC).replace(tzinfo=None)
    spec["utc_time_created"] = str(created)
    # As MLflow writes it (`Model.to_yaml`), so the file reads the same in the UI.
    path.write_text(yaml.safe_dump(spec, default_flow_style=False))
