"""The data model (`sandbox.schema`): each declaration holds together, its DDL creates the table it
declares, its Polars types land as its DuckDB types, and the warehouse refuses rows it does not
declare."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
import pytest

from sandbox import schema
from sandbox.decoys import registry as decoys
from sandbox.faults import registry as faults
from sandbox.world.warehouse import UndeclaredColumn, Warehouse

ALL = [*schema.TABLES.values(), *schema.LIVE_ONLY.values()]


def _types(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[str, str]]:
    return con.execute(
        "SELECT column_name, data_type FROM duckdb_columns() "
        "WHERE schema_name || '.' || table_name = ? ORDER BY column_index",
        [table],
    ).fetchall()


@pytest.mark.parametrize("table", ALL, ids=lambda t: t.name)
def test_the_ddl_and_the_polars_types_give_the_declared_columns(table: schema.Table) -> None:
    declared = [(c.name, c.type) for c in table.columns]
    con = duckdb.connect()
    con.execute(f"CREATE SCHEMA {table.schema}")
    con.execute(table.create_sql())
    for statement in table.comment_sql():
        con.execute(statement)
    assert _types(con, table.name) == declared
    # A frame of the declared Polars types, as the row builders make, lands as the same types.
    con.register("frame", pl.DataFrame(schema=table.polars_schema()).to_arrow())
    con.execute(f"CREATE TABLE {table.schema}.from_frame AS SELECT * FROM frame")
    assert _types(con, f"{table.schema}.from_frame") == declared
    # Its reveal rule and what live time keeps of the world are SQL over its columns.
    for sql in (table.reveal.exists, table.live.kept if table.live else None):
        if sql:
            con.execute(f"SELECT count(*) FROM {table.name} WHERE ({sql}) IS NOT NULL")


def test_reveal_rules_ids_and_live_writers_are_declared_coherently() -> None:
    services = {
        schema.MODEL_SERVER,
        schema.RETRIEVAL,
        schema.SCHEDULER,
        schema.GATEWAY,
        schema.EVERY_SERVICE,
    }
    for table in ALL:
        if table.reveal.column is not None:
            assert table.column(table.reveal.column).type in schema.TIME_TYPES
        if table.live is not None:
            assert set(table.live.services) <= services, table.name
            assert table.reveal.column is not None, f"{table.name}: live rows come by time"
    assert schema.SCHEMAS[0] == "raw" and len(set(schema.SCHEMAS)) == len(schema.SCHEMAS)
    with pytest.raises(ValueError, match="no column 'nope'"):
        schema.Table("x.y", "", (schema.Column("a", "BIGINT"),), schema.Reveal("nope"))
    with pytest.raises(ValueError, match="unknown type"):
        schema.Column("a", "HUGEINT")


def test_columns_a_fault_adds_come_after_the_declared_ones() -> None:
    added = {}
    for cls in [*faults.catalog().values(), *decoys.catalog().values()]:
        for table, columns in cls.adds_columns.items():
            assert table in schema.TABLES, f"{cls.id} adds columns to an undeclared table"
            added.setdefault(table, []).extend(columns)
    assert added, "the label-leakage fault adds its feature to the training set"
    extended = schema.with_added(added)
    for table, columns in added.items():
        assert extended[table].columns[-len(columns) :] == tuple(columns)
        assert extended[table].columns[: -len(columns)] == schema.TABLES[table].columns
    with pytest.raises(KeyError, match=r"undeclared tables: raw\.nope"):
        schema.with_added({"raw.nope": [schema.Column("a", "BIGINT")]})


def test_the_warehouse_refuses_rows_it_does_not_declare(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path / "w.duckdb", schema.TABLES)
    with pytest.raises(UndeclaredColumn, match=r"^raw\.customers\.shoe_size: not a declared"):
        warehouse.append("raw.customers", pl.DataFrame({"customer_id": [1], "shoe_size": [9]}))
    with pytest.raises(UndeclaredColumn, match=r"raw\.nope: not a declared table"):
        warehouse.append("raw.nope", pl.DataFrame({"a": [1]}))
    # A table takes its declared columns whatever its first rows hold; a column they lack is NULL.
    warehouse.append("raw.customers", pl.DataFrame({"channel": ["tv"], "customer_id": [1]}))
    warehouse.close()
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        customers = schema.TABLES["raw.customers"]
        assert _types(con, "raw.customers") == [(c.name, c.type) for c in customers.columns]
        assert con.sql("SELECT customer_id, channel, plan FROM raw.customers").fetchall() == [
            (1, "tv", None)
        ]
        # Every declared table exists, rows or none, with its description.
        tables = dict(
            con.sql(
                "SELECT schema_name || '.' || table_name, comment FROM duckdb_tables()"
            ).fetchall()
        )
        assert tables == {name: t.description for name, t in schema.TABLES.items()}
