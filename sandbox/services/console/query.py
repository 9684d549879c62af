"""The candidate's SQL: one read-only statement at a time over the clock-filtered views.

Protection is layered. The world file is attached read-only; the instance refuses files, extension
installs and setting changes (`LiveTelemetry`); only query statements pass; a query may name the
candidate's schemas only (not the unfiltered world catalog, not dynamic table functions); and each
query runs under a time limit and returns at most the settings' `row_cap` rows.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import json
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import duckdb

from sandbox.review.sql_conditions import tree_nodes
from sandbox.services.console.telemetry import CANDIDATE_SCHEMAS, LiveTelemetry
from sandbox.services.settings import Settings

# For a direct call (tests, tools); the gateway's workers pass the deployment's settings.
DEFAULTS = Settings()
FETCH_CHUNK = 500
ALLOWED_STATEMENTS = {"SELECT"}
# The only table functions in FROM: generators. Everything else (file readers, catalog and
# settings listings) is refused before it runs; the instance refuses files again if one slipped.
TABLE_FUNCTIONS = {"range", "generate_series", "unnest"}
# The server's wall clock is not the incident's: a query comparing with it finds nothing.
CLOCK_FUNCTIONS = {
    "now",
    "current_timestamp",
    "current_date",
    "current_time",
    "get_current_timestamp",
    "get_current_time",
    "transaction_timestamp",
    "today",
    "current_localtime",
    "current_localtimestamp",
}


@functools.cache
def allowed_functions() -> frozenset[str]:
    """Scalar, aggregate and window functions (and operators) a query may call."""
    text = resources.files(__package__).joinpath("sql_functions.txt").read_text()
    return frozenset(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )


@functools.cache
def reserved_names() -> frozenset[str]:
    """Every catalog object a bare name could reach in a DuckDB instance of this version: the
    system views and tables on the search path, and the table functions."""
    with duckdb.connect() as con:
        names = con.execute(
            "SELECT lower(view_name) FROM duckdb_views() WHERE schema_name IN ('main', "
            "'pg_catalog') UNION SELECT lower(table_name) FROM duckdb_tables() UNION "
            "SELECT lower(function_name) FROM duckdb_functions() "
            "WHERE function_type IN ('table', 'table_macro')"
        ).fetchall()
    return frozenset(n for (n,) in names) - TABLE_FUNCTIONS


class QueryRefused(ValueError):
    """A query the console will not run; the message says why, in the candidate's terms.
    `reach` names what a refused query reached for (files, settings, catalogs, writes), for the
    interviewer's probing signal; None for ordinary mistakes and limits."""

    def __init__(self, message: str, reach: str | None = None) -> None:
        super().__init__(message)
        self.reach = reach


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool
    elapsed_ms: float
    tables: list[str] = field(default_factory=list)
    column_types: list[str] = field(default_factory=list)
    columns_read: list[str] = field(default_factory=list)  # schema.table.column or schema.table.*
    # Where the answer's time went besides running it, for the `Server-Timing` header: loading
    # the live rows it reads (in the worker), waiting for a worker and the round trip to it (the
    # pool's).
    live_ms: float = 0.0
    wait_ms: float = 0.0
    worker_ms: float = 0.0


def run(
    store: LiveTelemetry,
    sql: str,
    params: dict[str, Any] | None = None,
    session_id: str | None = None,
    max_bytes: int = DEFAULTS.console_max_bytes,
    row_cap: int = DEFAULTS.row_cap,
) -> QueryResult:
    """Run one candidate statement; QueryRefused or duckdb.Error with a clear message otherwise
    (a query past the time or memory limit is cut off with QueryRefused). `params` binds
    `$name`s; `session_id` is whose own live rows the views show. At most `row_cap` rows and
    about `max_bytes` of values come back (a response's values, roughly as JSON: a few rows of
    huge strings are cut like many rows are)."""
    statement = _single_statement(sql)
    tables, columns_read = touched(store, statement)
    loading = time.perf_counter()
    store.prepare(tables)
    live_ms = (time.perf_counter() - loading) * 1000
    cur = store.cursor(session_id)
    try:
        started = time.perf_counter()
        result = cur.execute(statement, params) if params else cur.execute(statement)
        columns = [d[0] for d in result.description or []]
        types = [str(d[1]) for d in result.description or []]
        rows, truncated = _fetch_capped(result, max_bytes, row_cap)
        elapsed = (time.perf_counter() - started) * 1000
    except duckdb.InterruptException:
        raise QueryRefused(
            f"the query was stopped at the console's {store.time_limit_s:g} s time limit: "
            "filter, aggregate or add LIMIT"
        ) from None
    except (duckdb.OutOfMemoryException, MemoryError):
        raise QueryRefused(memory_message(store)) from None
    finally:
        cur.close()
    return QueryResult(
        columns=columns,
        rows=rows,
        truncated=truncated,
        elapsed_ms=round(elapsed, 1),
        tables=tables,
        column_types=types,
        columns_read=columns_read,
        live_ms=round(live_ms, 1),
    )


def memory_message(store: LiveTelemetry) -> str:
    return (
        f"the query needs more than the console's memory limit ({store.memory_limit}): "
        "filter or aggregate first"
    )


def _fetch_capped(
    result: duckdb.DuckDBPyConnection, max_bytes: int, row_cap: int
) -> tuple[list[list[Any]], bool]:
    """Rows as JSON values, stopping at `row_cap` rows or about `max_bytes`; True when cut."""
    rows: list[list[Any]] = []
    size = 0
    while chunk := result.fetchmany(FETCH_CHUNK):
        for row in chunk:
            values = [_json_value(v) for v in row]
            size += sum(_size(v) for v in values)
            if len(rows) == row_cap or (size > max_bytes and rows):
                return rows, True
            if size > max_bytes:  # one row alone is too large to send
                raise QueryRefused(
                    f"one row of the result is larger than the console sends "
                    f"({max_bytes // 1_000_000} MB): select fewer or shorter values"
                )
            rows.append(values)
    return rows, False


def _size(value: Any) -> int:
    if isinstance(value, str):
        return len(value) + 2
    if isinstance(value, list):
        return sum(_size(v) for v in value) + 2
    if isinstance(value, dict):
        return sum(len(k) + _size(v) for k, v in value.items()) + 2
    return 8


def _single_statement(sql: str) -> str:
    if not sql or not sql.strip():
        raise QueryRefused("empty query")
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryRefused(str(exc)) from None
    if not statements:
        raise QueryRefused("empty query")
    if len(statements) != 1:
        raise QueryRefused(f"one statement per query, got {len(statements)}")
    kind = statements[0].type.name
    if kind == "MULTI" and re.match(r"\s*pivot\b", sql, re.IGNORECASE):
        raise QueryRefused(
            "PIVOT runs here with the values of its ON column listed, as one query: "
            "PIVOT schema.table ON col IN ('a', 'b') USING count(*) GROUP BY other_col"
        )
    if kind == "EXPLAIN":
        # A plan describes the store beneath the views: its row estimates and row groups count
        # rows that are not revealed yet.
        raise QueryRefused(
            "EXPLAIN is not available here: the console's tables are views over a store whose "
            "plan would describe more than the tables show"
        )
    if kind not in ALLOWED_STATEMENTS:
        raise QueryRefused(
            f"read-only console: {kind} statements are not allowed", reach=f"{kind} statement"
        )
    return sql.strip().rstrip(";")


def touched(store: LiveTelemetry, statement: str) -> tuple[list[str], list[str]]:
    """The tables a SELECT names (schema.table) and the columns it reads (schema.table.column;
    `*` for all), refusing table names outside the candidate's schemas. The interviewer's review
    matches these against where the evidence is."""
    cur = store.con.cursor()
    try:
        tree = json.loads(cur.execute("SELECT json_serialize_sql(?)", [statement]).fetchall()[0][0])
    finally:
        cur.close()
    if tree.get("error"):
        raise QueryRefused(tree.get("error_message") or "the console runs SELECT queries only")
    ctes: set[str] = set()
    found: list[str] = []
    aliases: dict[str, str] = {}  # alias or bare table name -> schema.table
    refs: list[ColumnRef] = []
    describe_only = False  # DESCRIBE reads no data, only names and types
    for node in tree_nodes(tree):
        if node.get("class") == "COLUMN_REF":
            *qualifier, name = [n for n in node.get("column_names", []) if n]
            refs.append(ColumnRef(qualifier[-1] if qualifier else None, name=name))
        elif node.get("class") == "STAR":
            pattern = (
                (node.get("expr") or {}).get("literal", {}).get("text")
                if node.get("columns")
                else None
            )
            refs.append(
                ColumnRef(
                    node.get("relation_name") or None,
                    exclude={e.lower() for e in node.get("exclude_list") or []},
                    pattern=pattern,
                )
            )
        elif node.get("type") == "SHOW_REF" and node.get("show_type") == "DESCRIBE":
            describe_only = True
        if node.get("cte_map"):
            names = [entry["key"] for entry in node["cte_map"].get("map", [])]
            _refuse_reserved(names, "a common table expression")
            ctes.update(names)
        if node.get("alias") and node.get("type") in FROM_TYPES:
            _refuse_reserved([node["alias"]], "an alias")
        if node.get("type") == "SHOW_REF" and node.get("show_type") == "SHOW_SPECIAL":
            raise QueryRefused(
                "SHOW lists are not available here: the schema browser lists every table, and "
                "DESCRIBE schema.table shows one table's columns",
                reach="system catalog",
            )
        path: list[str] = []
        if node.get("type") == "BASE_TABLE":
            path = [p for p in node["qualified_name"]["path"] if p]
        elif node.get("type") == "SHOW_REF" and "." in node.get("table_name", ""):
            path = node["table_name"].split(".")  # DESCRIBE/SUMMARIZE of a table, not SHOW TABLES
        if path:
            if len(path) == 1 and path[0] in ctes:
                continue
            if len(path) == 3 and path[0] == "memory":
                path = path[1:]
            if len(path) != 2 or path[0] not in CANDIDATE_SCHEMAS:
                raise QueryRefused(
                    f"unknown table {'.'.join(path)}: name tables as schema.table, with a schema "
                    f"among {', '.join(CANDIDATE_SCHEMAS)}",
                    reach="table outside the candidate schemas",
                )
            table = ".".join(path)
            found.append(table)
            aliases[node.get("alias") or path[1]] = table
        if node.get("type") == "TABLE_FUNCTION":
            name = str((node.get("function") or {}).get("function_name", "")).lower()
            if name not in TABLE_FUNCTIONS:
                raise QueryRefused(
                    f"the table function {name} is not available: query the tables of "
                    f"{', '.join(CANDIDATE_SCHEMAS)}",
                    reach="table function",
                )
        if "function_name" in node and node.get("class") in ("FUNCTION", "WINDOW"):
            _check_function(node)
    tables = sorted(set(found))
    if describe_only:
        return tables, []
    return tables, _resolve_columns(store, tables, aliases, refs)


FROM_TYPES = {"BASE_TABLE", "TABLE_FUNCTION", "SUBQUERY", "JOIN", "SHOW_REF", "EXPRESSION_LIST"}


def _refuse_reserved(names: list[str], what: str) -> None:
    for name in names:
        if name.lower() in reserved_names():
            raise QueryRefused(
                f"{name} is the name of a system table here; give {what} another name",
                reach="system catalog",
            )


def _check_function(node: dict[str, Any]) -> None:
    name = str(node["function_name"])
    if node.get("catalog") or node.get("schema"):
        raise QueryRefused(f"call {name} by its plain name, without a schema", reach="function")
    if name.lower() in CLOCK_FUNCTIONS:
        raise QueryRefused(
            f"{name}() is the server's wall clock, not the incident's: compare with the "
            "newest timestamp in the data (for example max(request_ts)) instead"
        )
    if name.lower() not in allowed_functions() and name not in allowed_functions():
        raise QueryRefused(f"the function {name} is not available in the console", reach="function")


@dataclass(frozen=True)
class ColumnRef:
    """A column reference as written: a name, or a star (maybe with EXCLUDE or COLUMNS(regex))."""

    qualifier: str | None
    name: str | None = None  # None: a star
    exclude: frozenset[str] | set[str] = frozenset()
    pattern: str | None = None


def _resolve_columns(
    store: LiveTelemetry, tables: list[str], aliases: dict[str, str], refs: list[ColumnRef]
) -> list[str]:
    """Each reference to the table(s) it can belong to; names no table has (aliases of
    expressions, CTE columns) are dropped. A plain star reads every column (`table.*`)."""
    columns: set[str] = set()
    for ref in refs:
        if ref.qualifier:
            owner = aliases.get(ref.qualifier)
            candidates = [owner] if owner else []
        else:
            candidates = tables
        for table in candidates:
            names = [c.lower() for c in store.tables.get(table, [])]
            if ref.name is not None:
                if ref.name.lower() in names:
                    columns.add(f"{table}.{ref.name.lower()}")
            elif ref.pattern is not None:
                columns.update(f"{table}.{n}" for n in names if _matches(ref.pattern, n))
            elif ref.exclude:
                columns.update(f"{table}.{n}" for n in names if n not in ref.exclude)
            else:
                columns.add(f"{table}.*")
    return sorted(columns)


def _matches(pattern: str, name: str) -> bool:
    try:
        return re.search(pattern, name) is not None
    except re.error:
        return False


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID | dt.timedelta):
        return str(value)
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.hex()
    return str(value)
