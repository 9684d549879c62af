"""Hostile SQL through the candidate's console API: file reads, writes, settings, extensions,
several statements, resource bombs, odd bytes, the unfiltered world and internal tables. Each is
refused or cut off with a clear message, and the console answers a normal query right after."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from sandbox.world.build import BuildSummary
from tests.services.conftest import gateway_client, session_maker, world_paths

TIME_LIMIT_S = 2.0
HOST_PATH = re.compile(r"/(tmp|work|home|root|usr|opt|var)/")
NORMAL = "SELECT count(*) FROM serving.predictions"
NORMAL_WITHIN_S = 2.0
BOMB = "SELECT count(*) FROM serving.predictions a, serving.predictions b, serving.predictions c"

# (query, a word the refusal must contain)
HOSTILE: list[tuple[str, str]] = [
    ("SELECT * FROM read_csv('/etc/passwd')", "not available"),
    ("SELECT * FROM read_csv_auto('/etc/passwd')", "not available"),
    ("SELECT * FROM read_text('/etc/passwd')", "not available"),
    ("SELECT * FROM read_blob('/etc/passwd')", "not available"),
    ("SELECT * FROM read_json('/etc/hosts')", "not available"),
    ("SELECT * FROM read_parquet('/tmp/x.parquet')", "not available"),
    ("SELECT * FROM glob('/*')", "not available"),
    ("SELECT * FROM sniff_csv('/etc/passwd')", "not available"),
    ("SELECT * FROM '/etc/passwd'", "unknown table"),
    ("SELECT * FROM read_csv(['/etc/passwd', '/etc/hosts'])", "not available"),
    ("SELECT * FROM parquet_metadata('/tmp/x.parquet')", "not available"),
    ("COPY serving.predictions TO '/tmp/stolen.csv'", "not allowed"),
    ("COPY (SELECT 1) TO '/tmp/stolen.csv'", "not allowed"),
    ("EXPORT DATABASE '/tmp/dump'", "not allowed"),
    ("ATTACH '/tmp/evil.duckdb' AS evil", "not allowed"),
    ("ATTACH ':memory:' AS scratch", "not allowed"),
    ("DETACH world", "not allowed"),
    ("INSTALL httpfs", "not allowed"),
    ("LOAD httpfs", "not allowed"),
    ("SET memory_limit = '100GB'", "not allowed"),
    ("SET enable_external_access = true", "not allowed"),
    ("RESET max_execution_time", "not allowed"),
    ("SET VARIABLE sim_now = TIMESTAMP '2030-01-01'", "not allowed"),
    ("PRAGMA memory_limit = '100GB'", "not allowed"),
    ("PRAGMA database_list", "not allowed"),
    ("CALL pragma_database_list()", "not allowed"),
    ("CREATE TABLE scratch AS SELECT 1", "not allowed"),
    ("CREATE MACRO m() AS 1", "not allowed"),
    ("DROP VIEW serving.predictions", "not allowed"),
    ("INSERT INTO serving.predictions (prediction_id) VALUES (1)", "not allowed"),
    ("DELETE FROM serving.predictions", "not allowed"),
    ("UPDATE raw.customers SET region = 'x'", "not allowed"),
    ("ALTER VIEW serving.predictions RENAME TO p", "not allowed"),
    ("VACUUM", "not allowed"),
    ("CHECKPOINT", "not allowed"),
    ("USE world", "not allowed"),
    ("SELECT 1; SELECT 2", "one statement"),
    ("SELECT 1; DROP VIEW serving.predictions", "one statement"),
    ("SELECT * FROM world.raw.customers", "unknown table"),
    ('SELECT * FROM "world"."raw"."customers"', "unknown table"),
    ("SELECT * FROM live.serving__predictions", "unknown table"),
    ("SELECT * FROM main.sessions", "unknown table"),
    ("SELECT * FROM query('SELECT * FROM world.raw.customers')", "not available"),
    ("SELECT * FROM query_table('world.raw.customers')", "not available"),
    ("SELECT getvariable('sim_now')", "not available"),
    ("SELECT * FROM pragma_storage_info('world.serving.predictions')", "not available"),
    ("SELECT estimated_size FROM duckdb_tables()", "not available"),
    ("SELECT * FROM duckdb_settings()", "not available"),
    ("WITH t AS (SELECT * FROM world.labels.churn_labels) SELECT count(*) FROM t", "unknown table"),
    (
        "SELECT * FROM raw.customers WHERE customer_id IN (SELECT 1 FROM read_text('/x'))",
        "not available",
    ),
    (BOMB, "time limit"),
    (
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r",
        "limit",
    ),
    ("SELECT count(*) FROM range(1000000000000) a, range(1000000000000) b", "limit"),
    ("SELECT string_agg(repeat('x', 100000), '') FROM range(1000000)", "limit"),
    # A CTE or alias that shadows a system table, and the catalog reached by bare names.
    (
        "SELECT * FROM (WITH duckdb_databases AS (SELECT 1 x) SELECT * FROM duckdb_databases) a, "
        "duckdb_databases b",
        "system table",
    ),
    (
        "SELECT * FROM (WITH duckdb_tables AS (SELECT 1 x) SELECT * FROM duckdb_tables) a, "
        "duckdb_tables b",
        "system table",
    ),
    ("WITH sqlite_master AS (SELECT 1) SELECT * FROM sqlite_master", "system table"),
    ("SELECT * FROM serving.predictions AS duckdb_settings LIMIT 1", "system table"),
    ("SELECT * FROM duckdb_views", "unknown table"),
    ("SELECT * FROM duckdb_databases", "unknown table"),
    ("SELECT * FROM sqlite_master", "unknown table"),
    ("SELECT * FROM information_schema.tables", "unknown table"),
    ("SELECT * FROM pg_catalog.pg_settings", "unknown table"),
    ("SHOW ALL TABLES", "not available"),
    ("SHOW DATABASES", "not available"),
    ("SHOW TABLES", "not available"),
    ("SELECT current_setting('temp_directory')", "not available"),
    ("SELECT current_database(), current_schema()", "not available"),
    ("SELECT stats(score) FROM serving.predictions", "not available"),
    ("SELECT system.main.current_setting('memory_limit')", "plain name"),
    ("SELECT pg_sleep(100)", "not available"),
    ("SELECT version()", "not available"),
    ("SELECT now()", "wall clock"),
    ("EXPLAIN SELECT count(*) FROM labels.churn_labels", "not available"),
    ("EXPLAIN ANALYZE SELECT count(*) FROM labels.churn_labels", "not available"),
    ("PIVOT serving.predictions ON source USING count(*)", "IN ("),
    # Bombs DuckDB's own memory limit does not count: they end in the worker, not the gateway.
    ("SELECT len(list_value(range(100000000)))", "memory"),
    ("SELECT length(repeat('x', 2000000000))", "memory"),
    ("", "empty"),
    ("   ;  ", "empty"),
    ("SELEC * FRM nowhere", "syntax"),
]


@pytest.fixture(scope="module")
def console(faulty_world: BuildSummary) -> Iterator[tuple[TestClient, dict[str, str]]]:
    with world_paths(faulty_world) as paths, gateway_client(paths, TIME_LIMIT_S) as client:
        links = session_maker(client, paths)()
        yield client, {"Authorization": f"Bearer {links['candidate_token']}"}


def _still_answers(client: TestClient, who: dict[str, str]) -> None:
    started = time.monotonic()
    reply = client.post("/api/sql", json={"sql": NORMAL}, headers=who)
    assert reply.status_code == 200, reply.text
    assert reply.json()["rows"][0][0] > 0
    assert time.monotonic() - started < NORMAL_WITHIN_S


@pytest.mark.parametrize(("sql", "says"), HOSTILE, ids=[f"q{i:02d}" for i in range(len(HOSTILE))])
def test_a_hostile_query_is_refused_clearly_and_the_console_carries_on(
    console: tuple[TestClient, dict[str, str]], sql: str, says: str
) -> None:
    client, who = console
    reply = client.post("/api/sql", json={"sql": sql}, headers=who)
    if not sql:
        assert reply.status_code == 422  # the API refuses an empty body before the console
    else:
        assert reply.status_code == 400, f"{sql!r} -> {reply.status_code} {reply.text[:200]}"
        error = reply.json()["error"]
        assert says.lower() in error.lower(), f"{sql!r}: {error}"
        assert not HOST_PATH.search(error), f"a host path in {error!r}"
    _still_answers(client, who)


def test_enormous_text_nul_bytes_and_odd_unicode(
    console: tuple[TestClient, dict[str, str]],
) -> None:
    client, who = console
    huge = client.post("/api/sql", json={"sql": "SELECT " + "1 + " * 40_000 + "1"}, headers=who)
    assert huge.status_code == 422 and "100000" in huge.text
    nul = client.post("/api/sql", json={"sql": "SELECT 'a\x00b' AS x"}, headers=who)
    assert nul.status_code in (200, 400)
    if nul.status_code == 400:
        assert nul.json()["error"]
    odd = client.post(
        "/api/sql", json={"sql": "SELECT 'ﷺ\u202e\U0001f600' AS \"列\U0001f600\""}, headers=who
    )
    assert odd.status_code == 200 and odd.json()["columns"] == ["列\U0001f600"]
    _still_answers(client, who)


def test_the_hostile_queries_are_in_the_history_with_their_refusals(
    console: tuple[TestClient, dict[str, str]],
) -> None:
    client, who = console
    mine = client.get("/api/my/history", headers=who).json()
    refused = [e for e in mine if e["detail"].get("error")]
    assert len(refused) >= 40


def test_a_pivot_with_its_values_listed_runs(console: tuple[TestClient, dict[str, str]]) -> None:
    client, who = console
    reply = client.post(
        "/api/sql",
        json={
            "sql": "PIVOT serving.predictions ON source IN ('batch', 'online') "
            "USING count(*) GROUP BY model_version"
        },
        headers=who,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["columns"] == ["model_version", "batch", "online"]
