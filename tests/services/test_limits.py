"""Request limits against a hostile candidate: bodies over the cap are refused before auth and
before they are held in memory, text that is not Unicode is a 400 on every service, and the
recorded history cannot be flooded or forged."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from sandbox import scenario
from sandbox.layout import WorldPaths
from sandbox.review import store as sessions
from sandbox.review.store import HistoryFull, SessionStore
from sandbox.services import limits, model_server, retrieval, spool
from sandbox.services.common import server_options
from sandbox.services.settings import Settings
from sandbox.services.simclock import SimClock
from sandbox.services.supervisor import free_port
from sandbox.world.build import BuildSummary
from tests.services.conftest import FROZEN, MakeSession
from tests.waiting import until

MB = 1024 * 1024
CHUNK = 64 * 1024
LONE = "\ud800"  # a lone surrogate: JSON can carry it, UTF-8 cannot
# A lone surrogate as JSON text carries it: escaped, and as the bytes `json.loads` also accepts.
LONE_BODIES = (b'"\\ud800"', b'"\xed\xa0\x80"')
DEFAULTS = Settings()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _json_with(template: dict[str, Any], text: bytes) -> bytes:
    """`template` as JSON with its "LONE" value replaced by `text`, a JSON string literal."""
    return json.dumps(template).replace('"LONE"', text.decode("latin-1")).encode("latin-1")


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _peak_growth_mb(action: Callable[[], Any]) -> tuple[Any, float]:
    """What `action` returns, and how far this process's resident memory rose over its starting
    point while it ran (sampled every millisecond)."""
    baseline, peak, done = _rss_kb(), 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_kb())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = action()
    finally:
        done.set()
        sampler.join()
    return result, max(0, max(peak, _rss_kb()) - baseline) / 1024


def _post_streamed(app: Any, path: str, total: int, declared: bool) -> tuple[int, bytes, int]:
    """POST `total` bytes to an ASGI app as a client streaming them would: chunk by chunk, made
    only when the app asks for them. Returns the status, the body and how many bytes were read."""
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += CHUNK
        return {"type": "http.request", "body": b" " * CHUNK, "more_body": pulled < total}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    length = [(b"content-length", str(total).encode())] if declared else []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"), *length],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body, pulled


# The gateway


def test_a_body_over_the_cap_is_refused_before_auth_and_the_largest_real_ones_pass(
    client: TestClient, make_session: MakeSession
) -> None:
    json_type = {"content-type": "application/json"}
    reply = client.post("/api/sql", content=b" " * (DEFAULTS.max_body_bytes + 1), headers=json_type)
    assert reply.status_code == 413, reply.text
    assert "larger than 1024 KiB" in reply.json()["detail"]
    assert reply.headers["connection"] == "close"  # the rest of the body is not waited for
    token = _bearer(make_session()["candidate_token"])
    # 100,000 characters that JSON escapes six bytes each: 600 KB, still answered.
    sql = json.dumps({"sql": "SELECT 1 -- " + "é" * (100_000 - 12)})
    reply = client.post("/api/sql", content=sql, headers={**token, **json_type})
    assert reply.status_code == 200, reply.text
    fields = dict.fromkeys(("root_cause", "evidence", "fix", "ship_first", "next_experiment"))
    diagnosis = {field: "ü" * 20_000 for field in fields}
    assert client.put("/api/diagnosis", json=diagnosis, headers=token).status_code == 200


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_300_mb_upload_without_a_token_is_refused_without_being_held(
    client: TestClient, declared: bool
) -> None:
    (status, body, pulled), growth_mb = _peak_growth_mb(
        lambda: _post_streamed(client.app, "/api/sql", 300 * MB, declared)
    )
    assert status == 413 and b"larger than" in body
    # A declared length is refused before a byte is read; a streamed body once past the cap.
    assert pulled == (0 if declared else DEFAULTS.max_body_bytes + CHUNK)
    assert growth_mb < 8, f"the gateway grew by {growth_mb:.0f} MB"


@pytest.mark.parametrize("text", LONE_BODIES, ids=["escaped", "utf8-bytes"])
def test_text_that_is_not_unicode_is_a_400_on_the_gateway_and_nothing_is_recorded(
    client: TestClient, make_session: MakeSession, text: bytes
) -> None:
    links = make_session()
    token = {**_bearer(links["candidate_token"]), "content-type": "application/json"}
    for method, path, template in (
        ("POST", "/api/sql", {"sql": "LONE"}),
        ("PUT", "/api/diagnosis", {"root_cause": "LONE"}),
        ("POST", "/api/diagnosis/submit", {"fix": "LONE"}),
        ("POST", "/api/events", {"kind": "LONE"}),
        ("POST", "/api/events", {"kind": "paste", "field": "LONE"}),
    ):
        for headers in (token, {"content-type": "application/json"}):  # before auth too
            reply = client.request(
                method, path, content=_json_with(template, text), headers=headers
            )
            assert reply.status_code == 400, (path, reply.text)
            assert "not valid Unicode" in reply.json()["detail"]
    who = _bearer(links["interviewer_token"])
    assert client.get(f"/api/sessions/{links['session_id']}/history", headers=who).json() == []
    assert client.get("/api/diagnosis", headers=token).json()["version"] == 0
    # A query string or a path cannot carry one: they are decoded with replacement characters.
    assert client.get("/api/logs?q=%ED%A0%80", headers=token).status_code == 200
    # Surrogate pairs are ordinary characters.
    emoji = b'{"root_cause": "\\ud83d\\ude00 and \xf0\x9f\x98\x80"}'
    reply = client.put("/api/diagnosis", content=emoji, headers=token)
    assert reply.status_code == 200 and reply.json()["fields"]["root_cause"] == "😀 and 😀"


# The model server and the retrieval service


def _served_view(world: BuildSummary, into: Path) -> WorldPaths:
    """The built world linked, never written, with run state of its own."""
    source = WorldPaths(world.root)
    into.mkdir(parents=True)
    for name in ("candidate", "interviewer", "manifest.json"):
        (into / name).symlink_to((source.root / name).resolve())
    paths = WorldPaths(into)
    calendar = scenario.load(paths.scenario).world.calendar()
    SimClock.starting(calendar, speed=FROZEN).save(paths.run)
    return paths


@pytest.fixture(scope="module")
def services(
    faulty_world: BuildSummary, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, tuple[TestClient, WorldPaths]]]:
    paths = _served_view(faulty_world, tmp_path_factory.mktemp("limits") / "world")
    with (
        TestClient(model_server.create_app(paths.root)) as model,
        TestClient(retrieval.create_app(paths.root)) as search,
    ):
        yield {"model-server": (model, paths), "retrieval": (search, paths)}


SERVICE_BODIES = {
    "model-server": (
        ("/predict", {"features": {"LONE": 1}}),
        ("/predict", {"customer_id": "LONE"}),
        ("/predict/batch", {"requests": [{"customer_id": 1}, {"features": {"tenure": "LONE"}}]}),
    ),
    "retrieval": (
        ("/search", {"text": "LONE"}),
        ("/search", {"text": "my invoice", "k": "LONE"}),
        ("/feedback", {"request_id": "LONE", "article_id": 1}),
    ),
}


def _spooled(paths: WorldPaths) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for _, _, p in spool.spool_files(paths.run)}


@pytest.mark.parametrize("service", list(SERVICE_BODIES))
def test_every_service_refuses_oversized_and_non_unicode_bodies_before_its_routes(
    services: dict[str, tuple[TestClient, WorldPaths]], service: str
) -> None:
    client, paths = services[service]
    json_type = {"content-type": "application/json"}
    for path, template in SERVICE_BODIES[service]:
        for text in LONE_BODIES:
            before = _spooled(paths)
            reply = client.post(path, content=_json_with(template, text), headers=json_type)
            assert reply.status_code == 400, (path, text, reply.text)
            assert "not valid Unicode" in reply.json()["detail"]
            after = _spooled(paths)
            # Only complete log lines of the refusal may have been added, no predictions or
            # searches, and no line torn.
            for name, data in after.items():
                assert data.endswith(b"\n")
                if "telemetry" not in name:
                    assert data == before.get(name, b""), name
        too_big = json.dumps({"text": "x" * DEFAULTS.max_body_bytes}).encode()
        reply = client.post(path, content=too_big, headers=json_type)
        assert reply.status_code == 413 and "larger than" in reply.json()["detail"]


# The server underneath: headers and bodies on a real connection


@pytest.fixture
def small_server() -> Iterator[int]:
    """A real uvicorn, started as the services start theirs, around one route; headers are due
    within half a second."""
    settings = Settings(header_timeout_s=0.5)
    app = FastAPI()
    limits.install(app, settings)

    @app.post("/echo")
    def echo(body: dict[str, Any]) -> dict[str, Any]:
        return body

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, **server_options("127.0.0.1", port, settings)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    until(lambda: server.started, "the server started", timeout=10, every=0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _read_all(conn: socket.socket) -> bytes:
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    return data


def test_headers_that_come_too_slowly_or_too_large_are_cut_off(small_server: int) -> None:
    with socket.create_connection(("127.0.0.1", small_server), timeout=5) as conn:
        conn.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\n")  # ...and the rest never comes
        started = time.monotonic()
        assert _read_all(conn) == b""
        assert time.monotonic() - started < 3
    answer = bytearray()
    with socket.create_connection(("127.0.0.1", small_server), timeout=5) as conn:

        def read() -> None:
            # Read while sending: the server answers and hangs up mid-request, and the reset
            # that follows would discard an answer nobody had read yet.
            with contextlib.suppress(OSError):
                while chunk := conn.recv(65536):
                    answer.extend(chunk)

        reader = threading.Thread(target=read)
        reader.start()
        with contextlib.suppress(OSError):
            conn.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
            for _ in range(8):  # in pieces, as a slow client would: 32 KB of one header
                conn.sendall(b"X-Padding: " + b"a" * 4096 + b"\r\n")
                time.sleep(0.01)
        reader.join(timeout=10)
    assert answer.startswith(b"HTTP/1.1 400"), bytes(answer[:200])


def test_a_body_that_stops_arriving_is_answered_408() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("a late body never reaches the app")

    sent: list[dict[str, Any]] = []

    async def stalled() -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
    started = time.monotonic()
    asyncio.run(
        limits.RequestLimits(app, DEFAULTS.max_body_bytes, body_timeout_s=0.2)(scope, stalled, send)
    )
    assert time.monotonic() - started < 2
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
    assert b"did not arrive within 0.2 s" in sent[1]["body"]


def test_a_chunked_body_over_the_cap_is_answered_413_and_the_connection_closed(
    small_server: int,
) -> None:
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    answer = bytearray()
    sent = 0
    with socket.create_connection(("127.0.0.1", small_server), timeout=5) as conn:

        def read() -> None:
            with contextlib.suppress(OSError):  # the reset after the server hangs up
                while chunk := conn.recv(65536):
                    answer.extend(chunk)

        reader = threading.Thread(target=read)
        reader.start()
        conn.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
        piece = b"%x\r\n%s\r\n" % (CHUNK, b" " * CHUNK)
        with contextlib.suppress(OSError):
            while sent < 300 * MB:
                conn.sendall(piece)
                sent += CHUNK
        reader.join(timeout=10)
    assert answer.startswith(b"HTTP/1.1 413") and b"larger than" in answer
    assert sent < 300 * MB  # the server hung up instead of reading on
    with socket.create_connection(("127.0.0.1", small_server), timeout=5) as conn:
        body = b'{"a": "\\ud800"}'
        conn.sendall(head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        assert conn.recv(65536).startswith(b"HTTP/1.1 400")


# The recorded history


def test_client_events_are_rate_limited_per_session(
    client: TestClient, make_session: MakeSession
) -> None:
    token = _bearer(make_session()["candidate_token"])
    paste = {"kind": "paste", "field": "fix", "chars": 10}
    answers = [client.post("/api/events", json=paste, headers=token) for _ in range(300)]
    codes = [a.status_code for a in answers]
    allowed = DEFAULTS.client_events_per_minute
    assert codes == [204] * allowed + [429] * (300 - allowed)
    assert "too many" in answers[-1].json()["detail"] and int(answers[-1].headers["retry-after"])
    other = _bearer(make_session("grace")["candidate_token"])
    assert client.post("/api/events", json=paste, headers=other).status_code == 204


def test_client_events_that_carry_more_than_their_fields_are_refused(
    client: TestClient, make_session: MakeSession
) -> None:
    links = make_session()
    token = _bearer(links["candidate_token"])
    padded = {"kind": "paste", "field": "fix", "chars": 10, "note": "x" * 100_000}
    for _ in range(5):
        reply = client.post("/api/events", json=padded, headers=token)
        assert reply.status_code == 422 and reply.json()["detail"][0]["loc"] == ["body", "note"]
    reply = client.post("/api/events", json={"kind": "paste", "chars": 25_000}, headers=token)
    assert reply.status_code == 422 and "20000" in reply.json()["detail"][0]["msg"]
    who = _bearer(links["interviewer_token"])
    assert client.get(f"/api/sessions/{links['session_id']}/history", headers=who).json() == []


class WallClock:
    """The sessions' wall clock, moved by hand."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC).replace(tzinfo=None)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@pytest.fixture
def wall(monkeypatch: pytest.MonkeyPatch) -> WallClock:
    clock = WallClock()
    monkeypatch.setattr(sessions, "_utcnow", clock)
    return clock


def test_time_away_cannot_add_up_to_more_than_the_time_that_passed(
    client: TestClient, make_session: MakeSession, wall: WallClock
) -> None:
    links = make_session()
    token = _bearer(links["candidate_token"])
    client.get("/api/clock", headers=token)  # the workspace opens: the session starts
    wall.advance(60)
    forged = [
        client.post("/api/events", json={"kind": "away", "seconds": 86_400}, headers=token)
        for _ in range(20)
    ]
    assert {f.status_code for f in forged} == {422}
    assert "more than" in forged[0].json()["detail"][0]["msg"]
    away = {"kind": "away", "seconds": 55}
    assert client.post("/api/events", json=away, headers=token).status_code == 204
    # The same absence twice, or one that began before the last one ended: refused.
    assert client.post("/api/events", json=away, headers=token).status_code == 422
    wall.advance(40)
    assert client.post("/api/events", json=away, headers=token).status_code == 422
    assert client.post("/api/events", json=away | {"seconds": 39}, headers=token).status_code == 204
    history = client.get(
        f"/api/sessions/{links['session_id']}/history?kind=away",
        headers=_bearer(links["interviewer_token"]),
    ).json()
    assert [e["detail"]["seconds"] for e in history] == [55, 39]


def test_a_session_history_is_capped_and_keeps_what_it_holds(
    client: TestClient, make_session: MakeSession
) -> None:
    links = make_session()
    token = _bearer(links["candidate_token"])
    fields = ("root_cause", "evidence", "fix", "ship_first", "next_experiment")
    answers = []
    for i in range(300):  # 300 saves of 100 KB each
        body = {field: f"{i:05d}" + "x" * 19_995 for field in fields}
        answers.append(client.put("/api/diagnosis", json=body, headers=token))
        if answers[-1].status_code != 200:
            break
    accepted = sum(a.status_code == 200 for a in answers)
    assert answers[-1].status_code == 413, answers[-1].text
    assert "history is full" in answers[-1].json()["detail"]
    assert accepted < 300 and accepted * 100_000 <= sessions.MAX_HISTORY_BYTES
    who = _bearer(links["interviewer_token"])
    history = client.get(f"/api/sessions/{links['session_id']}/history", headers=who).json()
    assert [e["detail"]["version"] for e in history] == list(range(1, accepted + 1))
    assert client.get("/api/diagnosis", headers=token).json()["version"] == accepted
    # What does not fit is refused; what still fits is recorded; nothing is lost either way.
    big = client.post("/api/sql", json={"sql": "SELECT 1 -- " + "x" * 99_000}, headers=token)
    assert big.status_code == 413 and "history is full" in big.json()["detail"]
    assert client.post("/api/sql", json={"sql": "SELECT 1"}, headers=token).status_code == 200
    history = client.get(f"/api/sessions/{links['session_id']}/history", headers=who).json()
    assert [e["kind"] for e in history] == ["diagnosis"] * accepted + ["sql"]


def test_the_history_cap_counts_events_of_every_kind(tmp_path: Path) -> None:
    store = SessionStore(tmp_path, {}, max_events=5, max_bytes=10_000)
    session = store.create("ada").id
    now = dt.datetime(2026, 1, 1)
    for kind in ("page", "sql", "panel", "paste", "service"):
        store.record(session, now, kind, {"n": 1})
    with pytest.raises(HistoryFull) as refused:
        store.record(session, now, "page", {})
    assert refused.value.status_code == 429
    other = store.create("grace").id
    with pytest.raises(HistoryFull) as refused:
        store.record(other, now, "sql", {"sql": "x" * 10_000})
    assert refused.value.status_code == 413
    assert len(store.history(session)) == 5 and store.history(other) == []
    store.close()
    reopened = SessionStore(tmp_path, {}, max_events=5, max_bytes=10_000)  # counted from the file
    with pytest.raises(HistoryFull):
        reopened.record(session, now, "page", {})
    reopened.close()
