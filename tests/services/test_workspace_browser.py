"""A candidate's journey through the workspace in headless Debian Chromium, against a running
stack: brief, a dashboard's charts, SQL (a good query and a hostile one), logs, a model version,
both playgrounds, a submitted diagnosis — and then the session's history holds each step, in order.

Screenshots of every page go to test-output/workspace/ for a person to look at.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Response

from sandbox.services.gateway import pages
from tests.conftest import REPO
from tests.services.running import Stack, new_session

SHOTS = REPO / "test-output" / "workspace"
HOSTILE_SQL = "COPY serving.predictions TO '/tmp/stolen.csv'"
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def stack(shared_stack: Stack) -> Stack:
    return new_session(shared_stack, "browser")


class Journey:
    """One candidate's tab: screenshots each step and keeps what the browser complained about."""

    def __init__(self, page: Page, first_step: int = 1) -> None:
        self.page = page
        self.console_errors: list[str] = []
        self.failed_responses: list[str] = []
        self.step = first_step - 1
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.console_errors.append(f"page error: {error}"))
        page.on("response", self._response)
        SHOTS.mkdir(parents=True, exist_ok=True)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    def _response(self, response: Response) -> None:
        if response.status >= 400:
            self.failed_responses.append(f"{response.status} {response.url}")

    def open(self, nav_title: str) -> None:
        self.page.get_by_role("link", name=nav_title, exact=True).first.click()
        self.page.wait_for_load_state("domcontentloaded")

    def shot(self, name: str) -> None:
        self.step += 1
        self.page.screenshot(path=str(SHOTS / f"{self.step:02d}-{name}.png"), full_page=True)


def _in_order(
    events: list[dict[str, Any]], steps: list[tuple[str, Callable[[dict], bool]]]
) -> None:
    """Each step's event appears in the history after the previous step's."""
    position = 0
    for label, matches in steps:
        while position < len(events) and not matches(events[position]):
            position += 1
        assert position < len(events), f"no '{label}' event after the previous step"
        position += 1


def test_a_candidates_journey_is_drawn_and_recorded(stack: Stack, browser: Browser) -> None:
    customer = stack.scalar("SELECT min(customer_id) FROM feature_store.customer_features_online")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    journey = Journey(context.new_page())
    page = journey.page

    # The link signs in and lands on the brief.
    page.goto(stack.candidate_url)
    assert page.url.endswith("/brief") and "token" not in page.url
    assert "flagging the wrong customers" in page.locator("h1").inner_text()
    page.wait_for_function("document.getElementById('sim-now').textContent.startsWith('20')")
    journey.shot("brief")

    # A dashboard: every panel drawn, real plotly charts that answer a hover.
    journey.open("Dashboards")
    page.wait_for_selector("body[data-dashboard-ready='true']", timeout=WAIT_MS)
    assert page.locator(".panel .error").count() == 0
    assert page.locator(".panel .js-plotly-plot").count() >= 2
    plot = page.locator(".panel .js-plotly-plot").first
    box = plot.locator(".nsewdrag").first.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.5)
    page.wait_for_selector(".hoverlayer .hovertext, .hoverlayer .legend", timeout=5000)
    journey.shot("dashboard")

    # SQL: a query's rows, then a hostile query refused with a clear message.
    journey.open("SQL console")
    page.wait_for_selector(".table-node")
    editor = page.locator("#sql")
    editor.fill(
        "SELECT source, count(*) AS n\nFROM serving.predictions\nGROUP BY source ORDER BY 1"
    )
    editor.press("Control+Enter")
    page.wait_for_selector("#grid table tbody tr")
    assert page.locator("#grid tbody tr").count() >= 1
    assert (
        page.locator("#status")
        .inner_text()
        .startswith(f"{page.locator('#grid tbody tr').count()} row")
    )
    journey.shot("sql")
    editor.fill(HOSTILE_SQL)
    page.locator("#run").click()
    refusal = page.locator("#status .error")
    refusal.wait_for()
    assert "not allowed" in refusal.inner_text()
    journey.shot("sql-refused")

    # Logs: a free-text search.
    journey.open("Logs")
    page.wait_for_selector("#log-table tbody tr")
    page.locator("#q").fill("predict")
    page.locator("#log-form button[type=submit]").click()
    page.wait_for_function("document.getElementById('log-status').textContent.includes(' of ')")
    messages = page.locator("#log-table tbody td.message").all_inner_texts()
    assert messages and all("predict" in m.lower() for m in messages[:20])
    journey.shot("logs")

    # Models: a version's training run.
    journey.open("Models")
    page.wait_for_selector("#model-detail tbody tr.clickable")
    page.locator("#model-detail tbody tr.clickable").first.click()
    version = page.locator(".version")
    version.wait_for()
    assert "holdout metrics" in version.inner_text().lower()
    page.wait_for_selector("#importances.js-plotly-plot")
    journey.shot("models")

    # Retrieval playground.
    journey.open("Retrieval")
    page.locator("#ticket").fill("I was charged twice for my subscription this month")
    page.locator("#search-form button[type=submit]").click()
    page.wait_for_selector("#search-result table tbody tr")
    assert "encoder_version" in page.locator("#search-result").inner_text()
    journey.shot("retrieval")

    # Model-server playground.
    journey.open("Model server")
    page.locator("#customer-id").fill(str(customer))
    page.locator("#predict-form button[type=submit]").click()
    result = page.locator("#predict-result")
    result.wait_for()
    assert '"score"' in result.inner_text()
    journey.shot("model-server")

    # The diagnosis: autosaved, then submitted.
    journey.open("Diagnosis")
    page.locator("textarea[name=root_cause]").fill(
        "A feature went partly missing and the fill value is wrong."
    )
    page.wait_for_function(
        "document.getElementById('save-state').textContent.startsWith('Saved')", timeout=WAIT_MS
    )
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#submit").click()
    page.wait_for_selector("body[data-diagnosis='submitted']")
    journey.shot("diagnosis")
    context.close()

    # The browser saw no error beyond the refusal the journey asked for.
    assert journey.failed_responses == [f"400 {stack.url}/api/sql"]
    unexpected = [
        e for e in journey.console_errors if not re.search(r"status of 400 \(Bad Request\)", e)
    ]
    assert unexpected == []

    history = stack.history()
    _in_order(
        history,
        [
            ("brief page", lambda e: e["kind"] == "page" and e["detail"]["page"] == "brief"),
            (
                "dashboard page",
                lambda e: e["kind"] == "page" and e["detail"]["page"] == "dashboards",
            ),
            ("panel", lambda e: e["kind"] == "panel" and "start" in e["detail"]),
            ("sql page", lambda e: e["kind"] == "page" and e["detail"]["page"] == "sql"),
            (
                "query",
                lambda e: e["kind"] == "sql" and "serving.predictions" in e["detail"]["tables"],
            ),
            ("hostile query", lambda e: e["kind"] == "sql" and e["detail"]["sql"] == HOSTILE_SQL),
            (
                "log search",
                lambda e: e["kind"] == "log_search" and e["detail"].get("q") == "predict",
            ),
            (
                "model version",
                lambda e: e["kind"] == "service" and "runs/get" in e["detail"]["path"],
            ),
            ("search", lambda e: e["kind"] == "service" and e["detail"]["path"] == "search"),
            ("predict", lambda e: e["kind"] == "service" and e["detail"]["path"] == "predict"),
            ("diagnosis save", lambda e: e["kind"] == "diagnosis" and not e["detail"]["submitted"]),
            ("diagnosis submit", lambda e: e["kind"] == "diagnosis" and e["detail"]["submitted"]),
        ],
    )
    hostile = next(e for e in history if e["kind"] == "sql" and e["detail"]["sql"] == HOSTILE_SQL)
    assert "not allowed" in hostile["detail"]["error"]
    assert sorted(p.name for p in SHOTS.glob("*.png"))[:1] == ["01-brief.png"]


def _plot(page: Page, url: str, board: str, panel: str) -> Any:
    """Plotly's figure of a drawn panel on the stack at `url`: its traces and layout."""
    page.goto(f"{url}/dashboards/{board}")
    page.wait_for_selector("body[data-dashboard-ready='true']", timeout=WAIT_MS)
    return page.evaluate(
        """(id) => {
          const gd = document.querySelector(`[data-panel="${id}"] .js-plotly-plot`);
          return { data: gd.data, layout: gd.layout, facets: Number(gd.dataset.facets),
                   legend: [...gd.querySelectorAll('.legendtext')].map((t) => t.textContent) };
        }""",
        panel,
    )


def test_charts_read_for_what_they_show(stack: Stack, browser: Browser) -> None:
    """The unfinished week is marked partial, not drawn as a drop; legends say what a series is;
    features of different scales get a chart each; the model server offers ids to try."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    journey = Journey(context.new_page(), first_step=40)
    page = journey.page
    page.goto(stack.candidate_url)

    weekly = _plot(page, stack.url, "business", "weekly-churn-by-segment")
    marks = [t for t in weekly["data"] if t.get("meta") == "partial"]
    assert marks, "the current week is drawn apart"
    assert all("partial week" in c and "of 7 days" in c for t in marks for c in t["customdata"])
    solid = [t for t in weekly["data"] if t.get("showlegend", True)]
    last_week = max(x for t in marks for x in t["x"])
    assert all(
        y is None for t in solid for x, y in zip(t["x"], t["y"], strict=True) if x == last_week
    ), "the solid line stops before the partial week"
    stat = page.locator('[data-panel="active-subscribers-latest"] .stat span').inner_text()
    assert stat == "active subscribers", "a number says what it counts, in words"
    notes = [a["text"] for a in weekly["layout"].get("annotations", [])]
    assert "partial week" in notes
    page.evaluate(
        """([id, curve]) => {
          const gd = document.querySelector(`[data-panel="${id}"] .js-plotly-plot`);
          const last = gd.data[curve].x.length - 1;
          Plotly.Fx.hover(gd, [{ curveNumber: curve, pointNumber: last }]);
        }""",
        ["weekly-churn-by-segment", weekly["data"].index(marks[0])],
    )
    page.wait_for_selector(".hoverlayer >> text=/partial week/", timeout=5000)
    journey.shot("partial-week")

    versions = _plot(page, stack.url, "model-outputs", "predictions-per-day")
    assert versions["legend"] and all(
        re.fullmatch(r"model v\d+", name) for name in versions["legend"]
    ), versions["legend"]
    journey.shot("legends")

    page.goto(f"{stack.url}/dashboards/model-quality?range=whole&segment=app_version")
    page.wait_for_selector("body[data-dashboard-ready='true']", timeout=WAIT_MS)
    legend = page.locator('[data-panel="weekly-auc"] .legendtext').all_text_contents()
    assert legend and all(name.startswith("app version ") for name in legend), legend
    # The newest score week has labels for a few of its days only: drawn as partial.
    matured = page.evaluate(
        """() => document.querySelector('[data-panel="weekly-auc"] .js-plotly-plot').data
                   .filter((t) => t.meta === "partial").flatMap((t) => t.customdata)"""
    )
    assert matured and all("partial week" in c for c in matured), matured
    journey.shot("app-version-segment")

    features = _plot(page, stack.url, "feature-health", "feature-mean")
    assert features["facets"] >= 10, "one small chart per feature"
    titles = {a["text"] for a in features["layout"]["annotations"]}
    assert {"tenure_days", "sessions_7d"} <= titles
    assert all(f"yaxis{i}" in features["layout"] for i in range(2, features["facets"] + 1))
    journey.shot("small-multiples")
    page.select_option("select[name=feature]", "tenure_days")
    # A single feature is one ordinary chart.
    page.wait_for_function(
        "document.querySelector('[data-panel=\"feature-mean\"] .js-plotly-plot')"
        ".dataset.facets === '0'",
        timeout=WAIT_MS,
    )
    journey.shot("one-feature")

    page.goto(f"{stack.url}/model-server")
    chip = page.locator("#customer-examples button.chip").first
    chip.wait_for()
    chip.click()
    assert page.locator("#customer-id").input_value() == chip.inner_text()
    page.locator("#predict-form button[type=submit]").click()
    result = page.locator("#predict-result")
    result.wait_for()
    assert '"score"' in result.inner_text()
    journey.shot("customer-examples")
    context.close()
    assert journey.console_errors == [] and journey.failed_responses == []


def test_pages_are_readable_at_1280_by_800(stack: Stack, browser: Browser) -> None:
    """Nothing spills sideways: every page fits the width of a laptop screen."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(stack.candidate_url)
    for nav in pages.NAV:
        page.goto(stack.url + nav.path)
        page.wait_for_load_state("networkidle")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 1280, f"{nav.path} is {width}px wide"
    context.close()


def test_the_interviewer_reviews_the_session_in_the_browser(
    stack: Stack, browser: Browser, tmp_path: Path
) -> None:
    evidence_sql = (
        "SELECT date_trunc('week', activity_date) AS week, avg((minutes_watched IS NULL)::INT) "
        "FROM raw.viewing_activity GROUP BY 1 ORDER BY 1"
    )
    stack.sql(evidence_sql)
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    journey = Journey(context.new_page(), first_step=20)
    page = journey.page
    page.goto(stack.interviewer_url)
    assert f"/interviewer/sessions/{stack.session_id}" in page.url
    page.wait_for_selector(".review[data-ready='true']", timeout=WAIT_MS)
    assert page.locator("#timeline tbody tr").count() >= 3
    marked = page.locator("#timeline tr.evidence", has_text="minutes_watched")
    assert marked.count() == 1 and marked.locator(".mark").inner_text() == "raw-nulls"
    assert "✔" in page.locator(".fault").first.inner_text()
    # Grouping by the week only shows the column: seen, not asked of.
    nulls = page.locator(".fault li[data-evidence='raw-nulls']")
    assert nulls.get_attribute("data-strength") == "shown"
    assert "queried —" in nulls.inner_text()
    # The query that first showed it is a walk-through probe, linked to its row.
    decisive = page.locator("#probes li[data-probe='decisive_query']", has_text="minutes_watched")
    assert decisive.count() == 1
    link = decisive.locator("a").first.get_attribute("href") or ""
    assert page.locator(link).get_attribute("data-kind") == "sql"
    assert page.locator("#probes li[data-probe='generic']").count() >= 1
    assert page.locator("#claims").inner_text().strip()

    page.select_option("#rubric select[name=root_cause]", "3")
    page.wait_for_selector(".dimension[data-dimension=root_cause][data-saved=true]")
    journey.shot("review")
    page.reload()
    page.wait_for_selector(".review[data-ready='true']", timeout=WAIT_MS)
    assert page.locator("#rubric select[name=root_cause]").input_value() == "3"

    with page.expect_download() as download:
        page.locator("#export-html").click()
    exported = tmp_path / "review.html"
    download.value.save_as(exported)
    page.goto(exported.as_uri())
    assert page.locator("#timeline tbody tr").count() >= 3
    assert "raw-nulls" in page.locator("#timeline").inner_text()
    assert page.locator("li[data-evidence='raw-nulls'][data-strength='shown']").count() == 1
    assert page.locator("#probes li[data-probe='decisive_query']").count() >= 1
    context.close()
    assert journey.console_errors == [] and journey.failed_responses == []


def test_the_scenario_builder_validates_in_the_page(stack: Stack, browser: Browser) -> None:
    operator = (stack.world / "interviewer" / "operator-token").read_text().strip()
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    journey = Journey(context.new_page(), first_step=30)
    page = journey.page
    page.goto(f"{stack.url}/?token={operator}")
    assert page.url.endswith("/interviewer")
    page.get_by_role("link", name="Scenario builder").click()
    page.wait_for_selector(".catalog-entry input[name='fault:feature-nulls-wrong-mean']:checked")
    page.fill("input[name='fault:feature-nulls-wrong-mean.null_share']", "7")
    page.locator("#validate").click()
    error = page.locator("#verdict .error")
    error.wait_for()
    assert "null_share" in error.inner_text()
    page.fill("input[name='fault:feature-nulls-wrong-mean.null_share']", "0.3")
    assert page.locator("select[name='difficulty']").input_value() == "standard"
    page.select_option("select[name='difficulty']", "hard")
    page.locator("#validate").click()
    page.wait_for_selector("#verdict .good")
    assert "flagging the wrong customers" in page.locator("#brief-preview").inner_text().lower()
    # The fault follows the scenario's difficulty unless its own is picked.
    assert "hard" in page.locator("#verdict").inner_text()
    toml = page.locator("#toml-preview").text_content() or ""
    assert 'difficulty = "hard"' in toml.splitlines() and toml.count("difficulty") == 1
    journey.shot("builder")
    context.close()
    assert journey.console_errors == [f for f in journey.console_errors if "422" in f]
    assert all("/api/builder/validate" in r for r in journey.failed_responses)
