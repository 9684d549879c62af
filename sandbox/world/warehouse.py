"""The world's DuckDB file while it is being built: append frames, then describe and hash it."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import duckdb
import polars as pl

from sandbox.schema import Table

# Rows of one table held before they are written: a day of a large table at the default scale.
WRITE_ROWS = 250_000


class UndeclaredColumn(ValueError):
    """Rows for a table, or a column, the world's declaration does not have."""


class Warehouse:
    """The only writer of a world's DuckDB file; after the build every process opens it read-only.

    Each table is created from its declaration in `tables` (`sandbox.schema`: the candidate's
    world, or the interviewer's truth file), with its descriptions, when rows are first written
    to it, and the file is closed with every declared table in it; rows for an undeclared table
    or column are refused, and a column a frame lacks is NULL."""

    def __init__(self, path: Path, tables: Mapping[str, Table]) -> None:
        self.path = path
        self.con = duckdb.connect(str(path))
        self.declared = dict(tables)
        self._tables: set[str] = set()
        self._pending: dict[str, list[pl.DataFrame]] = {}

    def append(self, table: str, frame: pl.DataFrame) -> None:
        """Buffer rows for `table`, written in bulk (one insert per table beats many small ones)
        once the table has `WRITE_ROWS` waiting, or at `flush`: a build holds at most that many
        unwritten rows per table, whatever the world's scale."""
        declared = self.declared.get(table)
        if declared is None:
            raise UndeclaredColumn(f"{table}: not a declared table (sandbox.schema)")
        undeclared = [c for c in frame.columns if c not in declared.names]
        if undeclared:
            raise UndeclaredColumn(
                f"{table}.{undeclared[0]}: not a declared column of {table} "
                f"(declared: {', '.join(declared.names)})"
            )
        if frame.width:
            self._pending.setdefault(table, []).append(frame)
            if sum(f.height for f in self._pending[table]) >= WRITE_ROWS:
                self._write_pending(table)

    def flush(self) -> None:
        for table in list(self._pending):
            self._write_pending(table)

    def _write_pending(self, table: str) -> None:
        # Together: one insert of a few hundred thousand rows costs less than many small ones.
        self._write(table, pl.concat(self._pending.pop(table), how="diagonal_relaxed"))

    def _create(self, table: str) -> None:
        """A declared table, empty, with its descriptions."""
        declared = self.declared[table]
        self.con.execute(f"CREATE SCHEMA IF NOT EXISTS {declared.schema}")
        self.con.execute(declared.create_sql())
        for statement in declared.comment_sql():
            self.con.execute(statement)
        self._tables.add(table)

    def _write(self, table: str, frame: pl.DataFrame) -> None:
        if table not in self._tables:
            self._create(table)
        self.con.register("_incoming", frame.to_arrow())
        try:
            self.con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _incoming")
        finally:
            self.con.unregister("_incoming")

    def close(self) -> None:
        self.flush()
        for table in self.declared:  # a declared table no rows were written to
            if table not in self._tables:
                self._create(table)
        self.con.execute("CHECKPOINT")
        self.con.close()


def table_names(con: duckdb.DuckDBPyConnection) -> list[str]:
    rows = con.execute(
        "SELECT schema_name || '.' || table_name FROM duckdb_tables() "
        "WHERE database_name = current_database() ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows]


def row_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    return {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in table_names(con)}


def content_digest(con: duckdb.DuckDBPyConnection) -> str:
    """A hash over every table's schema and rows, independent of row order.

    DuckDB's hash() is deterministic across processes; summing the row hashes as HUGEINT keeps
    duplicates counted (an XOR would cancel them).
    """
    h = hashlib.sha256()
    for table in table_names(con):
        columns = con.execute(
            "SELECT column_name, data_type FROM duckdb_columns() "
            "WHERE schema_name || '.' || table_name = ? AND database_name = current_database() "
            "ORDER BY column_index",
            [table],
        ).fetchall()
        count, total = con.execute(
            f"SELECT count(*), coalesce(sum(hash(t)::HUGEINT), 0) FROM {table} t"
        ).fetchall()[0]
        h.update(f"{table}|{columns}|{count}|{total}\n".encode())
    return h.hexdigest()
