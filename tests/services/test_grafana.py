"""The Grafana export of dashboards/: valid dashboard JSON, generated from the same definitions
(the metric names are checked against a live Prometheus in test_prometheus.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field
from typer.testing import CliRunner

from sandbox.cli import app
from sandbox.services import dashboards, grafana


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Datasource(Strict):
    type: Literal["prometheus"]
    uid: str


class Target(Strict):
    refId: str = Field(pattern=r"^[A-Z]$")
    expr: str = Field(min_length=1)
    datasource: Datasource


class GridPos(Strict):
    x: int = Field(ge=0, lt=24)
    y: int = Field(ge=0)
    w: int = Field(ge=1, le=24)
    h: int = Field(ge=1)


class Panel(Strict):
    id: int
    type: Literal["timeseries", "stat", "table"]
    title: str = Field(min_length=1)
    description: str
    datasource: Datasource
    gridPos: GridPos
    targets: list[Target] = Field(min_length=1)
    fieldConfig: dict
    options: dict


class Dashboard(Strict):
    """The part of Grafana's dashboard model (schemaVersion 39) the export writes."""

    uid: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,40}$")
    title: str
    description: str
    tags: list[str]
    timezone: Literal["utc", "browser", ""]
    editable: bool
    schemaVersion: int = Field(ge=36)
    version: int
    refresh: str
    time: dict[Literal["from", "to"], str]
    panels: list[Panel] = Field(min_length=1)


def test_every_export_is_valid_grafana_dashboard_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["dashboards", "grafana", str(tmp_path)])
    assert result.exit_code == 0, result.output
    files = sorted(tmp_path.glob("*.json"))
    with_promql = [b for b in dashboards.catalog().values() if any(p.promql for p in b.panels)]
    assert [f.stem for f in files] == sorted(b.id for b in with_promql)
    for path in files:
        doc = Dashboard.model_validate(json.loads(path.read_text()))
        assert len({p.id for p in doc.panels}) == len(doc.panels)
        board = dashboards.catalog()[path.stem]
        expected = [e for p in board.panels for e in p.promql]
        assert [t.expr for p in doc.panels for t in p.targets] == expected
        cells = {
            (x, y)
            for p in doc.panels
            for x in range(p.gridPos.x, p.gridPos.x + p.gridPos.w)
            for y in range(p.gridPos.y, p.gridPos.y + p.gridPos.h)
        }
        assert len(cells) == sum(p.gridPos.w * p.gridPos.h for p in doc.panels)  # no overlap


def test_a_board_without_promql_is_not_exported(tmp_path: Path) -> None:
    board = dashboards.catalog()["model-quality"]
    assert not any(p.promql for p in board.panels)
    assert grafana.dashboard_json(board) is None
    assert grafana.export(tmp_path, {board.id: board}) == []


@pytest.mark.parametrize("unit", ["ms", "share", "unknown-unit"])
def test_units_map_to_grafana_units(unit: str) -> None:
    board = dashboards.catalog()["service-health"]
    panel = next(p for p in board.panels if p.promql).model_copy(update={"unit": unit})
    doc = grafana.dashboard_json(board.model_copy(update={"panels": [panel]}))
    assert doc is not None
    assert doc["panels"][0]["fieldConfig"]["defaults"]["unit"] == grafana.UNITS.get(unit, "short")
