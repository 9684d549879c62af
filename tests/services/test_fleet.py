"""The operator's worlds through the gateway in-process: the listing of the worlds root, what the
API refuses, and the started stacks and builds an operator's gateway finds again after a restart.
Starting real stacks is the builder's round trip (`test_builder`); here a stand-in process plays
`sandbox up`."""

from __future__ import annotations

import json
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from sandbox.layout import WorldPaths, read_manifest
from sandbox.services import stack
from sandbox.services.fleet.builds import BuildQueue
from sandbox.services.fleet.stacks import Fleet
from sandbox.services.settings import Settings
from tests.services.conftest import gateway_client, session_maker
from tests.services.test_builder import FAKE_BUILD
from tests.waiting import until

# Stands in for `sandbox up WORLD --port P`: runs until it is stopped.
FAKE_UP = (sys.executable, "-c", "import time; time.sleep(120)")


def _operator(paths: WorldPaths) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.admin_token(paths)}"}


@pytest.fixture
def worlds_root(paths: WorldPaths, tmp_path: Path) -> Path:
    """A worlds root holding the running world (by a link), another complete world (its
    manifest is all the listing reads), one whose build did not finish, and a dotted name."""
    root = tmp_path / "worlds"
    root.mkdir()
    (root / paths.root.name).symlink_to(paths.root)
    other = root / "other-world"
    other.mkdir()
    manifest = {"complete": True, "seed": 99, "scale": 0.04, "content_hash": "c0ffee"}
    (other / "manifest.json").write_text(json.dumps(manifest))
    (root / "half-built").mkdir()
    (root / "half-built" / "manifest.json").write_text(json.dumps({"complete": False}))
    shutil.copytree(other, root / ".hidden")
    return root


@pytest.fixture
def fleet_client(paths: WorldPaths, worlds_root: Path) -> Iterator[TestClient]:
    with gateway_client(paths, settings=Settings(worlds_root=worlds_root)) as client:
        yield client


def test_the_worlds_root_is_listed_with_each_manifest_and_the_own_world_running(
    fleet_client: TestClient, paths: WorldPaths
) -> None:
    session_maker(fleet_client, paths)()
    client = fleet_client
    listed = {w["name"]: w for w in client.get("/api/worlds", headers=_operator(paths)).json()}
    assert set(listed) == {paths.root.name, "other-world"}
    own = listed[paths.root.name]
    manifest = read_manifest(paths.root)
    assert own["operator"] and own["state"] == "running" and own["sessions"] == 1
    assert (own["seed"], own["scale"], own["content_hash"]) == (
        manifest["seed"],
        manifest["scale"],
        manifest["content_hash"],
    )
    other = listed["other-world"]
    assert not other["operator"] and (other["seed"], other["content_hash"]) == (99, "c0ffee")
    assert (other["state"], other["memory_mb"], other["sessions"]) == ("stopped", None, 0)
    assert other["difficulty"] == "guided"  # a world from before difficulty tiers


def test_the_worlds_api_refuses_what_it_must(fleet_client: TestClient, paths: WorldPaths) -> None:
    client = fleet_client
    links = session_maker(client, paths)()
    for token in (links["candidate_token"], links["interviewer_token"]):
        who = {"Authorization": f"Bearer {token}"}
        assert client.get("/api/worlds", headers=who).status_code == 403
        assert client.post("/api/worlds/x/start", headers=who).status_code == 403
        assert client.get("/interviewer/worlds", headers=who).status_code == 403
    operator = _operator(paths)
    page = client.get("/interviewer/worlds", headers=operator)
    assert page.status_code == 200 and "/interviewer/assets/worlds.js" in page.text
    for tricky in ("..", ".hidden", "UPPER", "a_b", "x%2F..%2Fy", "%2E%2E"):
        reply = client.post(f"/api/worlds/{tricky}/start", headers=operator)
        assert reply.status_code in (404, 422), (tricky, reply.status_code)
        assert reply.status_code == 404 or "name" in str(reply.json()["detail"])
    for unknown in ("no-such-world", "half-built"):
        reply = client.post(f"/api/worlds/{unknown}/start", headers=operator)
        assert reply.status_code == 404 and f"no world {unknown}" in reply.json()["detail"]
    own = paths.root.name
    for verb in ("start", "stop", "sessions"):
        body = {"candidate": "ada"} if verb == "sessions" else None
        reply = client.post(f"/api/worlds/{own}/{verb}", json=body, headers=operator)
        assert reply.status_code == 409 and "own world" in reply.json()["detail"]
    other = "other-world"
    not_started = client.post(f"/api/worlds/{other}/stop", headers=operator)
    assert not_started.status_code == 409 and "not started" in not_started.json()["detail"]
    no_stack = client.post(
        f"/api/worlds/{other}/sessions", json={"candidate": "ada"}, headers=operator
    )
    assert no_stack.status_code == 409 and "not running" in no_stack.json()["detail"]


def test_a_world_started_here_is_found_again_by_the_next_gateway_and_stopped(
    tmp_path: Path,
) -> None:
    world = tmp_path / "variant"
    first = Fleet(tmp_path / "fleet", command=FAKE_UP)
    started = first.start("variant", world)
    assert started.alive()
    with pytest.raises(RuntimeError, match="already started"):
        first.start("variant", world)
    # The gateway restarts: the stack it started runs on, and the next one knows it.
    again = Fleet(tmp_path / "fleet", command=FAKE_UP)
    found = again.get("variant")
    assert found is not None and found.pid == started.pid and found.url == started.url
    assert found.process is None and found.alive()
    assert again.stop("variant") is found
    until(lambda: started.process.poll() is not None, "the stand-in stopped")
    assert started.process.returncode == -15  # SIGTERM, as `sandbox up` is stopped
    assert Fleet(tmp_path / "fleet", command=FAKE_UP).get("variant") is None
    first.http.close()


def test_builds_survive_a_gateway_restart_and_one_cut_short_is_interrupted(
    tmp_path: Path,
) -> None:
    state = tmp_path / "builds"
    fake = (sys.executable, "-c", FAKE_BUILD)
    first = BuildQueue(1, 20, command=fake, state_dir=state)
    (tmp_path / "done.go").touch()  # finishes at once
    done = first.submit("done", tmp_path / "done", "")
    until(lambda: not done.active, "the first build finished")
    cut = first.submit("cut", tmp_path / "cut", "")
    until(lambda: "simulate" in cut.stages, "the second build running")
    assert cut.process is not None
    # The gateway goes without stopping its builds; the next one reads their files.
    again = BuildQueue(1, 20, command=fake, state_dir=state)
    states = {b.name: b for b in again.all()}
    assert [b.name for b in again.all()] == ["done", "cut"]
    assert states["done"].state == "built" and states["done"].seed == 7
    assert states["cut"].state == "interrupted"
    assert "the gateway stopped while this build waited or ran" in states["cut"].lines
    # The build the gone gateway left running is stopped, not left writing unwatched.
    until(lambda: cut.process.poll() is not None, "the orphaned build stopped")
    first.close()
    again.close()


def test_a_started_stack_holds_its_port_from_the_start(tmp_path: Path) -> None:
    """The port is bound before `sandbox up` runs and handed to it, so another stack starting
    at the same moment cannot take it; it is free again once the stack stopped."""
    fleet = Fleet(tmp_path / "fleet", command=FAKE_UP)
    started = fleet.start("variant", tmp_path / "variant")
    port = int(started.url.rsplit(":", 1)[1])
    with socket.socket() as intruder, pytest.raises(OSError, match="in use"):
        intruder.bind(("127.0.0.1", port))
    fleet.stop("variant")
    with socket.socket() as after:
        after.bind(("127.0.0.1", port))
    fleet.http.close()
