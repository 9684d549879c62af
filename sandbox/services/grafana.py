"""The dashboards of `sandbox/dashboards/` as Grafana dashboards over Prometheus, generated from
the same definitions (their panels' `promql`), so the two never drift apart. Compose provisions
them; `sandbox dashboards grafana OUT` writes them anywhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sandbox.services import dashboards

DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
GRID_WIDTH = 24
PANEL_HEIGHT = 8
UNITS = {"ms": "ms", "s": "s", "share": "percentunit", "ratio": "percentunit", "req/s": "reqps"}
REF_IDS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def dashboard_json(board: dashboards.Dashboard) -> dict[str, Any] | None:
    """One Grafana dashboard; None when no panel of the board has a PromQL form."""
    panels = [p for p in board.panels if p.promql]
    if not panels:
        return None
    out = []
    x = y = 0
    for number, panel in enumerate(panels, start=1):
        width = GRID_WIDTH if panel.width == 2 else GRID_WIDTH // 2
        if x + width > GRID_WIDTH:
            x, y = 0, y + PANEL_HEIGHT
        out.append(
            {
                "id": number,
                "type": "timeseries",
                "title": panel.title,
                "description": panel.description,
                "datasource": DATASOURCE,
                "gridPos": {"x": x, "y": y, "w": width, "h": PANEL_HEIGHT},
                "targets": [
                    {"refId": REF_IDS[i], "expr": expr, "datasource": DATASOURCE}
                    for i, expr in enumerate(panel.promql)
                ],
                "fieldConfig": {
                    "defaults": {"unit": UNITS.get(panel.unit, "short")},
                    "overrides": [],
                },
                "options": {"tooltip": {"mode": "multi"}, "legend": {"displayMode": "list"}},
            }
        )
        x += width
    return {
        "uid": board.id[:40],
        "title": board.title,
        "description": board.description,
        "tags": ["ml-incident-sandbox"],
        "timezone": "utc",
        "editable": False,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-45d", "to": "now"},
        "panels": out,
    }


def export(
    out_dir: Path,
    boards: dict[str, dashboards.Dashboard] | None = None,
    directory: Path | None = None,
) -> list[Path]:
    """Write a JSON file per dashboard that has PromQL panels; returns the files. The dashboards
    are `boards`, or those of `directory` (the `dashboards` setting; the packaged ones when
    None)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for board in (boards or dashboards.catalog(directory)).values():
        doc = dashboard_json(board)
        if doc is not None:
            path = out_dir / f"{board.id}.json"
            path.write_text(json.dumps(doc, indent=2) + "\n")
            written.append(path)
    return written
