"""A built world: its layout and manifest, and that the same inputs give the same world."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import duckdb
import pytest

from sandbox import scenario, schema
from sandbox.layout import IncompleteWorld, read_manifest
from sandbox.testing import SMALL_SCALE, Worlds
from sandbox.world import population
from sandbox.world.behaviour import WorldState
from sandbox.world.build import BuildSummary, WorldExists, build
from sandbox.world.libraries import SHAPING_LIBRARIES, library_versions
from tests.conftest import SMALLEST, SMALLEST_SCALE, scenario_for

EXPECTED_TABLES = set(schema.TABLES)


def test_manifest_describes_the_world(faulty_world: BuildSummary) -> None:
    manifest = read_manifest(faulty_world.root)
    assert manifest["seed"] == 7 and manifest["scale"] == SMALL_SCALE
    assert len(manifest["content_hash"]) == 64
    assert set(manifest["tables"]) >= EXPECTED_TABLES
    con = duckdb.connect(str(faulty_world.root / "candidate" / "world.duckdb"), read_only=True)
    for table, rows in manifest["tables"].items():
        assert con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0] == rows
    assert all(manifest["tables"][t] > 0 for t in EXPECTED_TABLES - {"monitoring.alerts"})
    # The versions that computed it, as the test-world cache keyed it.
    assert manifest["libraries"] == library_versions()
    assert set(manifest["libraries"]) == set(SHAPING_LIBRARIES) and all(
        manifest["libraries"].values()
    )


def test_layout_splits_candidate_and_interviewer(faulty_world: BuildSummary) -> None:
    root = faulty_world.root
    assert (root / "candidate" / "world.duckdb").is_file()
    assert (root / "candidate" / "mlflow" / "mlflow.db").is_file()
    assert (root / "candidate" / "indexes" / "help_articles.faiss").is_file()
    assert {p.name for p in (root / "candidate" / "logs").iterdir()} >= {
        "feature-job.jsonl",
        "model-server.jsonl",
        "batch-scoring.jsonl",
    }
    key = json.loads((root / "interviewer" / "answer_key.json").read_text())
    assert [f["fault_id"] for f in key["faults"]] == ["feature-nulls-wrong-mean"]
    assert (root / "interviewer" / "scenario.toml").is_file()
    assert (root / "interviewer" / "truth.duckdb").is_file()
    assert not list((root / "candidate").rglob("*answer*"))


def test_six_weeks_of_production_and_the_live_days(faulty_db: duckdb.DuckDBPyConnection) -> None:
    first, _last, days = faulty_db.execute(
        "SELECT min(request_ts)::DATE, max(request_ts)::DATE, count(DISTINCT request_ts::DATE) "
        "FROM serving.predictions WHERE source = 'batch'"
    ).fetchall()[0]
    assert str(first) == "2026-03-02" and days == 42 + 5
    first_raw = faulty_db.execute("SELECT min(activity_date) FROM raw.viewing_activity").fetchall()[
        0
    ][0]
    assert (first - first_raw).days == 56 + 28  # pre-history plus the feature windows' lead-in
    hours = faulty_db.sql(
        "SELECT hour(request_ts) h, count(*) n FROM serving.predictions WHERE source = 'online' "
        "GROUP BY 1 ORDER BY 2"
    ).fetchall()
    assert hours[0][0] in range(1, 7) and hours[-1][0] in range(18, 23)  # daily seasonality


def test_labels_arrive_late(faulty_db: duckdb.DuckDBPyConnection) -> None:
    lag = faulty_db.execute(
        "SELECT min(date_diff('day', score_date, label_available_at)), avg(churned) "
        "FROM labels.churn_labels"
    ).fetchall()[0]
    assert lag[0] == 14 and 0.005 < lag[1] < 0.06


def _build_fresh(spec: scenario.Scenario, out: str) -> dict:
    """A build in a worker process."""
    return build(spec, Path(out)).manifest


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The smallest default world built again in a fresh interpreter, never from the cache of
    shared worlds (which a run on another day, in another process, may have built)."""
    out = tmp_path_factory.mktemp("rebuilt")
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        yield pool.submit(_build_fresh, scenario_for(SMALLEST), str(out / "again")).result()


def test_same_scenario_and_seed_give_the_same_world(worlds: Worlds, rebuilt: dict) -> None:
    cached = worlds.get(SMALLEST)
    assert rebuilt["scale"] == cached.manifest["scale"] == SMALLEST_SCALE
    assert rebuilt["content_hash"] == cached.manifest["content_hash"]
    assert rebuilt["tables"] == cached.manifest["tables"]


def test_another_seed_gives_other_customers_and_other_days() -> None:
    """The seed reaches the population and every day's behaviour (every random draw comes from
    a stream keyed by it), so another seed is another world from its first row."""
    cal = scenario.load(None).world.calendar()
    worlds = []
    for seed in (7, 8):
        customers = population.generate(seed, 2_000, cal)
        state = WorldState(seed, customers, cal)
        state.start_day(cal.first_day)
        worlds.append((customers, state.activity(cal.first_day), state.billing(cal.first_day)))
    for this, other in zip(*worlds, strict=True):
        assert this.height and other.height and not this.equals(other)
    again = population.generate(7, 2_000, cal)
    assert again.equals(worlds[0][0])


def test_existing_directory_is_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(WorldExists):
        build(scenario.load(None).with_overrides(scale=0.02), out)
    assert (out / "notes.txt").read_text() == "keep me"


def test_a_failed_build_leaves_nothing_that_looks_complete(tmp_path: Path) -> None:
    def explode(stage: str, done: int, total: int) -> None:
        if stage == "simulate" and done == 30:
            raise RuntimeError("killed")

    out = tmp_path / "broken"
    with pytest.raises(RuntimeError):
        build(scenario.load(None).with_overrides(scale=0.02), out, progress=explode)
    with pytest.raises(IncompleteWorld):
        read_manifest(out)
