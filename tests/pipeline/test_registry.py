"""The world's registry as the candidate sees it, and as the serving processes read it.

The serving processes read models without MLflow, from the world's own files wherever the world
was copied to. Everything the registry records follows the simulated calendar and names the
production jobs, never the machine, user or directories the world was built with.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import httpx
import pytest

from sandbox.clock import Calendar
from sandbox.layout import WorldPaths, user_cache
from sandbox.pipeline import registry
from sandbox.scenario import world_spec
from sandbox.services.supervisor import free_port, mlflow_ui
from sandbox.services.topology import MLFLOW_PREFIX
from sandbox.testing import Worlds
from sandbox.world.build import BuildSummary
from tests.http_client import HTTP
from tests.waiting import until

# A world with one release, one with a second encoder version, one with a retrain.
REGISTRY_WORLDS = ["default", "embedding", "leakage"]
TEXT_ARTIFACTS = {".json", ".yaml", ".txt", ""}  # "" is MLmodel
PROXIED = "mlflow-artifacts:/"


def _mlflow_dir(world: BuildSummary) -> Path:
    return world.root / "candidate" / "mlflow"


def _host_details(world_root: Path) -> list[re.Pattern[str]]:
    """The build machine's directories, user and name, as they could leak into text."""
    paths = {str(world_root), str(world_root.resolve()), os.getcwd(), sys.prefix}
    paths |= {sys.base_prefix, str(Path.home()), str(user_cache())}
    names = {getpass.getuser(), socket.gethostname()}
    return [re.compile(re.escape(p)) for p in paths if len(p) > 1] + [
        re.compile(rf"(?<![\w-]){re.escape(n)}(?![\w-])") for n in names if n
    ]


def _leaks(texts: list[str], world_root: Path) -> list[tuple[str, str]]:
    patterns = _host_details(world_root)
    return [(p.pattern, t[:200]) for t in texts for p in patterns if p.search(t)]


def _db_texts(mlflow_dir: Path) -> list[str]:
    db = sqlite3.connect(f"file:{mlflow_dir / 'mlflow.db'}?mode=ro", uri=True)
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    texts = [v for t in tables for row in db.execute(f'SELECT * FROM "{t}"') for v in row]
    db.close()
    return [v for v in texts if isinstance(v, str)]


def _calendar(world: BuildSummary) -> Calendar:
    return world_spec(WorldPaths(world.root).scenario).calendar()


def _utc(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).replace(tzinfo=None)


@pytest.mark.parametrize("world", REGISTRY_WORLDS)
def test_the_registry_shows_no_detail_of_the_build_machine(worlds: Worlds, world: str) -> None:
    built = worlds.get(world)
    mlflow_dir = _mlflow_dir(built)
    texts = _db_texts(mlflow_dir)
    assert len(texts) > 40
    assert not _leaks(texts, built.root)
    files = [
        p
        for p in (mlflow_dir / "artifacts").rglob("*")
        if p.is_file() and p.suffix in TEXT_ARTIFACTS
    ]
    assert any(p.name == "MLmodel" for p in files)
    for path in files:
        assert not _leaks([path.read_text()], built.root), path

    db = sqlite3.connect(f"file:{mlflow_dir / 'mlflow.db'}?mode=ro", uri=True)
    locations = db.execute(
        "SELECT artifact_location FROM experiments UNION ALL SELECT artifact_uri FROM runs "
        "UNION ALL SELECT artifact_location FROM logged_models "
        "UNION ALL SELECT storage_location FROM model_versions"
    ).fetchall()
    assert locations and all(loc.startswith(PROXIED) for (loc,) in locations), locations
    for table, key, value in (
        ("tags", "key", "value"),
        ("logged_model_tags", "tag_key", "tag_value"),
    ):
        identity = db.execute(
            f"SELECT {key}, {value} FROM {table} WHERE {key} LIKE 'mlflow.user' "
            f"OR {key} LIKE 'mlflow.source.%'"
        ).fetchall()
        assert {k for k, _ in identity} == {
            "mlflow.user",
            "mlflow.source.name",
            "mlflow.source.type",
        }
        assert {v for k, v in identity if k == "mlflow.source.type"} == {"JOB"}
    users = {u for (u,) in db.execute("SELECT user_id FROM runs")}
    assert users == {"svc-ml-pipelines"}
    db.close()


@pytest.mark.parametrize("world", REGISTRY_WORLDS)
def test_registry_times_follow_the_simulated_calendar(worlds: Worlds, world: str) -> None:
    built = worlds.get(world)
    cal = _calendar(built)
    first, last = cal.midnight(cal.first_day - 1), cal.midnight(cal.last_visible_day + 1)
    db = sqlite3.connect(f"file:{_mlflow_dir(built) / 'mlflow.db'}?mode=ro", uri=True)
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    stamped = 0
    for table in tables:
        for column, kind in [(r[1], r[2]) for r in db.execute(f'PRAGMA table_info("{table}")')]:
            if kind != "BIGINT" or not re.search("time", column):
                continue
            for (ms,) in db.execute(f'SELECT "{column}" FROM "{table}" WHERE "{column}" > 0'):
                assert first <= _utc(ms) < last, (table, column, _utc(ms))
                stamped += 1
    assert stamped > 20

    runs = db.execute(
        "SELECT r.run_uuid, r.start_time, r.end_time, t.value FROM runs r "
        "JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'training_date'"
    ).fetchall()
    assert len(runs) == db.execute("SELECT count(*) FROM runs").fetchone()[0] >= 2
    for _, start, end, training_date in runs:
        assert _utc(start).date() == dt.date.fromisoformat(training_date)
        assert start < end
    versions = db.execute(
        "SELECT v.name, v.version, v.creation_time, r.start_time, r.end_time FROM model_versions v "
        "JOIN runs r ON r.run_uuid = v.run_id"
    ).fetchall()
    for name, version, created, start, end in versions:
        assert start <= created <= end, (name, version)
    for name, created, updated in db.execute(
        "SELECT name, creation_time, last_updated_time FROM registered_models"
    ):
        own = [v[2] for v in versions if v[0] == name]
        assert (created, updated) == (min(own), max(own)), name
    db.close()


@pytest.mark.parametrize("world", REGISTRY_WORLDS)
def test_each_churn_version_was_registered_when_the_training_log_says(
    worlds: Worlds, world: str
) -> None:
    built = worlds.get(world)
    con = duckdb.connect(str(built.root / "candidate" / "world.duckdb"), read_only=True)
    logged = {
        int(re.search(r"version (\d+) registered", message).group(1)): ts
        for ts, message in con.sql(
            "SELECT ts, message FROM telemetry.logs WHERE event = 'model_registered'"
        ).fetchall()
    }
    con.close()
    db = sqlite3.connect(f"file:{_mlflow_dir(built) / 'mlflow.db'}?mode=ro", uri=True)
    ended = dict(
        db.execute(
            "SELECT v.version, r.end_time FROM model_versions v JOIN runs r ON r.run_uuid = v.run_id "
            "WHERE v.name = ?",
            [registry.CHURN_MODEL],
        ).fetchall()
    )
    db.close()
    assert logged and set(logged) == set(ended)
    for version, ts in logged.items():
        assert _utc(ended[version]) == ts, version


def test_a_copied_world_loads_its_own_model_files(
    faulty_world: BuildSummary, tmp_path: Path
) -> None:
    copy = tmp_path / "mlflow"
    shutil.copytree(_mlflow_dir(faulty_world), copy)
    champion = registry.model_version(copy, "models:/churn-model@champion")
    assert champion["storage_location"].startswith(PROXIED)
    assert registry.local_artifacts(copy, champion["storage_location"]).is_relative_to(copy)
    assert champion["tags"]["decision_threshold"]
    model = registry.load_model(copy, "models:/churn-model@champion")
    pinned = registry.load_model(copy, f"models:/churn-model/{champion['version']}")
    assert type(model) is type(pinned) and hasattr(model, "predict_proba")
    with pytest.raises(LookupError, match="no models:/churn-model@nope"):
        registry.model_version(copy, "models:/churn-model@nope")


def test_a_new_store_starts_from_an_empty_one_made_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first build on a machine has MLflow make an empty store and keeps it; later builds
    start from a copy that MLflow accepts as its own. A cache that cannot be written costs only
    the time."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    stores = []
    for name in ("first", "second"):
        mlflow = registry.connect(tmp_path / name, "churn-model-training")
        with mlflow.start_run(run_name=name):
            mlflow.log_metric("holdout_auc", 0.7)
        stores.append(tmp_path / name / "mlflow.db")
    [template] = (user_cache() / "mlflow-stores").iterdir()
    empty = sqlite3.connect(template)
    default = "SELECT artifact_location FROM experiments WHERE name = 'Default'"
    assert empty.execute("SELECT name FROM experiments").fetchall() == [("Default",)]
    assert empty.execute("SELECT count(*) FROM runs").fetchone() == (0,)
    made_at = empty.execute(default).fetchall()
    empty.close()
    for store in stores:
        db = sqlite3.connect(store)
        assert db.execute(default).fetchall() == made_at  # a copy (`seal` rewrites it later)
        assert db.execute("SELECT name FROM runs").fetchall() in ([("first",)], [("second",)])
        db.close()

    # A file: nothing can be made under it, and MLflow makes the store as it would anyway.
    monkeypatch.setenv("XDG_CACHE_HOME", str(template))
    (tmp_path / "uncached").mkdir()
    registry._new_store(tmp_path / "uncached")
    assert not any((tmp_path / "uncached").iterdir())


def test_artifact_locations_resolve_inside_the_world(tmp_path: Path) -> None:
    here = tmp_path / "mlflow"
    assert registry.local_artifacts(here, "mlflow-artifacts:/exp/models/m-1/artifacts") == (
        here / "artifacts" / "exp" / "models" / "m-1" / "artifacts"
    )
    assert registry.local_artifacts(here, "mlflow-artifacts://registry:5000/exp/a%20b") == (
        here / "artifacts" / "exp" / "a b"
    )
    assert (
        registry.local_artifacts(here, "exp/run/artifacts")
        == here / "artifacts" / "exp/run/artifacts"
    )
    assert registry.local_artifacts(here, "file:///srv/models/m") == Path("/srv/models/m")


def test_serving_imports_neither_mlflow_nor_scikit_learn(faulty_world: BuildSummary) -> None:
    mlflow_dir = _mlflow_dir(faulty_world)
    probe = (
        "import sys; from pathlib import Path; from sandbox.pipeline import registry, compiled; "
        f"d = Path({str(mlflow_dir)!r}); "
        "e = registry.load_serving(d, 'models:/ticket-encoder@production', "
        "compiled.CompiledTextEncoder); "
        "m = registry.load_serving(d, 'models:/churn-model@champion', compiled.CompiledTrees); "
        "print(e.transform(['card declined']).shape, m.n_features_in_, "
        "sorted(k for k in ('mlflow', 'sklearn', 'skops', 'scipy') if k in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["(1,", "64)", "13", "[]"]


@pytest.fixture(scope="module")
def moved_ui(
    faulty_world: BuildSummary, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """The MLflow UI as `sandbox up` starts it, on a copy of the world's registry in another
    directory."""
    copy = tmp_path_factory.mktemp("moved") / "elsewhere" / "mlflow"
    shutil.copytree(_mlflow_dir(faulty_world), copy)
    child = mlflow_ui(copy, "127.0.0.1", port := free_port())
    process = subprocess.Popen(
        child.argv,
        env={**os.environ, **child.env},
        cwd=copy.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}{MLFLOW_PREFIX}"
    try:

        def healthy() -> bool:
            assert process.poll() is None, "the MLflow UI exited"
            with contextlib.suppress(httpx.HTTPError):
                return HTTP.get(f"{url}/health").status_code == 200
            return False

        until(healthy, "the MLflow UI", timeout=90, every=0.5)
        yield url, copy
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_mlflow_ui_serves_a_moved_worlds_runs_and_artifacts(
    moved_ui: tuple[str, Path], faulty_world: BuildSummary
) -> None:
    url, copy = moved_ui
    api = f"{url}/ajax-api/2.0/mlflow"
    answers: list[str] = []

    def get(route: str, /, **params: str) -> httpx.Response:
        reply = HTTP.get(f"{url}/{route}", params=params, timeout=10)
        assert reply.status_code == 200, (route, reply.text)
        answers.append(reply.text)
        return reply

    experiments = get("ajax-api/2.0/mlflow/experiments/search", max_results="100").json()
    ids = [e["experiment_id"] for e in experiments["experiments"]]
    runs = HTTP.post(f"{api}/runs/search", json={"experiment_ids": ids}, timeout=10)
    models = HTTP.post(f"{api}/logged-models/search", json={"experiment_ids": ids}, timeout=10)
    answers += [runs.text, models.text]
    get("ajax-api/2.0/mlflow/registered-models/search")
    versions = get("ajax-api/2.0/mlflow/model-versions/search").json()["model_versions"]

    [churn] = [r for r in runs.json()["runs"] if r["info"]["run_name"].startswith("churn-gbm")]
    run_id = churn["info"]["run_id"]
    listed = get("ajax-api/2.0/mlflow/artifacts/list", run_id=run_id).json()
    assert [f["path"] for f in listed["files"]] == ["feature_importances.json"]
    # What the UI shows is the copy's file, not the one in the directory the world was built in.
    served = copy / "artifacts" / churn["info"]["artifact_uri"].removeprefix(PROXIED)
    importances = served / "feature_importances.json"
    importances.write_text(json.dumps({"moved": 1.0}))
    assert get("get-artifact", path="feature_importances.json", run_uuid=run_id).json() == {
        "moved": 1.0
    }

    for model in models.json()["models"]:
        model_id = model["info"]["model_id"]
        files = get(f"ajax-api/2.0/mlflow/logged-models/{model_id}/artifacts/directories").json()
        assert {"MLmodel", registry.SKOPS_FILE} <= {f["path"] for f in files["files"]}
    for version in versions:
        mlmodel = get(
            "model-versions/get-artifact",
            name=version["name"],
            version=version["version"],
            path="MLmodel",
        ).text
        assert f"artifact_path: {PROXIED}" in mlmodel
    assert HTTP.get(f"{url}/", timeout=10).status_code == 200  # the UI's own (static) page

    assert not _leaks(answers, faulty_world.root) and not _leaks(answers, copy)
