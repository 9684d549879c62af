"""Fixtures for the gateway in-process: the shared small world with its run state cleared, a
client on a frozen clock (no other service running), and candidate sessions."""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import Browser, sync_playwright

from sandbox import scenario
from sandbox.layout import WorldPaths
from sandbox.review.store import LEGACY_SESSIONS_FILE, SESSIONS_FILE
from sandbox.schema import FEATURES
from sandbox.services import stack
from sandbox.services.console.telemetry import LiveTelemetry
from sandbox.services.gateway.app import create_app
from sandbox.services.settings import Settings
from sandbox.services.simclock import SimClock
from sandbox.services.spool import SpoolWriter, spool_path
from sandbox.world.build import BuildSummary
from tests.services.running import Stack, running_stack

FROZEN = 1e-9  # a clock this slow stands still for the length of a test
MakeSession = Callable[..., dict[str, str]]


def _cleanup(paths: WorldPaths) -> None:
    shutil.rmtree(paths.run, ignore_errors=True)
    for name in (SESSIONS_FILE, LEGACY_SESSIONS_FILE):
        for stored in paths.interviewer.glob(name + "*"):  # the file, its WAL and shared memory
            stored.unlink(missing_ok=True)
    (paths.interviewer / stack.ADMIN_TOKEN_FILE).unlink(missing_ok=True)


@contextlib.contextmanager
def world_paths(built: BuildSummary) -> Iterator[WorldPaths]:
    """A shared world with no run state or sessions before and after."""
    paths = WorldPaths(built.root)
    _cleanup(paths)
    try:
        yield paths
    finally:
        _cleanup(paths)


@contextlib.contextmanager
def gateway_client(
    paths: WorldPaths, query_time_limit_s: float = 10.0, settings: Settings | None = None
) -> Iterator[TestClient]:
    """The gateway on a clock standing at the start of live time; its model server is down.
    `settings` are the stack's (their defaults with `query_time_limit_s` when None)."""
    calendar = scenario.load(paths.scenario).world.calendar()
    SimClock.starting(calendar, speed=FROZEN).save(paths.run)
    down = stack.ServiceAddress("http://127.0.0.1:9", "/health")  # discard port: nothing listens
    settings = settings or Settings(query_time_limit_s=query_time_limit_s)
    app = create_app(paths.root, services={"model-server": down}, settings=settings)
    with TestClient(app) as c:
        yield c


def session_maker(client: TestClient, paths: WorldPaths) -> MakeSession:
    """Creates sessions as the operator; each call returns a session's links and tokens."""

    def make(
        candidate: str = "ada", time_limit_min: int | None = None, **policy: Any
    ) -> dict[str, str]:
        """`policy`: the session's `assistance`, `workspace_only` and `actions`, as the API takes
        them."""
        admin = {"Authorization": f"Bearer {stack.admin_token(paths)}"}
        reply = client.post(
            "/api/sessions",
            json={"candidate": candidate, "time_limit_min": time_limit_min, **policy},
            headers=admin,
        )
        assert reply.status_code == 200, reply.text
        return reply.json()

    return make


@pytest.fixture
def paths(faulty_world: BuildSummary) -> Iterator[WorldPaths]:
    with world_paths(faulty_world) as paths:
        yield paths


@pytest.fixture
def client(paths: WorldPaths) -> Iterator[TestClient]:
    with gateway_client(paths) as c:
        yield c


@pytest.fixture
def make_session(client: TestClient, paths: WorldPaths) -> MakeSession:
    return session_maker(client, paths)


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, for the tests that drive the workspace as a person does."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is missing: `make test` installs it")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


SHARED_SPEED = 120.0  # two simulated minutes a second: live rows arrive while a test waits


@pytest.fixture(scope="session")
def shared_stack(
    faulty_world: BuildSummary, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """One `sandbox up --prometheus` for the tests that leave the stack as they found it (each
    module drives it through a session of its own). Starting a stack costs ~10 s, so they share
    it; run in one process those tests come last (tests/conftest.py)."""
    if shutil.which("prometheus") is None:
        pytest.fail("Debian's prometheus is missing: `make test` installs it")
    with running_stack(faulty_world, tmp_path_factory, SHARED_SPEED, ("--prometheus",)) as running:
        yield running


def online_prediction(at: dt.datetime, customer_id: int) -> dict:
    """An online prediction as the model server spools it; no prediction_id: the gateway
    numbers it."""
    return {
        "request_ts": at.isoformat(),
        "source": "online",
        "customer_id": customer_id,
        "model_name": "churn-model",
        "model_version": "1",
        **dict.fromkeys(FEATURES),
        "score": 0.5,
        "threshold": 0.1,
        "decision": True,
        "latency_ms": 7.5,
        "status": "ok",
    }


def spool_failing_requests(paths: WorldPaths, start: dt.datetime, count: int = 40) -> None:
    """`count` of production's online requests, 30 s apart from `start`, four in five failing
    (an error ratio of 0.8 in every 5-minute bucket), spooled as the model server spools them."""
    SpoolWriter(spool_path(paths.run, "model-server", "serving.predictions")).write(
        *(
            {
                **online_prediction(start + dt.timedelta(seconds=30 * i), 42),
                "score": None,
                "decision": None,
                "latency_ms": 3.0,
                "status": "ok" if i % 5 == 0 else "error",
            }
            for i in range(count)
        )
    )


def live_store(paths: WorldPaths, at: dt.datetime) -> LiveTelemetry:
    """The candidate's views of `paths`' world on a clock standing at `at`."""
    spec = scenario.load(paths.scenario)
    cal = spec.world.calendar()
    clock = SimClock(at, time.time(), FROZEN, cal.midnight(cal.last_visible_day + 1))
    return LiveTelemetry(
        paths.root,
        clock.now,
        cal.midnight(cal.last_production_day + 1),
        spec.fault_set,
        spec.world.seed,
        cal,
        memory_limit="2GB",
        time_limit_s=Settings().query_time_limit_s,
    )
