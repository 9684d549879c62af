"""The operator's Worlds page in headless Debian Chromium, on the shared stack: this stack's world
listed as running with its memory and sessions, a session created from the page whose links
work, and what the session form says when no world is running."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Route, expect

from sandbox.layout import WorldPaths
from sandbox.services import stack as stacks
from tests.http_client import HTTP
from tests.services.running import Stack

WAIT_MS = 10_000


@pytest.fixture
def contexts(browser: Browser) -> Iterator[Callable[[], BrowserContext]]:
    """New browser contexts (each its own cookies: one person each), all closed at the end."""
    made: list[BrowserContext] = []

    def new() -> BrowserContext:
        made.append(browser.new_context(viewport={"width": 1280, "height": 800}))
        return made[-1]

    yield new
    for context in made:
        context.close()


def _operator_token(stack: Stack) -> str:
    return stacks.admin_token(WorldPaths(stack.world))


def _worlds_page(context: BrowserContext, stack: Stack) -> Page:
    """The operator's link, then the Worlds tab, its table drawn."""
    page = context.new_page()
    page.goto(f"{stack.url}/?token={_operator_token(stack)}")
    assert page.url.endswith("/interviewer")
    page.get_by_role("link", name="Worlds", exact=True).click()
    page.wait_for_url("**/interviewer/worlds")
    page.locator("#worlds tbody tr").first.wait_for(timeout=WAIT_MS)
    return page


def _session_count(stack: Stack) -> int:
    reply = HTTP.get(
        stack.url + "/api/sessions",
        headers={"Authorization": f"Bearer {_operator_token(stack)}"},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    return len(reply.json())


def test_the_operator_sees_this_stacks_world_and_creates_a_session_from_the_page(
    shared_stack: Stack, contexts: Callable[[], BrowserContext]
) -> None:
    stack = shared_stack
    page = _worlds_page(contexts(), stack)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    own = page.locator(f"#worlds tbody tr[data-world='{stack.world.name}']")
    assert own.get_attribute("data-state") == "running"
    assert "this stack" in own.inner_text()
    memory = own.locator("td.memory").inner_text()
    # The whole stack: gateway, model server, retrieval, traffic, jobs, Prometheus.
    assert re.fullmatch(r"\d+(\.\d)? MB", memory) and float(memory.split()[0]) > 100, memory
    before = int(own.locator("td.sessions").inner_text())
    assert before == _session_count(stack)

    # This stack's world is offered, marked, and the form says nothing is missing.
    picker = page.locator("#world-session select[name=world]")
    assert picker.input_value() == stack.world.name
    assert picker.locator("option:checked").inner_text() == f"{stack.world.name} (this stack)"
    assert page.locator("#world-none").is_hidden()
    page.fill("#world-session input[name=candidate]", "worlds page")
    page.locator("#world-session button[type=submit]").click()
    links = page.locator("#world-links input.copy")
    expect(links).to_have_count(2, timeout=WAIT_MS)
    candidate_url, interviewer_url = links.nth(0).input_value(), links.nth(1).input_value()
    assert "this stack" in page.locator("#world-links").inner_text()
    for url in (candidate_url, interviewer_url):
        assert url.startswith(f"{stack.url}/?token="), url
    # The table is read again at once: one more session on this stack's world.
    expect(own.locator("td.sessions")).to_have_text(str(before + 1), timeout=WAIT_MS)
    assert _session_count(stack) == before + 1

    # Each link works for its own person, in a browser of their own.
    candidate = contexts().new_page()
    candidate.goto(candidate_url)
    assert candidate.url.endswith("/brief") and "token" not in candidate.url
    assert candidate.locator("h1").inner_text().strip()
    expect(candidate.locator("#sim-now")).to_have_text(re.compile(r"^20"), timeout=WAIT_MS)
    interviewer = contexts().new_page()
    interviewer.goto(interviewer_url)
    assert re.search(r"/interviewer/sessions/[^/?]+$", interviewer.url), interviewer.url
    assert errors == []


def _listing(change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]):
    """A route handler that passes the page the gateway's own listing of the worlds, changed."""

    def handle(route: Route) -> None:
        reply = route.fetch()
        route.fulfill(response=reply, body=json.dumps(change(reply.json())))

    return handle


def test_the_session_form_says_why_there_is_no_world_to_pick_and_what_to_do(
    shared_stack: Stack, contexts: Callable[[], BrowserContext]
) -> None:
    """The worlds root need not hold this stack's world (`SANDBOX_WORLDS_ROOT`): then the form
    has a world to offer only once another one runs. The listing is the gateway's own, less
    this stack's world, or with it as any other world that is stopped."""
    stack = shared_stack
    context = contexts()
    context.route(
        "**/api/worlds", _listing(lambda worlds: [w for w in worlds if not w["operator"]])
    )
    page = _worlds_page(context, stack)
    none = page.locator("#world-none")
    expect(none).to_have_text(
        "No world is running: build one with the scenario builder, then start it above.",
        timeout=WAIT_MS,
    )
    assert page.locator("#world-session select[name=world] option").count() == 0
    assert page.locator("#world-session button[type=submit]").is_disabled()

    def stopped(worlds: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [w | {"operator": False, "state": "stopped", "memory_mb": None} for w in worlds]

    context.unroute("**/api/worlds")
    context.route("**/api/worlds", _listing(stopped))
    page.reload()
    expect(page.locator("#worlds tbody tr[data-state=stopped]")).to_have_count(1, timeout=WAIT_MS)
    expect(none).to_have_text("No world is running: start one above.", timeout=WAIT_MS)
    assert page.locator("#worlds button", has_text="Start").count() == 1
    assert page.locator("#world-session button[type=submit]").is_disabled()
