"""The build's warehouse holds a bounded number of unwritten rows per table: a table's rows are
written once it has `WRITE_ROWS` waiting, the rest at `flush`, in the order they came."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from sandbox.world import warehouse
from sandbox.world.warehouse import Warehouse


def _day(day: int, rows: int) -> pl.DataFrame:
    return pl.DataFrame({"day": [day] * rows, "n": list(range(rows))})


def test_rows_are_written_once_a_table_has_enough_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(warehouse, "WRITE_ROWS", 10)
    wh = Warehouse(tmp_path / "w.duckdb")
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
