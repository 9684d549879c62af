"""The world's DuckDB file while it is being built: append frames, then describe and hash it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import polars as pl


class Warehouse:
    """The only writer of a world's DuckDB file; after the build every process opens it read-only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.con = duckdb.connect(str(path))
        self._tables: set[str] = set()
        self._pending: dict[str, list[pl.DataFrame]] = {}

    def append(self, table: str, frame: pl.DataFrame) -> None:
        """Buffer rows for `table`; one bulk insert per table at `flush` beats many small ones."""
        if frame.width:
            self._pending.setdefault(table, []).append(frame)

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for table, frames in pending.items():
            self._write(table, pl.concat(frames, how="diagonal_relaxed"))

    def _write(self, table: str, frame: pl.DataFrame) -> None:
        schema = table.split(".")[0]
        self.con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        self.con.register("_incoming", frame.to_arrow())
        try:
            if table in self._tables:
                self.con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _incoming")
            else:
                self.con.execute(f"CREATE TABLE {table} AS SELECT * FROM _incoming")
                self._tables.add(table)
        finally:
            self.con.unregister("_incoming")

    def comment(self, table: str, text: str, columns: dict[str, str] | None = None) -> None:
        """Descriptions the SQL console's schema browser shows."""
        self.flush()
        self.con.execute(f"COMMENT ON TABLE {table} IS $${text}$$")
        for column, description in (columns or {}).items():
            self.con.execute(f"COMMENT ON COLUMN {table}.{column} IS $${description}$$")

    def close(self) -> None:
        self.flush()
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
