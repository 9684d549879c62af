"""Nothing the candidate can see names a planted fault: not a table, column, text value, log file,
registry entry or file name of the candidate's half of a world, whichever faults and decoys it
holds. A name there would hand the candidate the answer the session is meant to find."""

from __future__ import annotations

import re
import sqlite3

import duckdb
import pytest

from sandbox.decoys import registry as decoy_registry
from sandbox.faults import registry
from sandbox.world.build import BuildSummary
from tests.conftest import FAULT_WORLDS, Worlds, connect

TELLTALE = re.compile(
    "|".join(
        [r"\bfault", r"inject", r"planted", r"answer", r"sabotag", r"\bbug\b"]
        + [re.escape(fault_id) for fault_id in registry.catalog()]
        + [re.escape(cls.__name__) for cls in registry.catalog().values()]
        + [re.escape(decoy_id) for decoy_id in decoy_registry.catalog()]
    ),
    re.IGNORECASE,
)


def _hits(texts: list[str]) -> list[str]:
    return sorted({t for t in texts if t and TELLTALE.search(t)})


@pytest.fixture(params=list(FAULT_WORLDS))
def world(request: pytest.FixtureRequest, worlds: Worlds) -> BuildSummary:
    """Every world the catalog tests build: together they plant every registered fault."""
    return worlds.get(request.param)


@pytest.fixture
def world_db(world: BuildSummary):
    con = connect(world)
    yield con
    con.close()


def test_file_names(world: BuildSummary) -> None:
    names = [str(p.relative_to(world.root)) for p in (world.root / "candidate").rglob("*")]
    assert not _hits(names)


def test_tables_columns_and_descriptions(world_db: duckdb.DuckDBPyConnection) -> None:
    texts = [
        v
        for row in world_db.sql(
            "SELECT schema_name, table_name, comment FROM duckdb_tables() WHERE NOT internal "
            "UNION ALL SELECT schema_name, column_name, comment FROM duckdb_columns() "
            "WHERE NOT internal"
        ).fetchall()
        for v in row
    ]
    assert not _hits(texts)


def test_every_text_value_in_the_warehouse(world_db: duckdb.DuckDBPyConnection) -> None:
    columns = world_db.sql(
        "SELECT schema_name || '.' || table_name, column_name FROM duckdb_columns() "
        "WHERE data_type = 'VARCHAR' AND NOT internal AND database_name = current_database()"
    ).fetchall()
    assert columns
    for table, column in columns:
        values = world_db.sql(f'SELECT DISTINCT "{column}" FROM {table}').fetchall()
        hits = _hits([v[0] for v in values])
        assert not hits, (table, column, hits[:3])


def test_log_files_and_index_metadata(world: BuildSummary) -> None:
    candidate = world.root / "candidate"
    for path in [*(candidate / "logs").glob("*.jsonl"), *(candidate / "indexes").glob("*.json")]:
        assert not _hits(path.read_text().splitlines()), path


def test_model_registry_and_runs(world: BuildSummary) -> None:
    db = sqlite3.connect(world.root / "candidate" / "mlflow" / "mlflow.db")
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    texts: list[str] = []
    for table in tables:
        for row in db.execute(f'SELECT * FROM "{table}"'):
            texts += [v for v in row if isinstance(v, str)]
    assert len(texts) > 20
    assert not _hits(texts)


def test_the_answer_key_is_in_the_interviewer_part(world: BuildSummary) -> None:
    text = (world.root / "interviewer" / "answer_key.json").read_text()
    assert TELLTALE.search(text)  # the scan would catch it if it leaked
