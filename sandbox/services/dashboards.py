"""Dashboards: definitions in `sandbox/dashboards/*.toml` (a panel is a query and a chart),
validated on load, their panels run through the candidate's clock-filtered views like any console
query.

A panel's SQL may use named parameters the page fills in:
- `$start`, `$end`: the time range picked on the page (TIMESTAMPs; `$end` never after now);
- `$bucket`: seconds per chart point, chosen from the range so a chart holds a few hundred points
  (`time_bucket(to_seconds($bucket), ts)`);
- one per dashboard variable (a segment filter), NULL for "all".

A panel only a mature team would have says so (`shown_up_to = "guided"`): a world of a harder
difficulty is served without it (`for_tier`).
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sandbox.difficulty import Tier, shown

# The definitions ship inside the package, so an installed wheel has them wherever it lands; the
# `dashboards` setting (SANDBOX_DASHBOARDS) points a deployment at its own directory instead.
DASHBOARDS_DIR: Traversable = resources.files("sandbox") / "dashboards"
PARAMETER = re.compile(r"\$([a-z_][a-z0-9_]*)")
BUILTIN_PARAMETERS = {"start", "end", "bucket"}
# Seconds per chart point, smallest first: the finest bucket that keeps a chart under MAX_POINTS.
BUCKETS = (300, 900, 3600, 3 * 3600, 6 * 3600, 86400)
MAX_POINTS = 400
PERIOD_SECONDS = {"week": 7 * 86400}

Chart = Literal["line", "area", "bar", "stat", "table"]
SLUG = r"^[a-z0-9][a-z0-9-]*$"


class DashboardError(ValueError):
    pass


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Panel(Strict):
    id: str = Field(pattern=SLUG)
    title: str = Field(min_length=1)
    description: str = ""
    chart: Chart = "line"
    sql: str = Field(min_length=1)
    x: str = "t"  # the x column of line/area/bar charts
    y: list[str] = Field(default_factory=lambda: ["value"])  # one series per column...
    series: str | None = None  # ...or one per value of this column (which reads as its legend)
    # The legend of each y column: what the series is, in words ("online-store load").
    labels: dict[str, str] = Field(default_factory=dict)
    # x holds the start of each calendar period: a period the range cuts short (the current
    # week, or one the range starts inside) is drawn as partial rather than as a drop.
    period: Literal["week"] | None = None
    coverage: str | None = None  # a column with the days of its period a row's data covers
    # One small chart per value of this column, each on its own y axis: series of different
    # scales (features) stay readable side by side.
    facet: str | None = None
    unit: str = ""
    width: Literal[1, 2] = 1  # a panel spans one or two grid columns
    links: dict[str, str] = Field(default_factory=dict)  # table column -> URL template "{value}"
    # The same panel in Grafana over Prometheus (`sandbox up --prometheus`, compose/): one
    # expression per series, over the live services' metrics and the backfilled history.
    promql: list[str] = Field(default_factory=list)
    shown_up_to: Tier = "hard"  # the hardest difficulty whose world has this panel


class Variable(Strict):
    name: str = Field(pattern=r"^[a-z_][a-z0-9_]*$")
    label: str
    options: list[str] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _not_builtin(cls, name: str) -> str:
        if name in BUILTIN_PARAMETERS:
            raise ValueError(f"{name} is set by the time-range picker")
        return name


class Dashboard(Strict):
    id: str = Field(pattern=SLUG)
    title: str = Field(min_length=1)
    description: str = ""
    order: int = 100
    variables: list[Variable] = Field(default_factory=list)
    panels: list[Panel] = Field(min_length=1)

    def panel(self, panel_id: str) -> Panel | None:
        return next((p for p in self.panels if p.id == panel_id), None)


def definition_files(directory: Traversable = DASHBOARDS_DIR) -> list[Traversable]:
    """The definition files in `directory` (`*.toml`), by name."""
    if not directory.is_dir():
        raise DashboardError(f"no dashboard definitions at {directory}")
    files = [p for p in directory.iterdir() if p.name.endswith(".toml") and p.is_file()]
    return sorted(files, key=lambda p: p.name)


def load_dir(directory: Traversable = DASHBOARDS_DIR) -> dict[str, Dashboard]:
    """Every dashboard in `directory`, in menu order; DashboardError names the bad file and field."""
    found: dict[str, Dashboard] = {}
    for path in definition_files(directory):
        board = load_file(path)
        if board.id in found:
            raise DashboardError(f"{path.name}: dashboard id {board.id!r} is used twice")
        found[board.id] = board
    return dict(sorted(found.items(), key=lambda item: (item[1].order, item[0])))


def load_file(path: Traversable) -> Dashboard:
    try:
        board = Dashboard.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    except tomllib.TOMLDecodeError as exc:
        raise DashboardError(f"{path.name}: not valid TOML: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise DashboardError(f"{path.name}: {where}: {first['msg']}") from None
    names = {v.name for v in board.variables} | BUILTIN_PARAMETERS
    seen: set[str] = set()
    for panel in board.panels:
        unlabeled = set(panel.labels) - set(panel.y)
        if unlabeled:
            raise DashboardError(
                f"{path.name}: panel {panel.id}: a label for {sorted(unlabeled)[0]}, not in y"
            )
        if panel.coverage and not panel.period:
            raise DashboardError(f"{path.name}: panel {panel.id}: coverage needs a period")
        if panel.id in seen:
            raise DashboardError(f"{path.name}: panel id {panel.id!r} is used twice")
        seen.add(panel.id)
        unknown = set(PARAMETER.findall(panel.sql)) - names
        if unknown:
            raise DashboardError(
                f"{path.name}: panel {panel.id}: unknown parameter ${sorted(unknown)[0]}"
            )
    return board


def catalog(directory: Traversable | None = None) -> dict[str, Dashboard]:
    """The dashboards of `directory` (the packaged ones by default), loaded once."""
    return _catalog(directory or DASHBOARDS_DIR)


@cache
def _catalog(directory: Traversable) -> dict[str, Dashboard]:
    return load_dir(directory)


def for_tier(boards: dict[str, Dashboard], tier: Tier) -> dict[str, Dashboard]:
    """The dashboards as a team at `tier`'s monitoring maturity has them: without the panels
    it would not have, and without a dashboard left with none."""
    out = {}
    for board_id, board in boards.items():
        panels = [p for p in board.panels if shown(p.shown_up_to, tier)]
        if panels:
            out[board_id] = board.model_copy(update={"panels": panels})
    return out


def bucket_seconds(start: dt.datetime, end: dt.datetime) -> int:
    span = max((end - start).total_seconds(), 1.0)
    return next((b for b in BUCKETS if span / b <= MAX_POINTS), BUCKETS[-1])


def parameters(
    panel: Panel, start: dt.datetime, end: dt.datetime, choices: dict[str, str | None]
) -> dict[str, Any]:
    """The values of the parameters `panel` uses (DuckDB refuses unused ones)."""
    values: dict[str, Any] = {
        "start": start,
        "end": end,
        "bucket": bucket_seconds(start, end),
        **choices,
    }
    return {name: values.get(name) for name in set(PARAMETER.findall(panel.sql))}


def partial_periods(
    panel: Panel,
    columns: list[str],
    rows: list[list[Any]],
    start: dt.datetime,
    end: dt.datetime,
) -> dict[str, float]:
    """Of `panel`'s x values (period starts, as its rows give them), those whose period is only
    partly there, with the days it holds: the range cuts it short (the current week is not over,
    a range may start inside a week), or its rows say they cover fewer days (`coverage`: labels
    that have not matured for the whole week yet)."""
    if panel.period is None or panel.x not in columns:
        return {}
    length = dt.timedelta(seconds=PERIOD_SECONDS[panel.period])
    xi = columns.index(panel.x)
    ci = columns.index(panel.coverage) if panel.coverage in columns else None
    covered: dict[str, float] = {}
    for row in rows:
        first = dt.datetime.fromisoformat(str(row[xi]))
        held = (min(first + length, end) - max(first, start)).total_seconds() / 86400
        if ci is not None and row[ci] is not None:
            held = min(held, float(row[ci]))
        key = str(row[xi])
        covered[key] = max(covered.get(key, 0.0), held)  # the fullest series of the period
    whole = length.total_seconds() / 86400
    return {x: round(max(days, 0.0), 2) for x, days in covered.items() if days < whole}
