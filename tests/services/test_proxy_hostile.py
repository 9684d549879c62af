"""The proxy behind `/services/` against a hostile candidate: every MLflow write, through every
encoding trick on both API prefixes, against a real MLflow UI on a copy of the test world's
registry, leaves its database as it was; a client's Accept-Encoding is honoured; the session header
is the gateway's, never the client's; and every refusal is in the candidate's history.

The gateway runs in a real server and requests are sent as raw bytes: an HTTP client library would
tidy the `..` segments away before they reached it.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import json
import os
import shutil
import sqlite3
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn

from sandbox import scenario
from sandbox.layout import WorldPaths
from sandbox.services import stack
from sandbox.services.common import SESSION_HEADER
from sandbox.services.gateway.app import create_app
from sandbox.services.simclock import SimClock
from sandbox.services.supervisor import free_port, mlflow_ui
from sandbox.world.build import BuildSummary
from tests.http_client import HTTP
from tests.services.conftest import FROZEN, world_paths
from tests.waiting import until

MLFLOW_READY_S = 90.0
MLFLOW_PREFIXES = ("api/2.0/mlflow", "ajax-api/2.0/mlflow")
# Each trick makes a path that a check on the decoded path, or a server that decodes or
# normalizes it, could read as something other than the write it reaches.
TRICKS: dict[str, str] = {
    "plain": "{p}/{e}",
    "%3F": "{p}/{e}%3F/search",
    "%23": "{p}/{e}%23/search",
    "%2F": "{p}/registered-models/search%2F..%2F..%2F{e}",
    "%252F": "{p}/{e}%252F/search",
    "..": "{p}/registered-models/search/../../{e}",
    "%2E%2E": "{p}/registered-models/search/%2E%2E/%2E%2E/{e}",
    "..;": "{p}/registered-models/search/..;/..;/{e}",
    ";": "{p}/{e};/search",
    "%00": "{p}/{e}%00/search",
    "%5C": "{p}/{e}%5C/search",
    "\\": "{p}/{e}\\/search",
}
PAYLOAD = {"status": "success", "data": {"resultType": "vector", "result": []}}


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Gateway:
    url: str
    admin: dict[str, str]
    mlflow_db: Path

    def send(
        self,
        method: str,
        target: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """`target` exactly as given: no client-side quoting or dot-segment removal, and no
        Accept-Encoding unless `headers` has one."""
        parts = urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        try:
            conn.putrequest(method, target, skip_accept_encoding=True)
            data = b"" if body is None else json.dumps(body).encode()
            for key, value in {
                **({"Content-Type": "application/json"} if body is not None else {}),
                "Content-Length": str(len(data)),
                **(headers or {}),
            }.items():
                conn.putheader(key, value)
            conn.endheaders(data)
            reply = conn.getresponse()
            return Reply(reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read())
        finally:
            conn.close()

    def session(self) -> tuple[str, dict[str, str], dict[str, str]]:
        """A new session: its id, and the candidate's and the interviewer's auth headers."""
        made = HTTP.post(
            self.url + "/api/sessions", json={"candidate": "ada"}, headers=self.admin, timeout=30
        )
        assert made.status_code == 200, made.text
        links = made.json()
        return (
            links["session_id"],
            {"Authorization": f"Bearer {links['candidate_token']}"},
            {"Authorization": f"Bearer {links['interviewer_token']}"},
        )

    def history(self, session_id: str, interviewer: dict[str, str]) -> list[dict[str, Any]]:
        reply = HTTP.get(
            f"{self.url}/api/sessions/{session_id}/history", headers=interviewer, timeout=30
        )
        assert reply.status_code == 200, reply.text
        return reply.json()


@contextlib.contextmanager
def serving(app: Any, lifespan: str = "off") -> Iterator[str]:
    """An ASGI app in a uvicorn server on a thread of this process."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan=lifespan
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"server-{port}", daemon=True)
    thread.start()

    def started() -> bool:
        assert thread.is_alive(), "the server stopped before it started"
        return server.started

    until(started, "the server started", timeout=60, every=0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


async def gzipping(scope: dict, receive: Callable, send: Callable) -> None:
    """An upstream that answers gzipped whatever the client asked for."""
    body = gzip.compress(json.dumps(PAYLOAD).encode())
    headers = [
        (b"content-type", b"application/json"),
        (b"content-encoding", b"gzip"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def echoing(scope: dict, receive: Callable, send: Callable) -> None:
    """An upstream that answers with the request it got."""
    seen = {
        "method": scope["method"],
        "raw_path": scope["raw_path"].decode("latin-1"),
        "query": scope["query_string"].decode("latin-1"),
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
    }
    body = json.dumps(seen).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@contextlib.contextmanager
def running_mlflow(mlflow_dir: Path) -> Iterator[str]:
    """The stack's MLflow UI process on `mlflow_dir`; its URL without the static prefix."""
    port = free_port()
    child = mlflow_ui(mlflow_dir, "127.0.0.1", port)
    log = (mlflow_dir.parent / "mlflow.log").open("wb")
    process = subprocess.Popen(
        child.argv,
        env={**os.environ, **child.env},
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            assert process.poll() is None, (mlflow_dir.parent / "mlflow.log").read_text()
            with contextlib.suppress(httpx.HTTPError):
                return HTTP.get(url + "/services/mlflow/health", timeout=2).status_code == 200
            return False

        until(healthy, "the MLflow UI up behind the gateway", timeout=MLFLOW_READY_S, every=0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def gateway(
    faulty_world: BuildSummary, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    # MLflow writes into the registry it serves: it gets a copy, so that a write that got through
    # could not spoil the shared world for other tests.
    mlflow_dir = tmp_path_factory.mktemp("registry") / "mlflow"
    shutil.copytree(WorldPaths(faulty_world.root).mlflow, mlflow_dir)
    with (
        world_paths(faulty_world) as paths,
        running_mlflow(mlflow_dir) as mlflow,
        serving(gzipping) as gzipped,
        serving(echoing) as echo,
    ):
        calendar = scenario.load(paths.scenario).world.calendar()
        SimClock.starting(calendar, speed=FROZEN).save(paths.run)
        services = {
            "mlflow": stack.ServiceAddress(mlflow, "/services/mlflow/health"),
            "prometheus": stack.ServiceAddress(gzipped, "/"),
            "model-server": stack.ServiceAddress(echo, "/"),
            "retrieval": stack.ServiceAddress(echo, "/"),
        }
        with serving(create_app(paths.root, services=services), lifespan="on") as url:
            admin = {"Authorization": f"Bearer {stack.admin_token(paths)}"}
            yield Gateway(url, admin, mlflow_dir / "mlflow.db")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _registry_writes(db: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """Every kind of MLflow write as (method, endpoint, body), each aimed at what the registry
    holds, so that any one that reached MLflow would change its database."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        name, run, source = con.execute(
            "SELECT name, run_id, source FROM model_versions WHERE version = 1 ORDER BY name"
        ).fetchone()
        experiment = str(
            con.execute("SELECT experiment_id FROM runs WHERE run_uuid = ?", [run]).fetchone()[0]
        )
        run_tag = con.execute("SELECT key FROM tags WHERE run_uuid = ?", [run]).fetchone()[0]
        alias = con.execute(
            "SELECT alias FROM registered_model_aliases WHERE name = ?", [name]
        ).fetchone()[0]
        version_tag = con.execute(
            "SELECT key FROM model_version_tags WHERE name = ? AND version = 1", [name]
        ).fetchone()[0]
        logged = con.execute(
            "SELECT model_id FROM logged_models WHERE experiment_id = ?", [experiment]
        ).fetchone()[0]
    version = {"name": name, "version": "1"}
    return [
        ("POST", "experiments/create", {"name": "probe"}),
        ("POST", "experiments/delete", {"experiment_id": experiment}),
        ("POST", "experiments/restore", {"experiment_id": experiment}),
        ("POST", "experiments/update", {"experiment_id": experiment, "new_name": "probe"}),
        (
            "POST",
            "experiments/set-experiment-tag",
            {"experiment_id": experiment, "key": "k", "value": "v"},
        ),
        ("POST", "runs/create", {"experiment_id": experiment}),
        ("POST", "runs/update", {"run_id": run, "status": "FAILED"}),
        ("POST", "runs/delete", {"run_id": run}),
        ("POST", "runs/restore", {"run_id": run}),
        (
            "POST",
            "runs/log-metric",
            {"run_id": run, "key": "probe", "value": 1.0, "timestamp": 0, "step": 0},
        ),
        ("POST", "runs/log-parameter", {"run_id": run, "key": "probe", "value": "1"}),
        ("POST", "runs/log-batch", {"run_id": run, "params": [{"key": "probe2", "value": "1"}]}),
        (
            "POST",
            "runs/log-inputs",
            {
                "run_id": run,
                "datasets": [
                    {
                        "dataset": {
                            "name": "probe",
                            "digest": "probe",
                            "source_type": "local",
                            "source": "{}",
                        }
                    }
                ],
            },
        ),
        (
            "POST",
            "runs/log-model",
            {"run_id": run, "model_json": json.dumps({"artifact_path": "probe", "flavors": {}})},
        ),
        ("POST", "runs/set-tag", {"run_id": run, "key": "probe", "value": "v"}),
        ("POST", "runs/delete-tag", {"run_id": run, "key": run_tag}),
        ("POST", "registered-models/create", {"name": "probe-model"}),
        ("POST", "registered-models/rename", {"name": name, "new_name": "probe-renamed"}),
        ("PATCH", "registered-models/update", {"name": name, "description": "probe"}),
        ("POST", "registered-models/set-tag", {"name": name, "key": "k", "value": "v"}),
        ("DELETE", "registered-models/delete-tag", {"name": name, "key": "k"}),
        ("POST", "registered-models/alias", {"name": name, "alias": "probe", "version": "1"}),
        ("DELETE", "registered-models/alias", {"name": name, "alias": alias}),
        ("POST", "model-versions/create", {"name": name, "source": source, "run_id": run}),
        ("PATCH", "model-versions/update", {**version, "description": "probe"}),
        (
            "POST",
            "model-versions/transition-stage",
            {**version, "stage": "Archived", "archive_existing_versions": False},
        ),
        ("POST", "model-versions/set-tag", {**version, "key": "k", "value": "v"}),
        ("DELETE", "model-versions/delete-tag", {**version, "key": version_tag}),
        ("POST", "logged-models", {"experiment_id": experiment}),
        ("PATCH", f"logged-models/{logged}/tags", {"tags": [{"key": "k", "value": "v"}]}),
        ("DELETE", f"logged-models/{logged}", None),
        ("DELETE", "model-versions/delete", version),
        ("DELETE", "registered-models/delete", {"name": name}),
    ]


def test_no_mlflow_write_gets_through_any_encoding(gateway: Gateway) -> None:
    _, candidate, _ = gateway.session()
    search = "/services/mlflow/ajax-api/2.0/mlflow/registered-models/search"
    assert gateway.send("GET", search, headers=candidate).status == 200
    before = _digest(gateway.mlflow_db)
    writes = _registry_writes(gateway.mlflow_db)
    answered: dict[tuple[str, str, str], set[int]] = {}
    for prefix in MLFLOW_PREFIXES:
        for method, endpoint, body in writes:
            for trick, template in TRICKS.items():
                target = "/services/mlflow/" + template.format(p=prefix, e=endpoint)
                reply = gateway.send(method, target, body, headers=candidate)
                answered.setdefault((trick, method, endpoint), set()).add(reply.status)
    assert len(answered) == len(TRICKS) * len(writes)
    for (trick, method, endpoint), statuses in answered.items():
        assert statuses == {405 if trick == "plain" else 400}, (trick, method, endpoint, statuses)
    assert _digest(gateway.mlflow_db) == before
    # The reads the UI and the Models page make still answer.
    models = gateway.send("GET", search + "?max_results=100", headers=candidate)
    assert models.status == 200
    [name, *_] = sorted(m["name"] for m in models.json()["registered_models"])
    got = gateway.send(
        "GET",
        f"/services/mlflow/api/2.0/mlflow/registered-models/get?name={name}",
        headers=candidate,
    )
    assert got.status == 200 and got.json()["registered_model"]["name"] == name
    experiments = gateway.send(
        "GET",
        "/services/mlflow/ajax-api/2.0/mlflow/experiments/search?max_results=100",
        headers=candidate,
    )
    assert experiments.status == 200
    ids = [e["experiment_id"] for e in experiments.json()["experiments"]]
    runs = gateway.send(
        "POST",
        "/services/mlflow/ajax-api/2.0/mlflow/runs/search",
        {"experiment_ids": ids},
        headers=candidate,
    )
    assert runs.status == 200 and runs.json()["runs"]
    assert _digest(gateway.mlflow_db) == before


def test_a_body_is_decoded_for_a_client_that_does_not_accept_its_coding(
    gateway: Gateway,
) -> None:
    _, candidate, _ = gateway.session()
    target = "/services/prometheus/api/v1/query?query=up"
    for accept in (None, "identity", "br", "gzip;q=0", "*;q=0"):
        headers = candidate | ({"Accept-Encoding": accept} if accept else {})
        reply = gateway.send("GET", target, headers=headers)
        assert reply.status == 200, accept
        assert "content-encoding" not in reply.headers, accept
        assert json.loads(reply.body) == PAYLOAD, accept
    for accept in ("gzip", "gzip, deflate, br", "*"):
        reply = gateway.send("GET", target, headers=candidate | {"Accept-Encoding": accept})
        assert reply.headers.get("content-encoding") == "gzip", accept
        assert json.loads(gzip.decompress(reply.body)) == PAYLOAD, accept


def test_the_session_header_is_the_gateways_never_the_clients(gateway: Gateway) -> None:
    session_id, candidate, interviewer = gateway.session()
    forged = {SESSION_HEADER: "someone-else"}

    def seen(target: str, headers: dict[str, str]) -> dict[str, Any]:
        reply = gateway.send("POST", target, {"customer_id": 1}, headers=headers | forged)
        assert reply.status == 200, reply.body
        return reply.json()

    for target in ("/services/model/predict?a=1&token=secret", "/services/retrieval/search"):
        echoed = seen(target, candidate)
        assert [v for k, v in echoed["headers"] if k == SESSION_HEADER] == [session_id]
        assert not any(k == "authorization" for k, _ in echoed["headers"])
        # Not the candidate's: an interviewer trying the playground speaks for no session.
        echoed = seen(target, interviewer)
        assert not any(k == SESSION_HEADER for k, _ in echoed["headers"])
    echoed = seen("/services/model/predict?a=1&token=secret", candidate)
    assert echoed["raw_path"] == "/predict" and echoed["query"] == "a=1"


def test_refusals_are_in_the_candidates_history(gateway: Gateway) -> None:
    session_id, candidate, interviewer = gateway.session()
    probes = [
        ("POST", "mlflow/api/2.0/mlflow/model-versions/set-tag%3F/search", 400, "encoded path"),
        ("DELETE", "mlflow/ajax-api/2.0/mlflow/registered-models/delete", 405, "registry write"),
        (
            "GET",
            "mlflow/ajax-api/2.0/mlflow/registered-models/search/../delete",
            400,
            "dot segment",
        ),
        ("POST", "prometheus/api/v1/admin/tsdb/delete_series", 405, "prometheus write"),
        ("GET", "model/openapi.json", 404, "not served"),
        ("GET", "nope/anything", 404, "unknown service"),
    ]
    for method, target, status, _ in probes:
        reply = gateway.send(method, "/services/" + target, {"k": "v"}, headers=candidate)
        assert reply.status == status, (target, reply.body)
        assert reply.json()["detail"]
    events = [e for e in gateway.history(session_id, interviewer) if e["kind"] == "service"]
    refused = [e["detail"] for e in events if "refused" in e["detail"]]
    assert len(refused) == len(probes)
    for detail, (method, target, status, reason) in zip(refused, probes, strict=True):
        service, _, path = target.partition("/")
        assert (detail["service"], detail["method"], detail["path"]) == (service, method, path)
        assert detail["status"] == status and detail["body"] == '{"k": "v"}'
        assert detail["refused"] == reason
