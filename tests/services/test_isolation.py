"""Sessions on one stack do not see each other. The real model server and retrieval service write
their rows into the world's run directory, called as the gateway's proxy calls them (naming the
candidate's session) or as the traffic replay does (naming none); the gateway in-process loads
them. A session's own calls show in its tables and dashboards, marked as its own, and nowhere
else; production's traffic is the same for every session."""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import polars as pl
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from sandbox import scenario
from sandbox.layout import WorldPaths
from sandbox.pipeline import deploy
from sandbox.services import model_server, retrieval, stack, traffic
from sandbox.services.common import CLOCK_CHECK_EVERY, SESSION_HEADER
from sandbox.services.gateway.app import create_app
from sandbox.services.simclock import SimClock
from sandbox.services.spool import read_new, spool_path
from sandbox.world.build import BuildSummary
from tests.services.conftest import FROZEN, session_maker, world_paths
from tests.waiting import until

A_TEXT = "ada-7f3: the TV app signs me out every evening and my watchlist is gone"
PRODUCTION_TEXTS = ("My card was charged twice this month", "Video keeps buffering on my phone")
BATCH = 500
T = TypeVar("T")


@dataclass
class Stack:
    paths: WorldPaths
    gateway: TestClient
    model: TestClient
    search: TestClient
    a: dict[str, str]  # session links and tokens
    b: dict[str, str]
    at: dt.datetime  # when the calls were made (simulated)
    live_start: dt.datetime
    customers: list[int]
    a_request_id: int  # A's search
    production_predictions: int = 3  # production's calls so far
    production_searches: int = len(PRODUCTION_TEXTS)

    def sql(self, token: str, sql: str) -> list[list[Any]]:
        reply = self.gateway.post("/api/sql", json={"sql": sql}, headers=_bearer(token))
        assert reply.status_code == 200, reply.text
        return reply.json()["rows"]

    def panel(self, token: str, board: str, panel: str) -> list[list[Any]]:
        reply = self.gateway.get(
            f"/api/dashboards/{board}/panels/{panel}",
            params={"start": self.at.isoformat(), "end": self.now().isoformat()},
            headers=_bearer(token),
        )
        assert reply.status_code == 200, reply.text
        return reply.json()["rows"]

    def now(self) -> dt.datetime:
        return SimClock.load(self.paths.run).now()

    def set_clock(self, at: dt.datetime) -> None:
        cal = scenario.load(self.paths.scenario).world.calendar()
        SimClock.starting(cal, speed=FROZEN, resume_at=at).save(self.paths.run)
        # No process shows a state to wait for: each looks at the clock file every
        # CLOCK_CHECK_EVERY seconds, so after that (and a margin) all of them have seen it.
        time.sleep(CLOCK_CHECK_EVERY + 0.1)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _as(session: dict[str, str]) -> dict[str, str]:
    """The header the gateway's proxy adds to a call it forwards for `session`."""
    return {SESSION_HEADER: session["session_id"]}


def _eventually(read: Callable[[], T], done: Callable[[T], bool], timeout: float = 20.0) -> T:
    """`read()` once `done` holds of it: live rows reach the console within a second or so."""
    seen: list[T] = []

    def check() -> bool:
        seen.append(read())
        return done(seen[-1])

    with contextlib.suppress(AssertionError):  # the caller asserts on what was last seen
        until(check, "live rows in the console", timeout=timeout)
    return seen[-1]


def _customers(paths: WorldPaths, at: dt.datetime) -> list[int]:
    _, snapshot = [s for s in deploy.online_snapshots(paths.online_store) if s[0] <= at][-1]
    return pl.read_parquet(snapshot, columns=["customer_id"])["customer_id"].to_list()


@pytest.fixture(scope="module")
def live(faulty_world: BuildSummary) -> Iterator[Stack]:
    with world_paths(faulty_world) as paths:
        cal = scenario.load(paths.scenario).world.calendar()
        live_start = cal.midnight(cal.last_production_day + 1)
        at = live_start + dt.timedelta(hours=10)  # on a metric bucket's edge: 5 min and 1 hour
        SimClock.starting(cal, speed=FROZEN, resume_at=at).save(paths.run)
        down = stack.ServiceAddress("http://127.0.0.1:9", "/health")
        with (
            TestClient(model_server.create_app(paths.root)) as model,
            TestClient(retrieval.create_app(paths.root)) as search,
            TestClient(create_app(paths.root, services={"model-server": down})) as gateway,
        ):
            make = session_maker(gateway, paths)
            a, b = make("ada"), make("grace")
            customers = _customers(paths, at)
            # Candidate A's own calls: a prediction, a search and a click on its suggestion.
            mine = model.post("/predict", json={"customer_id": customers[0]}, headers=_as(a))
            assert mine.status_code == 200
            found = search.post("/search", json={"text": A_TEXT}, headers=_as(a)).json()
            found_a = found["request_id"]
            click = {"request_id": found_a, "article_id": found["results"][0]["article_id"]}
            assert search.post("/feedback", json=click, headers=_as(a)).status_code == 200
            # Production's traffic, as the replay sends it: no session named.
            for customer in customers[1:4]:
                assert model.post("/predict", json={"customer_id": customer}).status_code == 200
            for i, text in enumerate(PRODUCTION_TEXTS):
                found = search.post("/search", json={"text": text, "k": traffic.TOP_K}).json()
                if i == 0:  # the agent clicks one suggestion of two searches
                    first = found["results"][0]["article_id"]
                    body = {"request_id": found["request_id"], "article_id": first}
                    assert search.post("/feedback", json=body).status_code == 200
            built = Stack(paths, gateway, model, search, a, b, at, live_start, customers, found_a)
            # Two hours on, the metric buckets of the calls are complete and shown.
            built.set_clock(at + dt.timedelta(hours=2))
            yield built


def _searches(live: Stack, token: str) -> list[list[Any]]:
    """Live searches as `token` sees them, once production's own are loaded."""
    return _eventually(
        lambda: live.sql(
            token,
            "SELECT query_text, client, click_rank FROM retrieval.search_log "
            f"WHERE request_ts >= '{live.live_start}' ORDER BY query_text",
        ),
        lambda rows: sum(r[0] in PRODUCTION_TEXTS for r in rows) == len(PRODUCTION_TEXTS),
    )


def test_a_sessions_searches_are_its_own_and_production_is_everyones(live: Stack) -> None:
    production = sorted([text, "production"] for text in PRODUCTION_TEXTS)
    texts = (
        "SELECT query_text FROM retrieval.search_log "
        f"WHERE request_ts >= '{live.live_start}' ORDER BY 1"
    )
    assert _eventually(
        lambda: live.sql(live.b["candidate_token"], texts),
        lambda rows: len(rows) >= len(PRODUCTION_TEXTS),
    ) == [[text] for text in sorted(PRODUCTION_TEXTS)], "nothing of A's search text reaches B"
    mine = _searches(live, live.a["candidate_token"])
    assert [r[:2] for r in mine] == sorted([*production, [A_TEXT, "workspace"]])
    assert next(r[2] for r in mine if r[0] == A_TEXT) == 1, "its own click on its own search"
    others = _searches(live, live.b["candidate_token"])
    assert [r[:2] for r in others] == production, "nothing of A's search text reaches B"
    assert sorted(r[2] for r in others if r[2] is not None) == [1]  # production's one click
    # Nor do the interviewer previewing A's workspace and the operator see A's own calls.
    for token in (live.a["interviewer_token"], stack.admin_token(live.paths)):
        assert [r[:2] for r in _searches(live, token)] == production


def test_a_sessions_predictions_and_log_lines_are_its_own(live: Stack) -> None:
    def predictions(token: str) -> list[list[Any]]:
        return _eventually(
            lambda: live.sql(
                token,
                "SELECT client, count(*), count(DISTINCT customer_id) FROM serving.predictions "
                f"WHERE source = 'online' AND request_ts = '{live.at}' GROUP BY 1 ORDER BY 1",
            ),
            lambda rows: ["production", 3, 3] in rows,
        )

    assert predictions(live.a["candidate_token"]) == [["production", 3, 3], ["workspace", 1, 1]]
    assert predictions(live.b["candidate_token"]) == [["production", 3, 3]]

    def request_lines(token: str) -> list[list[Any]]:
        return live.sql(
            token,
            "SELECT service, client, count(*) FROM telemetry.logs WHERE event = 'request' "
            f"AND ts = '{live.at}' GROUP BY ALL ORDER BY ALL",
        )

    production = [["model-server", "production", 3], ["retrieval", "production", 3]]
    mine = _eventually(lambda: request_lines(live.a["candidate_token"]), lambda r: len(r) == 4)
    assert mine == sorted(
        [*production, ["model-server", "workspace", 1], ["retrieval", "workspace", 2]]
    )
    others = _eventually(lambda: request_lines(live.b["candidate_token"]), lambda r: len(r) >= 2)
    assert others == production

    def logs_page(token: str) -> int:
        reply = live.gateway.get(
            "/api/logs",
            params={"q": str(live.a_request_id), "start": live.at.isoformat()},
            headers=_bearer(token),
        )
        assert reply.status_code == 200, reply.text
        return reply.json()["total"]

    assert logs_page(live.a["candidate_token"]) == 2, "A's search and click, in A's logs"
    assert logs_page(live.b["candidate_token"]) == 0, "...and not in B's"


def test_a_batch_from_one_session_leaves_anothers_online_count_alone(live: Stack) -> None:
    def online(token: str) -> int:
        return live.sql(
            token,
            "SELECT count(*) FROM serving.predictions WHERE source = 'online' "
            f"AND request_ts >= '{live.live_start}'",
        )[0][0]

    b, a = live.b["candidate_token"], live.a["candidate_token"]
    before_b = _eventually(lambda: online(b), lambda n: n >= live.production_predictions)
    before_a = online(a)
    ids = [live.customers[i % len(live.customers)] for i in range(BATCH)]
    batch = {"requests": [{"customer_id": c} for c in ids]}
    reply = live.model.post("/predict/batch", json=batch, headers=_as(live.a))
    assert reply.status_code == 200
    # One production request after it: once B sees that one, B's console has loaded the batch.
    assert live.model.post("/predict", json={"customer_id": ids[0]}).status_code == 200
    live.production_predictions += 1
    assert _eventually(lambda: online(a), lambda n: n >= before_a + BATCH + 1) == (
        before_a + BATCH + 1
    )
    assert _eventually(lambda: online(b), lambda n: n > before_b) == before_b + 1


def test_metrics_and_dashboards_count_production_only(live: Stack) -> None:
    """A's calls (a prediction, a search with a click, maybe a batch) move no one's metrics;
    its own search shows in its own dashboard of searches only."""
    metrics = (
        "SELECT service, metric, value FROM telemetry.metrics WHERE ts = "
        f"'{live.at}' AND metric IN ('requests_per_second', 'click_through_rate') ORDER BY ALL"
    )
    expected = [
        ["model-server", "requests_per_second", round(3 / 300, 6)],
        ["retrieval", "click_through_rate", 0.5],
        ["retrieval", "requests_per_second", round(2 / 3600, 6)],
    ]
    for session in (live.a, live.b):
        token = session["candidate_token"]
        assert _eventually(lambda t=token: live.sql(t, metrics), lambda r: len(r) == 3) == expected
        rates = live.panel(token, "service-health", "request-rate")
        assert sorted((row[1], row[2]) for row in rates) == [
            ("model-server", round(3 / 300, 6)),
            ("retrieval", round(2 / 3600, 6)),
        ]
    searches = {
        name: live.panel(session["candidate_token"], "retrieval", "searches")[0][0]
        for name, session in (("a", live.a), ("b", live.b))
    }
    assert searches["a"] == searches["b"] + 1, "A's own search in A's dashboard only"


def test_the_services_count_production_calls_only_in_their_own_metrics(live: Stack) -> None:
    def samples(client: TestClient, name: str, **labels: str) -> float:
        text = client.get("/metrics").text
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name and labels.items() <= s.labels.items()
        )

    served = samples(live.model, "model_server_predictions_total")
    assert served == live.production_predictions, "only production's predictions"
    predict = samples(live.model, "model_server_requests_total", endpoint="/predict")
    batch = samples(live.model, "model_server_requests_total", endpoint="/predict/batch")
    assert (predict, batch) == (live.production_predictions, 0)
    assert samples(live.search, "retrieval_searches_total") == live.production_searches
    assert samples(live.search, "retrieval_clicks_total") == 1


def test_each_row_carries_the_session_whose_call_made_it(live: Stack) -> None:
    run = live.paths.run
    predictions, _ = read_new(spool_path(run, model_server.SERVICE, "serving.predictions"), 0)
    sessions = {row.get("session_id") for row in predictions}
    assert sessions == {None, live.a["session_id"]}
    searches, _ = read_new(spool_path(run, retrieval.SERVICE, "retrieval.search_log"), 0)
    mine = [row for row in searches if row.get("session_id") == live.a["session_id"]]
    assert [row["query_text"] for row in mine] == [A_TEXT]
    clicks, _ = read_new(spool_path(run, retrieval.SERVICE, "retrieval.search_clicks"), 0)
    assert [c.get("session_id") for c in clicks if c["request_id"] == live.a_request_id] == [
        live.a["session_id"]
    ]
    logs, _ = read_new(spool_path(run, retrieval.SERVICE, "telemetry.logs"), 0)
    about_mine = [
        line.get("session_id") for line in logs if str(live.a_request_id) in line["attrs"]
    ]
    assert about_mine == [live.a["session_id"]] * 2, "the search's and the click's log lines"


def test_a_session_cannot_click_on_production_searches(live: Stack) -> None:
    found = live.search.post("/search", json={"text": PRODUCTION_TEXTS[1]}).json()
    live.production_searches += 1
    body = {"request_id": found["request_id"], "article_id": found["results"][0]["article_id"]}
    assert live.search.post("/feedback", json=body, headers=_as(live.b)).status_code == 404
    clicks = spool_path(live.paths.run, retrieval.SERVICE, "retrieval.search_clicks")
    assert found["request_id"] not in {c["request_id"] for c in read_new(clicks, 0)[0]}


@pytest.mark.parametrize("value", ["", "a b", "../x", "a.b", "x" * 65])
def test_a_malformed_session_header_is_refused_and_writes_nothing(live: Stack, value: str) -> None:
    spooled = [
        spool_path(live.paths.run, model_server.SERVICE, "serving.predictions"),
        spool_path(live.paths.run, retrieval.SERVICE, "retrieval.search_log"),
    ]
    sizes = [path.stat().st_size for path in spooled]
    bad = {SESSION_HEADER: value}
    reply = live.model.post("/predict", json={"customer_id": live.customers[0]}, headers=bad)
    assert reply.status_code == 400 and SESSION_HEADER in reply.json()["detail"]
    assert live.search.post("/search", json={"text": "x"}, headers=bad).status_code == 400
    assert [path.stat().st_size for path in spooled] == sizes


def test_the_schema_browser_describes_the_client_column(live: Stack) -> None:
    schema = live.gateway.get("/api/schema", headers=_bearer(live.a["candidate_token"])).json()
    tables = {t["table"]: {c["name"]: c for c in t["columns"]} for t in schema}
    for table in ("serving.predictions", "retrieval.search_log", "telemetry.logs"):
        client = tables[table]["client"]
        assert client["type"] == "VARCHAR" and "workspace" in client["description"]
