"""What every live process shares: where the world is, the simulated clock, telemetry and logs,
and how it is started (`python -m sandbox.services.NAME --world DIR --port P`)."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from sandbox import scenario
from sandbox.clock import Calendar
from sandbox.difficulty import Tier
from sandbox.faults.base import FaultSet, WorldData
from sandbox.layout import WorldPaths, read_manifest, world_difficulty
from sandbox.services.settings import Settings, SettingsError
from sandbox.services.simclock import CLOCK_FILE, SimClock
from sandbox.services.spool import SpoolWriter, spool_path

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

HEALTH_PATH = "/health"
# The gateway names the candidate session a proxied call comes from, so the rows the call produces
# are that session's own; a client's own value is dropped at the gateway.
SESSION_HEADER = "x-sandbox-session"
CLOCK_CHECK_EVERY = 0.5  # wall seconds between looks at the clock file


@dataclass
class ServiceContext:
    """One live process's view of its world. `service` names it in logs and telemetry."""

    world: Path
    service: str
    _writers: dict[str, SpoolWriter] = field(default_factory=dict)
    _clock: SimClock | None = None
    _clock_mtime: int = 0
    _clock_checked: float = 0.0

    @cached_property
    def paths(self) -> WorldPaths:
        return WorldPaths(self.world)

    @cached_property
    def scenario(self) -> scenario.Scenario:
        # Server-side only: processes read the scenario for its calendar and to keep planted
        # behaviour acting live; nothing from it is ever sent to a client. The file is the
        # scenario as given; the seed and scale the world was built with are in the manifest.
        manifest = read_manifest(self.world)
        return scenario.load(self.paths.scenario).with_overrides(
            seed=manifest["seed"], scale=manifest["scale"]
        )

    @cached_property
    def fault_set(self) -> FaultSet:
        """What is planted, acting live; hooks read the built world."""
        return self.scenario.fault_set.with_data(WorldData.read_only(self.paths.duckdb))

    @cached_property
    def calendar(self) -> Calendar:
        return scenario.world_spec(self.paths.scenario).calendar()

    @cached_property
    def difficulty(self) -> Tier:
        return world_difficulty(self.world)

    @cached_property
    def seed(self) -> int:
        return int(read_manifest(self.world)["seed"])

    @property
    def clock(self) -> SimClock:
        """The shared clock, re-read when the supervisor rewrites it (it starts the clock once
        the stack is healthy, and may resume, pause or change its speed)."""
        wall = time.monotonic()
        if self._clock is None or wall - self._clock_checked >= CLOCK_CHECK_EVERY:
            self._clock_checked = wall
            try:
                mtime = (self.paths.run / CLOCK_FILE).stat().st_mtime_ns
                if self._clock is None or mtime != self._clock_mtime:
                    self._clock, self._clock_mtime = SimClock.load(self.paths.run), mtime
            except (OSError, ValueError, KeyError):
                if self._clock is None:
                    raise
        return self._clock

    def now(self) -> dt.datetime:
        return self.clock.now()

    def reload_clock(self) -> None:
        """Read the clock file at the next look, for the process that just rewrote it."""
        self._clock = None

    def spool(self, table: str) -> SpoolWriter:
        if table not in self._writers:
            self._writers[table] = SpoolWriter(spool_path(self.paths.run, self.service, table))
        return self._writers[table]

    def log(
        self, level: str, event: str, message: str, *, session_id: str | None = None, **attrs: Any
    ) -> None:
        """A structured log line in the candidate's logs (telemetry.logs), stamped in sim time;
        `session_id` when a candidate session's call wrote it (only that session sees it)."""
        self.log_as(self.service, level, event, message, session_id=session_id, **attrs)

    def log_as(
        self,
        service: str,
        level: str,
        event: str,
        message: str,
        *,
        session_id: str | None = None,
        **attrs: Any,
    ) -> None:
        """`log` for a component this process plays the part of (the model server reads the
        online store in-process; its reads are the feature server's lines)."""
        self.log_at(self.now(), service, level, event, message, session_id=session_id, **attrs)

    def log_at(
        self,
        ts: dt.datetime,
        service: str,
        level: str,
        event: str,
        message: str,
        *,
        session_id: str | None = None,
        **attrs: Any,
    ) -> None:
        """`log_as` stamped `ts` rather than now: a line about something that happens later in
        simulated time shows in the candidate's logs once the clock reaches it."""
        line = {
            "ts": ts.isoformat(),
            "service": service,
            "level": level,
            "event": event,
            "message": message,
            "attrs": json.dumps(attrs, sort_keys=True, default=str),
        }
        if session_id is not None:
            line["session_id"] = session_id
        self.spool("telemetry.logs").write(line)


def service_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    add_fd_option(parser)
    return parser.parse_args()


def add_fd_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fd",
        type=int,
        help="serve on this listening socket (inherited) instead of binding --host and --port",
    )


def server_options(host: str, port: int, settings: Settings) -> dict[str, Any]:
    """How every service's uvicorn runs (`uvicorn.run`/`uvicorn.Config` keywords): the request
    limits of `limits` on the connection, as the settings have them."""
    from sandbox.services import limits

    return dict(
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        # h11 refuses a header block over its cap (httptools, the default when installed, buffers
        # any size), and this subclass closes a connection whose headers are late: uvicorn has no
        # header deadline of its own, so a client could hold connections open a byte at a time.
        http=limits.BoundedH11.bounded(settings.header_timeout_s),
        h11_max_incomplete_event_size=settings.max_header_bytes,
        # An idle kept-alive connection is closed this soon: browsers reconnect at no cost.
        timeout_keep_alive=settings.keep_alive_s,
        # Beyond this many requests in flight, 503 at once: each may buffer a body up to the
        # body cap, so this bounds the memory requests can take.
        limit_concurrency=settings.max_concurrent_requests,
    )


def serve(app: Any, host: str, port: int, settings: Settings, fd: int | None = None) -> None:
    """Serve `app` until stopped; on the inherited socket `fd` when given (`sandbox up` binds
    every port itself, so two stacks started at once cannot take each other's)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, **server_options(host, port, settings)))
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C on a service run by hand
        server.run(sockets=None if fd is None else [socket.socket(fileno=fd)])
    if not server.started:
        sys.exit(3)  # as `uvicorn.run` exits when it could not start


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a line per scrape would fill the process log


def metrics_server(
    registry: CollectorRegistry, host: str, port: int, fd: int | None = None
) -> WSGIServer:
    """prometheus_client's `/metrics` server in a daemon thread, on the inherited socket `fd`
    when given (as `serve`)."""
    from prometheus_client import make_wsgi_app, start_http_server
    from prometheus_client.exposition import ThreadingWSGIServer

    if fd is None:
        httpd, _ = start_http_server(port, addr=host, registry=registry)
        return httpd
    httpd = ThreadingWSGIServer((host, port), _QuietHandler, bind_and_activate=False)
    httpd.socket.close()
    httpd.socket = socket.socket(fileno=fd)
    httpd.server_name, httpd.server_port = host, port  # what binding would have set
    httpd.setup_environ()
    httpd.set_app(make_wsgi_app(registry))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def settings_or_exit() -> Settings:
    """The settings from the environment, for a service's start: a bad value stops the process
    with the message naming the variable, and no traceback."""
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise SystemExit(f"error: {exc}") from None


WATCH_EVERY_S = 0.5  # wall seconds between a service's looks at the applied actions


def watching(
    look: Callable[[], None], name: str
) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A FastAPI lifespan that calls `look()` every WATCH_EVERY_S in a thread for the app's life:
    changes applied from the ops console are carried out while nobody calls the service, too."""

    def loop(stop: threading.Event) -> None:
        while not stop.wait(WATCH_EVERY_S):
            look()

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        stop = threading.Event()
        threading.Thread(target=loop, args=(stop,), name=name, daemon=True).start()
        try:
            yield
        finally:
            stop.set()

    return lifespan
