"""The build's warehouse holds a bounded number of unwritten rows per table: a table's rows are
written once it has `WRITE_ROWS` waiting, the rest at `flush`, in the order they came."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
import pytest

from sandbox.schema import WHOLE, Column, Table
from sandbox.world import warehouse
from sandbox.world.warehouse import UndeclaredColumn, Warehouse

COLUMNS = (Column("day", "BIGINT"), Column("n", "BIGINT"))
TABLES = {name: Table(name, "Rows by day.", COLUMNS, WHOLE) for name in ("sim.days", "sim.other")}


def _day(day: int, rows: int) -> pl.DataFrame:
    return pl.DataFrame({"day": [day] * rows, "n": list(range(rows))})


def test_rows_are_written_once_a_table_has_enough_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(warehouse, "WRITE_ROWS", 10)
    wh = Warehouse(tmp_path / "w.duckdb", TABLES)
    wh.append("sim.days", _day(1, 6))
    wh.append("sim.other", _day(1, 3))
    assert "sim.days" not in warehouse.table_names(wh.con)  # 6 waiting: not yet
    wh.append("sim.days", _day(2, 6))  # 12 waiting: written, the other table's rows still wait
    assert warehouse.table_names(wh.con) == ["sim.days"]
    assert wh.con.execute("SELECT count(*) FROM sim.days").fetchall() == [(12,)]
    wh.append("sim.days", _day(3, 2))
    wh.flush()
    assert wh.con.execute("SELECT count(*) FROM sim.days").fetchall() == [(14,)]
    assert wh.con.execute("SELECT count(*) FROM sim.other").fetchall() == [(3,)]
    days = [d for (d,) in wh.con.execute("SELECT day FROM sim.days").fetchall()]
    assert days == sorted(days)  # as appended
    wh.close()


def test_every_table_is_declared_and_made_from_its_declaration(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "w.duckdb", TABLES)
    with pytest.raises(UndeclaredColumn, match=r"sim\.elsewhere: not a declared table"):
        wh.append("sim.elsewhere", _day(1, 1))
    with pytest.raises(UndeclaredColumn, match=r"sim\.days\.extra: not a declared column"):
        wh.append("sim.days", _day(1, 1).with_columns(extra=pl.lit(1)))
    wh.append("sim.days", _day(1, 2).select("n"))  # a column the rows lack is NULL
    wh.flush()
    assert wh.con.execute("SELECT day, n FROM sim.days").fetchall() == [(None, 0), (None, 1)]
    wh.close()
    con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
    # The declared types, not those of the first rows (Int32 in the frame), and every declared
    # table, written to or not.
    assert warehouse.table_names(con) == ["sim.days", "sim.other"]
    types = con.execute(
        "SELECT DISTINCT data_type FROM duckdb_columns() WHERE table_name = 'days'"
    ).fetchall()
    assert types == [("BIGINT",)]
