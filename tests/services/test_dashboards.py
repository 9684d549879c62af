"""Dashboards: every definition loads, every panel runs through the candidate's views over the whole
production range for every variable choice and returns the columns it declares; a bad definition is
refused with its file named; and no dashboard gives a planted problem away."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import scenario
from sandbox.difficulty import Tier
from sandbox.faults import registry as fault_registry
from sandbox.layout import WorldPaths
from sandbox.services import dashboards
from sandbox.services.console import query
from sandbox.services.console.telemetry import LiveTelemetry
from sandbox.services.dashboards import DashboardError
from sandbox.services.settings import Settings
from sandbox.world.build import BuildSummary
from tests.services.conftest import live_store

FROZEN = 1e-9  # a clock this slow stands still for the length of a test
FILES = dashboards.definition_files()
REQUIRED = {
    "service-health",
    "model-outputs",
    "model-quality",
    "feature-health",
    "drift",
    "retrieval",
    "business",
}
CHARTS_WITH_AXES = {"line", "area", "bar"}
# Words that would tell the candidate something was planted, whole words or word stems.
GIVEAWAYS = re.compile(r"fault|inject|planted|leak|broken|suspicious|\bbugs?\b", re.IGNORECASE)
SLOW_MS = 2000  # a generous ceiling: panels take milliseconds on a small world
VAGUE = {"all", "value", "series", "none", "null", "total"}


@pytest.fixture(scope="module")
def store(faulty_world: BuildSummary) -> Iterator[tuple[LiveTelemetry, dt.datetime, dt.datetime]]:
    """The candidate's views at the start of live time, and the production range up to it."""
    paths = WorldPaths(faulty_world.root)
    spec = scenario.load(paths.scenario)
    cal = spec.world.calendar()
    live_start = cal.midnight(cal.last_production_day + 1)
    telemetry = live_store(paths, live_start)
    yield telemetry, cal.midnight(1), live_start
    telemetry.con.close()


def _choices(board: dashboards.Dashboard) -> list[dict[str, str | None]]:
    """Every variable on all (NULL), then each option of each variable with the others on all."""
    choices: list[dict[str, str | None]] = [{v.name: None for v in board.variables}]
    for variable in board.variables:
        for option in variable.options:
            choices.append({**choices[0], variable.name: option})
    return choices


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_time(value: object) -> bool:
    try:
        dt.datetime.fromisoformat(str(value))
    except ValueError:
        return False
    return True


def _self_describing(name: str) -> bool:
    """A legend entry that says what it is: words, not a bare number, version or placeholder."""
    return bool(re.search(r"[a-z]{2}", name, re.IGNORECASE)) and name.lower() not in VAGUE


def test_every_legend_entry_of_a_column_is_labeled_in_words() -> None:
    for board in dashboards.load_dir().values():
        for panel in board.panels:
            if panel.chart not in CHARTS_WITH_AXES or panel.series:
                continue
            for column in panel.y:
                label = panel.labels.get(column, "")
                assert _self_describing(label) and "_" not in label, (
                    f"{board.id}/{panel.id}: {column} has no legend label in words"
                )


def test_every_required_dashboard_loads_in_menu_order() -> None:
    boards = dashboards.load_dir()
    assert set(boards) == REQUIRED
    assert list(boards) == [b.id for b in sorted(boards.values(), key=lambda b: (b.order, b.id))]
    for path in FILES:
        board = dashboards.load_file(path)
        assert board.id == path.stem, "a file is named after its dashboard"
        assert board.description and all(p.description for p in board.panels)
        panel_ids = [p.id for p in board.panels]
        assert len(panel_ids) == len(set(panel_ids)), f"{path.name}: a panel id is used twice"
        for panel in board.panels:
            assert not panel.links or panel.chart == "table", f"{panel.id}: links need a table"
            assert all("{value}" in url for url in panel.links.values())


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_panel_returns_its_declared_columns_over_the_production_range(
    path: Path, store: tuple[LiveTelemetry, dt.datetime, dt.datetime]
) -> None:
    telemetry, start, end = store
    board = dashboards.load_file(path)
    for choice in _choices(board):
        for panel in board.panels:
            where = f"{board.id}/{panel.id} {choice}"
            params = dashboards.parameters(panel, start, end, choice)
            result = query.run(telemetry, panel.sql, params)
            assert result.rows, f"{where}: no rows"
            assert not result.truncated, f"{where}: more rows than the console returns"
            assert result.elapsed_ms < SLOW_MS, f"{where}: {result.elapsed_ms} ms"
            columns = {name: i for i, name in enumerate(result.columns)}
            declared = [*panel.links, *([panel.series] if panel.series else [])]
            declared += [c for c in (panel.facet, panel.coverage) if c]
            if panel.chart != "table":
                declared += panel.y
            if panel.chart in CHARTS_WITH_AXES:
                declared.append(panel.x)
            missing = [c for c in declared if c not in columns]
            assert not missing, f"{where}: no column {missing} in {result.columns}"
            if panel.chart == "stat":
                assert len(result.rows) == 1, f"{where}: a stat is one row"
            if panel.chart != "table":
                for y in panel.y:
                    values = [row[columns[y]] for row in result.rows]
                    assert all(v is None or _is_number(v) for v in values), f"{where}: {y}"
                    assert any(_is_number(v) for v in values), f"{where}: {y} is all NULL"
            if panel.chart in CHARTS_WITH_AXES:
                xs = {row[columns[panel.x]] for row in result.rows}
                assert all(_is_time(x) for x in xs), f"{where}: {panel.x} is not a time"
                assert len(xs) <= dashboards.MAX_POINTS + 1, f"{where}: {len(xs)} points"
            for column in panel.links:
                assert all(row[columns[column]] for row in result.rows), f"{where}: {column}"
            if panel.series and panel.chart in CHARTS_WITH_AXES:
                names = {str(row[columns[panel.series]]) for row in result.rows}
                vague = sorted(n for n in names if not _self_describing(n))
                assert not vague, f"{where}: legend entries {vague} do not say what they are"


def test_drift_report_links_name_each_report_day(
    store: tuple[LiveTelemetry, dt.datetime, dt.datetime],
) -> None:
    telemetry, start, end = store
    board = dashboards.catalog()["drift"]
    panel = next(p for p in board.panels if p.links)
    (column, template), *_ = panel.links.items()
    assert template == "/reports/drift/{value}"
    result = query.run(telemetry, panel.sql, dashboards.parameters(panel, start, end, {}))
    linked = [row[result.columns.index(column)] for row in result.rows]
    days = query.run(
        telemetry,
        "SELECT strftime(report_date, '%Y-%m-%d') FROM monitoring.drift_daily "
        f"WHERE report_date >= DATE '{start.date()}' AND report_date < DATE '{end.date()}'",
    ).rows
    assert sorted(linked) == sorted(day for (day,) in days)
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", day) for day in linked)


def test_feature_filters_offer_every_model_feature(
    store: tuple[LiveTelemetry, dt.datetime, dt.datetime],
) -> None:
    telemetry, _, _ = store
    features = telemetry.tables["monitoring.drift_reference"]  # the features the model reads
    boards = [b for b in dashboards.catalog().values() for v in b.variables if v.name == "feature"]
    assert boards
    for board in boards:
        (variable,) = [v for v in board.variables if v.name == "feature"]
        assert variable.options == features, board.id


TEMPLATE = """
id = "{id}"
title = "A dashboard"
[[panels]]
id = "a-panel"
title = "A panel"
sql = "SELECT $start::TIMESTAMP AS t, 1 AS value"
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('id = "x"\ntitle = [', "not valid TOML"),
        (TEMPLATE.format(id="x") + 'colour = "red"\n', "panels.0.colour: Extra inputs"),
        (
            TEMPLATE.format(id="x").replace("$start::TIMESTAMP", "$region"),
            "unknown parameter $region",
        ),
        (TEMPLATE.format(id="x") + 'chart = "pie"\n', "panels.0.chart: Input should be"),
        (TEMPLATE.format(id="Not A Slug"), "id: String should match pattern"),
        (
            TEMPLATE.format(id="x")
            + '[[variables]]\nname = "start"\nlabel = "S"\noptions = ["a"]\n',
            "time-range picker",
        ),
        (
            TEMPLATE.format(id="x")
            + '[[panels]]\nid = "a-panel"\ntitle = "Again"\nsql = "SELECT 1"\n',
            "panel id 'a-panel' is used twice",
        ),
        (
            TEMPLATE.format(id="x") + 'labels = { valu = "typo" }\n',
            "panel a-panel: a label for valu, not in y",
        ),
        (TEMPLATE.format(id="x") + 'coverage = "days"\n', "coverage needs a period"),
    ],
    ids=[
        "bad-toml",
        "unknown-field",
        "unknown-parameter",
        "unknown-chart",
        "bad-id",
        "builtin-name",
        "panel-id-twice",
        "label-for-no-column",
        "coverage-without-period",
    ],
)
def test_a_malformed_definition_is_refused_naming_its_file(
    tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "good.toml").write_text(TEMPLATE.format(id="good"))
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(DashboardError, match=re.escape(message)) as raised:
        dashboards.load_dir(tmp_path)
    assert str(raised.value).startswith("bad.toml: ")
    with pytest.raises(DashboardError, match=r"^bad\.toml: "):
        dashboards.load_file(bad)


def test_a_dashboard_id_used_twice_is_refused_naming_the_second_file(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(TEMPLATE.format(id="same"))
    (tmp_path / "b.toml").write_text(TEMPLATE.format(id="same"))
    with pytest.raises(DashboardError, match=r"^b\.toml: dashboard id 'same' is used twice"):
        dashboards.load_dir(tmp_path)
    with pytest.raises(DashboardError, match="no dashboard definitions"):
        dashboards.load_dir(tmp_path / "missing")


def test_the_dashboards_setting_serves_another_directory_of_definitions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mine.toml").write_text(TEMPLATE.format(id="mine"))
    monkeypatch.setenv("SANDBOX_DASHBOARDS", str(tmp_path))
    assert list(dashboards.catalog(Settings.from_env().dashboards)) == ["mine"]
    assert "mine" not in dashboards.catalog()  # the packaged ones, without the setting


def test_longer_ranges_get_coarser_buckets_of_at_most_max_points() -> None:
    start = dt.datetime(2026, 3, 2)
    spans = [dt.timedelta(minutes=5), dt.timedelta(hours=6), dt.timedelta(days=1)]
    spans += [dt.timedelta(days=d) for d in (3, 7, 14, 42, 100, 365)]
    buckets = [dashboards.bucket_seconds(start, start + span) for span in spans]
    assert buckets == sorted(buckets)
    assert buckets[0] == dashboards.BUCKETS[0] and buckets[-1] == dashboards.BUCKETS[-1]
    assert set(buckets) <= set(dashboards.BUCKETS)
    for span, bucket in zip(spans, buckets, strict=True):
        points = span.total_seconds() / bucket
        assert points <= dashboards.MAX_POINTS or bucket == dashboards.BUCKETS[-1]
        finer = [b for b in dashboards.BUCKETS if b < bucket]
        assert all(span.total_seconds() / b > dashboards.MAX_POINTS for b in finer)
    assert dashboards.bucket_seconds(start, start) == dashboards.BUCKETS[0]


def test_a_week_the_range_cuts_short_is_partial_with_the_days_it_holds() -> None:
    panel = dashboards.Panel(id="weekly", title="Weekly", sql="SELECT 1", period="week")
    monday = dt.datetime(2026, 3, 2)
    start, end = monday + dt.timedelta(days=2), monday + dt.timedelta(days=17, hours=12)
    weeks = [monday.isoformat(), (monday + dt.timedelta(days=7)).isoformat(), "2026-03-16"]
    rows = [[w, 0.5] for w in weeks]
    assert dashboards.partial_periods(panel, ["t", "value"], rows, start, end) == {
        weeks[0]: 5.0,  # the range starts on Wednesday
        "2026-03-16": 3.5,  # the current week, half-way through Thursday
    }
    whole = dashboards.partial_periods(
        panel, ["t", "value"], rows[:2], monday, monday + dt.timedelta(days=14)
    )
    assert whole == {}
    daily = panel.model_copy(update={"period": None})
    assert dashboards.partial_periods(daily, ["t", "value"], rows, start, end) == {}


def test_a_week_its_rows_cover_in_part_is_partial_too() -> None:
    panel = dashboards.Panel(
        id="weekly", title="Weekly", sql="SELECT 1", period="week", coverage="days"
    )
    monday = dt.datetime(2026, 3, 2)
    second = (monday + dt.timedelta(days=7)).isoformat()
    rows = [
        [monday.isoformat(), "eu", 7, 0.7],
        [second, "eu", 2, 0.6],  # labels for two days of the week so far
        [second, "us", 1, 0.5],
    ]
    columns = ["t", "segment", "days", "value"]
    end = monday + dt.timedelta(days=28)
    assert dashboards.partial_periods(panel, columns, rows, monday, end) == {second: 2.0}


def test_weekly_panels_declare_their_period() -> None:
    for board in dashboards.load_dir().values():
        for panel in board.panels:
            weekly = "date_trunc('week'" in panel.sql or "INTERVAL 7 DAY" in panel.sql
            if panel.chart in CHARTS_WITH_AXES and weekly:
                assert panel.period == "week", f"{board.id}/{panel.id}"


def test_a_panel_gets_only_the_parameters_its_sql_names() -> None:
    board = dashboards.load_file(dashboards.DASHBOARDS_DIR / "model-outputs.toml")
    start, end = dt.datetime(2026, 3, 2), dt.datetime(2026, 3, 9)
    for panel in board.panels:
        params = dashboards.parameters(panel, start, end, {"source": "batch"})
        assert set(params) == set(dashboards.PARAMETER.findall(panel.sql))
        assert params.get("bucket", 3600) == 3600
        assert params.get("source", "batch") == "batch"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_no_dashboard_gives_a_planted_problem_away(path: Path) -> None:
    text = path.read_text()
    found = GIVEAWAYS.findall(text)
    assert not found, f"{path.name}: {found}"
    for fault_id in fault_registry.catalog():
        assert fault_id not in text.lower(), f"{path.name} names {fault_id}"


def test_a_panel_only_a_mature_team_has_is_served_up_to_its_tier() -> None:
    boards = dashboards.catalog()

    def panels(tier: Tier) -> set[str]:
        served = dashboards.for_tier(boards, tier)
        return {f"{b.id}/{p.id}" for b in served.values() for p in b.panels}

    every = {f"{b.id}/{p.id}" for b in boards.values() for p in b.panels}
    assert panels("guided") == every
    assert "feature-health/null-ratio" in every - panels("standard")
    assert "feature-health/nulls-per-run" in panels("standard") - panels("hard")
    assert "model-outputs/threshold-by-version" in panels("standard") - panels("hard")
    assert panels("hard") < panels("standard") < every
