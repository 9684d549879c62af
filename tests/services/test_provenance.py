"""Where a request came from and whether it overlapped another, decided without a world: page
tokens, the classification of requests, and the overlap rule on requests in flight."""

from __future__ import annotations

from sandbox.services.gateway.provenance import (
    PAGE_HEADER,
    USER_AGENT_MAX,
    Flights,
    PageTokens,
    Provenance,
    provenance,
)

TOKENS = PageTokens("the operator's secret")
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) Chrome/120"


def _where(
    headers: dict[str, str], *, method: str = "GET", path: str = "/api/clock", by_cookie: bool
) -> Provenance:
    return provenance(TOKENS, "s1", method=method, path=path, headers=headers, by_cookie=by_cookie)


def test_a_page_token_names_its_page_for_its_own_session_only() -> None:
    page_id, token = TOKENS.mint("s1")
    assert TOKENS.page_of(token, "s1") == page_id
    assert TOKENS.page_of(token, "s2") is None
    assert PageTokens("another secret").page_of(token, "s1") is None
    session, page, signature = token.split(".")
    assert TOKENS.page_of(f"{session}.{page}x.{signature}", "s1") is None
    assert TOKENS.page_of(f"s2.{page}.{signature}", "s2") is None
    assert TOKENS.page_of("", "s1") is None and TOKENS.page_of("a.b", "s1") is None
    assert TOKENS.mint("s1")[0] != page_id  # every page instance its own


def test_requests_with_the_page_token_are_the_workspace_whoever_signed_them_in() -> None:
    page_id, token = TOKENS.mint("s1")
    for by_cookie in (True, False):
        where = _where({PAGE_HEADER: token, "user-agent": BROWSER}, by_cookie=by_cookie)
        assert where == Provenance("workspace", page_id, BROWSER)


def test_a_bearer_client_is_the_api_whatever_it_calls_itself() -> None:
    browser_like = {"user-agent": BROWSER, "accept": "text/html"}
    assert _where(browser_like, by_cookie=False).client == "api"
    assert _where(browser_like, path="/services/mlflow/", by_cookie=False).client == "api"
    other = {PAGE_HEADER: TOKENS.mint("s2")[1]}
    assert _where(other, method="POST", path="/api/sql", by_cookie=False).client == "api"


def test_a_signed_in_browser_loading_pages_and_the_embedded_uis_is_the_workspace() -> None:
    page_load = {"accept": "text/html,application/xhtml+xml", "user-agent": BROWSER}
    assert _where(page_load, path="/sql", by_cookie=True).client == "workspace"
    mlflow = {"accept": "application/json"}
    for path in ("/services/mlflow/ajax-api/2.0/mlflow/runs/search", "/services/prometheus/graph"):
        assert _where(mlflow, method="POST", path=path, by_cookie=True).client == "workspace"
    # the browser's own fetches without the page's token: not a page of the workspace
    assert _where({"accept": "*/*"}, method="POST", path="/api/sql", by_cookie=True).client == (
        "api"
    )
    assert _where({"accept": "text/html"}, method="POST", path="/", by_cookie=True).client == "api"


def test_the_user_agent_is_kept_short() -> None:
    where = _where({"user-agent": "x" * 10_000}, by_cookie=False)
    assert where.user_agent == "x" * USER_AGENT_MAX
    assert _where({}, by_cookie=False).user_agent == ""


def _flight(
    flights: Flights, session: str, client: str, page: str | None = None, sql: bool = False
) -> int:
    flight = flights.begin()
    where = Provenance("workspace" if client == "workspace" else "api", page, "")
    method, path = ("POST", "/api/sql") if sql else ("GET", "/api/clock")
    flights.identify(flight, session, where, method, path)
    return flight


def test_a_workspace_loading_many_things_at_once_never_overlaps() -> None:
    flights = Flights()
    panels = [_flight(flights, "s1", "workspace", "dashboard") for _ in range(8)]
    clock = _flight(flights, "s1", "workspace", "other-tab")
    page_load = _flight(flights, "s1", "workspace")
    one_run = _flight(flights, "s1", "workspace", "sql", sql=True)
    other_tab_run = _flight(flights, "s1", "workspace", "sql-2", sql=True)
    assert not any(flights.overlapped(f) for f in [*panels, clock, page_load, one_run])
    assert not flights.overlapped(other_tab_run)


def test_two_sql_runs_of_one_page_overlap_because_the_page_sends_one_at_a_time() -> None:
    flights = Flights()
    first = _flight(flights, "s1", "workspace", "sql", sql=True)
    second = _flight(flights, "s1", "workspace", "sql", sql=True)
    assert flights.overlapped(first) and flights.overlapped(second)


def test_a_client_outside_the_workspace_overlaps_whatever_else_is_in_flight() -> None:
    flights = Flights()
    first = _flight(flights, "s1", "api")
    assert not flights.overlapped(first)
    second = _flight(flights, "s1", "api")
    other_session = _flight(flights, "s2", "api")
    assert flights.overlapped(first) and flights.overlapped(second)
    assert not flights.overlapped(other_session)
    flights.end(first)
    flights.end(second)
    # one that ended before this one began does not overlap it
    later = _flight(flights, "s1", "api")
    assert not flights.overlapped(later)


def test_a_request_that_ended_after_another_began_still_overlaps_it() -> None:
    flights = Flights()
    script = _flight(flights, "s1", "api")
    page = _flight(flights, "s1", "workspace", "brief")
    flights.end(page)  # recorded after the other was done
    assert flights.overlapped(script)


def test_requests_never_signed_in_as_a_candidate_are_not_kept() -> None:
    flights = Flights()
    anonymous = flights.begin()
    flights.end(anonymous)
    assert not flights.overlapped(anonymous)
    for _ in range(Flights.KEPT_MAX + 50):
        flights.end(_flight(flights, "s1", "api"))
    assert len(flights._by_session["s1"]) == Flights.KEPT_MAX
    assert len(flights._flights) == Flights.KEPT_MAX
