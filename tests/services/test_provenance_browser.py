"""How the work was done, against a running stack: a person typing in the workspace in headless
Chromium and a script with the session's Bearer token do the same investigation, and only the
script's review shows requests from outside the workspace, overlapping requests and text produced
faster than typing. A workspace-only session refuses the script and works in the browser."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from playwright.sync_api import Browser, Page

from tests.http_client import HTTP
from tests.services.running import Stack, new_session

QUERIES = [
    "SELECT source, count(*) AS n\nFROM serving.predictions\nGROUP BY source ORDER BY 1",
    "SELECT feature, fill_value FROM feature_store.imputation_policy",
]
DIAGNOSIS = "The fill value of a feature is far above its real mean since mid-March."
TYPING_DELAY_MS = 75  # about 13 characters a second: a fast typist at full speed
WAIT_MS = 30_000
# The console's status once a run has its rows ("3 rows · 12 ms").
RAN = r"/^[\d,]+ rows? · /.test(document.getElementById('status').textContent)"
FINISHED = (
    "!document.getElementById('run').disabled && "
    "!document.getElementById('status').textContent.startsWith('Running')"
)
INTEGRITY = {"outside-workspace", "overlapping-requests", "fast-composition"}


def _review(stack: Stack) -> dict[str, Any]:
    reply = HTTP.get(
        f"{stack.url}/api/sessions/{stack.session_id}/review", headers=stack.interviewer, timeout=60
    )
    assert reply.status_code == 200, reply.text
    return reply.json()


def _signals(review: dict[str, Any]) -> dict[str, list[int]]:
    return {s["kind"]: s["events"] for s in review["signals"]}


def _type_and_run(page: Page, sql: str) -> None:
    editor = page.locator("#sql")
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Backspace")
    page.keyboard.type(sql, delay=TYPING_DELAY_MS)
    page.keyboard.press("Control+Enter")
    _ran(page)


def _ran(page: Page) -> None:
    page.wait_for_function(RAN, timeout=WAIT_MS)


def _dashboard_ready(page: Page) -> None:
    page.wait_for_selector("body[data-dashboard-ready='true']", timeout=WAIT_MS)
    assert page.locator(".panel .error").count() == 0


def test_a_person_in_the_workspace_raises_none_of_the_integrity_signals(
    shared_stack: Stack, browser: Browser
) -> None:
    stack = new_session(shared_stack, "person")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    failed: list[str] = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto(stack.candidate_url)
    assert page.url.endswith("/brief")

    page.get_by_role("link", name="SQL console", exact=True).first.click()
    page.wait_for_selector(".table-node")
    for sql in QUERIES:
        _type_and_run(page, sql)

    # A dashboard: all its panels at once, then another range (all again), then a panel's query
    # opened in the SQL console by its link and run there.
    page.get_by_role("link", name="Dashboards", exact=True).first.click()
    _dashboard_ready(page)
    page.evaluate("document.body.dataset.dashboardReady = 'false'")
    page.locator("#range").select_option("7d")
    _dashboard_ready(page)
    page.locator(".panel-sql").first.click()
    page.wait_for_selector(".table-node")
    page.locator("#run").click()
    # the panel's query names the dashboard's range as parameters: the console answers it either
    # way, rows or a message
    page.wait_for_function(FINISHED, timeout=WAIT_MS)

    page.get_by_role("link", name="Diagnosis", exact=True).first.click()
    page.wait_for_selector("body[data-diagnosis-loaded='true']")
    page.locator("textarea[name=root_cause]").click()
    page.keyboard.type(DIAGNOSIS, delay=TYPING_DELAY_MS)
    page.wait_for_function(
        "document.getElementById('save-state').textContent.startsWith('Saved')", timeout=WAIT_MS
    )
    context.close()
    assert failed == [f"400 {stack.url}/api/sql"]  # the panel's query, without its range

    review = _review(stack)
    assert INTEGRITY.isdisjoint(_signals(review)), review["signals"]
    timeline = review["timeline"]
    assert {i["detail"]["client"] for i in timeline} == {"workspace"}
    assert not any(i["detail"]["overlapped"] for i in timeline)
    assert all("Chrome" in i["detail"]["user_agent"] for i in timeline)
    runs = [i for i in timeline if i["kind"] == "sql"]
    assert [r["detail"]["sql"] for r in runs[:2]] == QUERIES
    for run, sql in zip(runs, QUERIES, strict=False):
        composition = run["detail"]["composition"]
        assert composition["typed"] == len(sql) and composition["pasted"] == 0
        # typed at the keyboard's pace, not faster
        assert composition["compose_ms"] >= len(sql) * TYPING_DELAY_MS * 0.9
    # the panel's query: put into the editor by the page, not typed
    assert runs[2]["detail"]["composition"]["typed"] == 0
    assert runs[2]["detail"]["composition"]["inserted"] >= len(runs[2]["detail"]["sql"])
    [save] = [i for i in timeline if i["kind"] == "diagnosis"]
    assert save["detail"]["fields"]["root_cause"] == DIAGNOSIS
    assert save["detail"]["composition"]["root_cause"]["typed"] == len(DIAGNOSIS)


def _concurrently(stack: Stack, queries: list[str]) -> list[int]:
    """The queries sent at once, each on its own connection (the browser's event loop holds this
    thread's, so threads rather than asyncio)."""
    start = threading.Barrier(len(queries))

    def send(sql: str) -> int:
        with httpx.Client(headers=stack.candidate, timeout=60) as client:
            start.wait()
            return client.post(f"{stack.url}/api/sql", json={"sql": sql}).status_code

    with ThreadPoolExecutor(len(queries)) as pool:
        return list(pool.map(send, queries))


def test_a_script_with_the_bearer_token_raises_each_signal_on_its_events(
    shared_stack: Stack, browser: Browser
) -> None:
    stack = new_session(shared_stack, "script")
    sent = QUERIES * 3
    statuses = _concurrently(stack, sent)
    assert set(statuses) <= {200, 429}  # a flood may be told to wait; it is recorded either way
    pasted = HTTP.put(
        f"{stack.url}/api/diagnosis",
        json={"root_cause": DIAGNOSIS},
        headers=stack.candidate,
        timeout=30,
    )
    assert pasted.status_code == 200, pasted.text

    review = _review(stack)
    found = _signals(review)
    timeline = review["timeline"]
    runs = [i["seq"] for i in timeline if i["kind"] == "sql"]
    [save] = [i["seq"] for i in timeline if i["kind"] == "diagnosis"]
    assert len(runs) == len(sent)
    assert found["outside-workspace"] == [i["seq"] for i in timeline]
    # Of two requests in flight together, the one recorded later always sees the other.
    overlapping = [i["seq"] for i in timeline if i["detail"]["overlapped"]]
    assert found["overlapping-requests"] == overlapping
    assert set(overlapping) <= set(runs) and len(overlapping) >= len(sent) // 2
    assert found["fast-composition"] == [*runs, save]
    assert "probing" not in found

    # The interviewer's page draws the signals and marks each event with those it is part of.
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(stack.interviewer_url)
    page.wait_for_selector(".review[data-ready='true']", timeout=WAIT_MS)
    assert "outside help allowed" in page.locator("#policy-line").inner_text()
    for kind in INTEGRITY:
        assert page.locator(f"#signals li[data-signal='{kind}'] a").count() == len(found[kind])
    marked = page.locator(
        "#timeline tr", has=page.locator(".signal[data-signal='fast-composition']")
    )
    assert sorted(int(s) for s in marked.evaluate_all("rows => rows.map(r => r.dataset.seq)")) == [
        *runs,
        save,
    ]
    context.close()


def test_the_operator_sets_a_sessions_policy_in_the_sessions_page(
    shared_stack: Stack, browser: Browser
) -> None:
    operator = (shared_stack.world / "interviewer" / "operator-token").read_text().strip()
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(f"{shared_stack.url}/?token={operator}")
    form = page.locator("#new-session")
    form.locator("input[name=candidate]").fill("Grace")
    form.locator("select[name=assistance]").select_option("not-allowed")
    form.locator("input[name=workspace_only]").check()
    form.locator("button[type=submit]").click()
    page.wait_for_selector("#new-links input.copy")
    row = page.locator("#sessions tbody tr", has_text="Grace")
    row.wait_for()
    assert "help not allowed · workspace only" in row.inner_text()
    context.close()


def test_the_sessions_pages_actions_checkbox_reaches_the_stacks_rule(
    shared_stack: Stack, browser: Browser
) -> None:
    """Ticked, the checkbox asks for a session with actions on; on a stack with other sessions
    the page shows why there is none, and none is made."""
    operator = (shared_stack.world / "interviewer" / "operator-token").read_text().strip()
    listed = HTTP.get(
        shared_stack.url + "/api/sessions", headers={"Authorization": f"Bearer {operator}"}
    )
    before = len(listed.json())
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(f"{shared_stack.url}/?token={operator}")
    form = page.locator("#new-session")
    form.locator("input[name=candidate]").fill("Hopper")
    form.locator("input[name=actions]").check()
    form.locator("button[type=submit]").click()
    error = page.locator("#new-links")
    error.get_by_text("a session with actions on must").wait_for(timeout=WAIT_MS)
    assert page.locator("#new-links input.copy").count() == 0
    context.close()
    listed = HTTP.get(
        shared_stack.url + "/api/sessions", headers={"Authorization": f"Bearer {operator}"}
    )
    assert len(listed.json()) == before


def test_a_session_created_with_actions_off_lists_actions_and_applies_none(
    shared_stack: Stack,
) -> None:
    stack = new_session(shared_stack, "observer", "--actions", "off")
    listed = HTTP.get(stack.url + "/api/actions", headers=stack.candidate, timeout=10)
    assert listed.status_code == 200 and listed.json()["actions"]
    reply = HTTP.post(
        stack.url + "/api/actions",
        json={"action": "set-decision-threshold", "params": {"threshold": 0.2}},
        headers=stack.candidate,
        timeout=10,
    )
    assert reply.status_code == 403 and "actions are off" in reply.json()["detail"]
    actions = [i for i in _review(stack)["timeline"] if i["kind"] == "action"]
    assert [a["detail"]["status"] for a in actions] == ["refused"]


def test_a_workspace_only_session_refuses_the_script_and_works_in_the_browser(
    shared_stack: Stack, browser: Browser
) -> None:
    stack = new_session(shared_stack, "strict", "--assistance", "not-allowed", "--workspace-only")
    for method, path, body in (
        ("GET", "/api/clock", None),
        ("POST", "/api/sql", {"sql": QUERIES[0]}),
        ("GET", "/services/mlflow/api/2.0/mlflow/registered-models/search", None),
    ):
        reply = HTTP.request(
            method, stack.url + path, json=body, headers=stack.candidate, timeout=30
        )
        assert reply.status_code == 403, path
        assert "this session's policy is workspace only" in reply.json()["detail"]

    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    failed: list[str] = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto(stack.candidate_url)
    assert "Work on your own" in page.locator("#policy").inner_text()
    page.get_by_role("link", name="SQL console", exact=True).first.click()
    page.wait_for_selector(".table-node")
    _type_and_run(page, QUERIES[0])
    assert page.locator("#grid tbody tr").count() >= 1
    page.get_by_role("link", name="Dashboards", exact=True).first.click()
    _dashboard_ready(page)
    page.get_by_role("link", name="Models", exact=True).first.click()
    page.wait_for_selector("[data-model]", timeout=WAIT_MS)
    context.close()
    assert failed == []

    review = _review(stack)
    assert review["session"]["policy"] == {"assistance": "not-allowed", "workspace_only": True}
    refused = [i for i in review["timeline"] if i["kind"] == "refused"]
    assert len(refused) == 3 and {i["detail"]["refused"] for i in refused} == {"workspace only"}
    found = _signals(review)
    assert found["outside-workspace"] == [i["seq"] for i in refused]
    assert found["probing"] == [i["seq"] for i in refused]
