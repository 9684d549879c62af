"""A built world holds exactly the declared data model (`sandbox.schema`): every declared table,
each with its declared columns in order and with their types, and the columns a planted fault
declares it adds after them; nothing else."""

from __future__ import annotations

import pytest

from sandbox import scenario, schema
from sandbox.layout import WorldPaths
from tests.conftest import Worlds, connect


def _world_columns(world) -> dict[str, list[tuple[str, str]]]:
    with connect(world) as con:
        rows = con.execute(
            "SELECT schema_name || '.' || table_name, column_name, data_type "
            "FROM duckdb_columns() WHERE database_name = current_database() AND NOT internal "
            "ORDER BY schema_name, table_name, column_index"
        ).fetchall()
    tables: dict[str, list[tuple[str, str]]] = {}
    for table, column, type_ in rows:
        tables.setdefault(table, []).append((column, type_))
    return tables


# The default world, and the one whose planted fault adds a column to a declared table.
@pytest.mark.parametrize("world", ["default", "leakage"])
def test_every_table_matches_its_declaration(worlds: Worlds, world: str) -> None:
    built = worlds.get(world)
    planted = scenario.load(WorldPaths(built.root).scenario).fault_set
    declared = schema.with_added(planted.added_columns())
    tables = _world_columns(built)
    assert sorted(tables) == sorted(declared), "every declared table exists, and no other"
    for name, table in declared.items():
        assert tables[name] == [(c.name, c.type) for c in table.columns], name
    if world == "leakage":
        assert len(declared["training.churn_training_set"].columns) > len(
            schema.TABLES["training.churn_training_set"].columns
        )


def test_tables_and_columns_carry_their_declared_descriptions(worlds: Worlds) -> None:
    with connect(worlds.get("default")) as con:
        tables = dict(
            con.execute(
                "SELECT schema_name || '.' || table_name, comment FROM duckdb_tables() "
                "WHERE database_name = current_database()"
            ).fetchall()
        )
        columns = {
            (table, column): comment
            for table, column, comment in con.execute(
                "SELECT schema_name || '.' || table_name, column_name, comment "
                "FROM duckdb_columns() WHERE database_name = current_database()"
            ).fetchall()
        }
    for name, table in schema.TABLES.items():
        assert tables[name] == table.description
        for column in table.columns:
            assert columns[(name, column.name)] == (column.description or None), column.name
