"""The scenario builder through the gateway: the catalog, validation that names the field, the
operator's whole round on real worlds (two re-seeded variants of the running world's scenario
built, started, given a session each and stopped, through the API alone), and the queue builds
wait in (at most `builds_at_once` run; the gateway stopping stops them)."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sandbox.faults import registry
from sandbox.layout import WorldPaths, read_manifest
from sandbox.services import stack
from sandbox.services.fleet.builds import Build, BuildQueue, BuildsClosed
from sandbox.services.settings import Settings
from tests.http_client import HTTP
from tests.services.conftest import MakeSession, gateway_client
from tests.services.running import READY_S
from tests.waiting import until

VARIANT_SCALE = 0.04  # 1,000 customers: the smallest world that trains a model comfortably
BUILD_TIMEOUT_S = 600
# Stands in for `sandbox build SCENARIO --out OUT --progress json`: makes OUT, reports a stage,
# and finishes once OUT.go exists (at once when it already does), as a build reports its seed.
FAKE_BUILD = """
import json, sys, time
from pathlib import Path
out = Path(sys.argv[sys.argv.index("--out") + 1])
out.mkdir()
print(json.dumps({"stage": "simulate", "done": 0, "total": 1}), flush=True)
while not out.with_suffix(".go").exists():
    time.sleep(0.01)
print(json.dumps({"done": True, "seed": 7}), flush=True)
"""


def _operator(paths: WorldPaths) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.admin_token(paths)}"}


def test_the_builder_is_the_operators(
    client: TestClient, paths: WorldPaths, make_session: MakeSession
) -> None:
    links = make_session()
    for token in (links["candidate_token"], links["interviewer_token"]):
        who = {"Authorization": f"Bearer {token}"}
        assert client.get("/api/catalog", headers=who).status_code == 403
        reply = client.post("/api/builder/builds", json={"name": "x", "toml": ""}, headers=who)
        assert reply.status_code == 403
    catalog = client.get("/api/catalog", headers=_operator(paths)).json()
    assert {f["id"] for f in catalog["faults"]} == set(registry.catalog())
    assert catalog["difficulties"] == ["guided", "standard", "hard"]
    assert catalog["default_difficulty"] == "standard"
    assert catalog["running"]["faults"][0]["id"] == "feature-nulls-wrong-mean"


def test_validation_names_the_field(client: TestClient, paths: WorldPaths) -> None:
    running = client.get("/api/catalog", headers=_operator(paths)).json()["running"]
    good = client.post(
        "/api/builder/validate", json={"scenario": running}, headers=_operator(paths)
    )
    assert good.status_code == 200 and good.json()["brief"]["title"] == running["brief"]["title"]
    assert "[[faults]]" in good.json()["toml"]

    wrong = copy.deepcopy(running)
    wrong["faults"][0]["null_share"] = 7
    reply = client.post("/api/builder/validate", json={"scenario": wrong}, headers=_operator(paths))
    assert reply.status_code == 422 and "faults[0].null_share" in str(reply.json()["detail"])
    unknown = copy.deepcopy(running)
    unknown["faults"].append({"id": "no-such-fault"})
    reply = client.post(
        "/api/builder/validate", json={"scenario": unknown}, headers=_operator(paths)
    )
    assert reply.status_code == 422 and "faults[1]" in str(reply.json()["detail"])
    hard = {**running, "difficulty": "hard"}
    reply = client.post("/api/builder/validate", json={"scenario": hard}, headers=_operator(paths))
    assert reply.status_code == 200 and "hard" in reply.json()["summary"]
    assert reply.json()["toml"].startswith('difficulty = "hard"')
    reply = client.post(
        "/api/builder/validate",
        json={"scenario": {**running, "difficulty": "expert"}},
        headers=_operator(paths),
    )
    assert reply.status_code == 422 and "difficulty" in str(reply.json()["detail"])
    broken = client.post("/api/builder/validate", json={"toml": "[world"}, headers=_operator(paths))
    assert broken.status_code == 422 and "not valid TOML" in str(broken.json()["detail"])
    empty = client.post("/api/builder/validate", json={}, headers=_operator(paths))
    assert empty.status_code == 422


def _wait_built(client: TestClient, paths: WorldPaths, build_id: str) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        status = client.get(f"/api/builder/builds/{build_id}", headers=_operator(paths)).json()
        return None if status["status"] in ("queued", "building") else status

    return until(finished, f"build {build_id} finished", timeout=BUILD_TIMEOUT_S, every=0.5)


@pytest.mark.long  # two builds and two stacks
def test_two_variants_are_built_started_given_sessions_and_stopped_from_the_operator_api(
    paths: WorldPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's whole round, no shell step: two re-seeded variants built into the worlds
    root, both started, a session on each from its own gateway, both stopped."""
    # The started stacks read their settings from the environment: one idle console worker
    # each is all a session's creation needs.
    monkeypatch.setenv("SANDBOX_CONSOLE_WORKERS", "1")
    settings = Settings(builds_at_once=2, worlds_root=tmp_path)
    with gateway_client(paths, settings=settings) as client:
        operator = _operator(paths)
        running = client.get("/api/catalog", headers=operator).json()["running"]
        variants = {}
        for n, name in enumerate(("variant-a", "variant-b"), start=1):
            variant = copy.deepcopy(running)
            variant["world"].update(seed=running["world"]["seed"] + 1000 * n, scale=VARIANT_SCALE)
            variant["difficulty"] = "hard" if n == 1 else "standard"
            variants[name] = variant
        bad_name = client.post(
            "/api/builder/builds",
            json={"scenario": variants["variant-a"], "name": "../escape"},
            headers=operator,
        )
        assert bad_name.status_code == 422 and "name" in str(bad_name.json()["detail"])
        started = {
            name: client.post(
                "/api/builder/builds", json={"scenario": variant, "name": name}, headers=operator
            ).json()
            for name, variant in variants.items()
        }
        assert [s["status"] for s in started.values()] == ["building", "building"]
        assert started["variant-a"]["out"] == str(tmp_path / "variant-a")
        for name, build in started.items():
            status = _wait_built(client, paths, build["id"])
            assert status["status"] == "built", status["log"]
            assert "simulate" in status["stages"] and status["world"] == name
            manifest = read_manifest(tmp_path / name)
            assert manifest["seed"] == variants[name]["world"]["seed"]
            assert manifest["scale"] == VARIANT_SCALE
            assert manifest["difficulty"] == status["difficulty"] == variants[name]["difficulty"]
        hard = _wait_built(client, paths, started["variant-a"]["id"])["answer_key"]
        assert {f["difficulty"] for f in hard["faults"]} == {"hard"}
        original = [f["fault_id"] for f in json.loads(paths.answer_key.read_text())["faults"]]
        assert [f["fault_id"] for f in hard["faults"]] == original
        again = client.post(
            "/api/builder/builds",
            json={"scenario": variants["variant-a"], "name": "variant-a"},
            headers=operator,
        )
        assert again.status_code == 409 and "already exists" in again.json()["detail"]

        listed = {w["name"]: w for w in client.get("/api/worlds", headers=operator).json()}
        assert set(listed) == set(variants)
        assert {w["state"] for w in listed.values()} == {"stopped"}
        assert (
            listed["variant-b"]["content_hash"]
            == read_manifest(tmp_path / "variant-b")["content_hash"]
        )
        for name in variants:
            reply = client.post(f"/api/worlds/{name}/start", headers=operator)
            assert reply.status_code == 200, reply.text
            assert reply.json()["state"] in ("starting", "running")
        twice = client.post("/api/worlds/variant-a/start", headers=operator)
        assert twice.status_code == 409 and "already" in twice.json()["detail"]

        def all_running() -> list[dict[str, Any]] | None:
            worlds = client.get("/api/worlds", headers=operator).json()
            assert not any(w["state"] == "failed" for w in worlds), worlds
            return worlds if all(w["state"] == "running" for w in worlds) else None

        up = {w["name"]: w for w in until(all_running, "both variants running", timeout=READY_S)}
        assert all(w["memory_mb"] > 50 for w in up.values())
        assert up["variant-a"]["url"] != up["variant-b"]["url"]
        for name, world in up.items():
            made = client.post(
                f"/api/worlds/{name}/sessions", json={"candidate": f"ada-{name}"}, headers=operator
            )
            assert made.status_code == 200, made.text
            links = made.json()
            assert links["gateway"] == world["url"]
            assert links["candidate_url"].startswith(world["url"] + "/?token=")
            assert links["interviewer_url"].startswith(world["url"] + "/?token=")
            # The candidate's link works on that world's stack, and that stack only.
            candidate = {"Authorization": f"Bearer {links['candidate_token']}"}
            clock = HTTP.get(world["url"] + "/api/clock", headers=candidate)
            assert clock.status_code == 200, clock.text
            assert client.get("/api/clock", headers=candidate).status_code == 401
        listed = {w["name"]: w for w in client.get("/api/worlds", headers=operator).json()}
        assert [w["sessions"] for w in listed.values()] == [1, 1]
        fleet = client.app.state.fleet  # type: ignore[attr-defined]
        pids = [fleet.get(name).pid for name in variants]
        for name in variants:
            stopped = client.post(f"/api/worlds/{name}/stop", headers=operator)
            assert stopped.status_code == 200 and stopped.json()["state"] == "stopped"
        assert all(not Path(f"/proc/{pid}").exists() for pid in pids)


# The queue, with builds that stand in for real ones


@pytest.fixture
def queue() -> Iterator[Callable[..., BuildQueue]]:
    made: list[BuildQueue] = []

    def make(at_once: int = 1, kept: int = 20) -> BuildQueue:
        made.append(BuildQueue(at_once, kept, command=(sys.executable, "-c", FAKE_BUILD)))
        return made[-1]

    yield make
    for q in made:
        q.close()


def _until(check: Callable[[], Any], timeout_s: float = 20.0) -> None:
    until(check, "the builds' state", timeout=timeout_s, every=0.01)


def _finish(build: Build) -> None:
    build.out.with_suffix(".go").touch()
    _until(lambda: not build.active)


def test_builds_past_the_limit_wait_in_order_and_start_as_slots_free(
    queue: Callable[..., BuildQueue], tmp_path: Path
) -> None:
    builds = queue(at_once=2)
    first, second, third, fourth = (
        builds.submit(name, tmp_path / name, "") for name in ("a", "b", "c", "d")
    )
    assert [b.state for b in (first, second, third, fourth)] == [
        "building",
        "building",
        "queued",
        "queued",
    ]
    assert (builds.ahead(third), builds.ahead(fourth)) == (0, 1)
    assert third.process is None and not third.out.exists()
    _until(lambda: "simulate" in first.stages)
    _finish(first)
    assert first.state == "built" and first.seed == 7
    _until(lambda: third.state == "building")
    assert fourth.state == "queued" and builds.ahead(fourth) == 0
    assert builds.cancel(fourth.id) is fourth and fourth.state == "cancelled"
    assert fourth.process is None  # it never started
    builds.cancel(second.id)  # running: stopped, and what it wrote removed
    assert second.state == "cancelled" and not second.out.exists()
    assert second.process is not None and second.process.poll() is not None
    _finish(third)
    assert [b.state for b in builds.all()] == ["built", "cancelled", "built", "cancelled"]
    assert builds.cancel(first.id) is first and first.state == "built" and first.out.exists()


def test_only_the_last_finished_builds_are_kept(
    queue: Callable[..., BuildQueue], tmp_path: Path
) -> None:
    builds = queue(at_once=1, kept=2)
    done = []
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.go").touch()  # finishes at once
        done.append(builds.submit(name, tmp_path / name, ""))
        _until(lambda: not done[-1].active)
    running = builds.submit("d", tmp_path / "d", "")
    assert builds.get(done[0].id) is None
    assert [b.name for b in builds.all()] == ["b", "c", "d"] and running.active


def test_one_output_gets_one_build_at_a_time(
    queue: Callable[..., BuildQueue], tmp_path: Path
) -> None:
    builds = queue()
    builds.submit("a", tmp_path / "a", "")
    with pytest.raises(FileExistsError, match="already queued or running"):
        builds.submit("a", tmp_path / "a", "")


def test_closing_cancels_the_waiting_builds_and_stops_the_running_ones(
    queue: Callable[..., BuildQueue], tmp_path: Path
) -> None:
    builds = queue()
    running, waiting = (
        builds.submit("a", tmp_path / "a", ""),
        builds.submit("b", tmp_path / "b", ""),
    )
    _until(lambda: running.out.exists())
    builds.close()
    assert (running.state, waiting.state) == ("cancelled", "cancelled")
    assert running.process is not None and running.process.poll() is not None
    assert waiting.process is None and not running.out.exists()
    with pytest.raises(BuildsClosed):
        builds.submit("c", tmp_path / "c", "")


def test_a_restart_removes_the_unfinished_world_of_a_build_it_cut_short_and_nothing_else(
    tmp_path: Path,
) -> None:
    root, state = tmp_path / "worlds", tmp_path / "builds"
    root.mkdir()
    fake = (sys.executable, "-c", FAKE_BUILD)
    first = BuildQueue(5, 20, command=fake, state_dir=state, worlds_root=root)
    cut, finished, outside, written, relative = (
        first.submit(name, out, "")
        for name, out in (
            ("cut", root / "cut"),
            ("finished", root / "finished"),
            ("outside", tmp_path / "outside"),  # a record whose output is not in the root
            ("written", root / "written"),
            ("relative", root / "relative"),
        )
    )
    waited = first.submit("waited", root / "waited", "")
    _until(lambda: all(b.out.is_dir() for b in (cut, finished, outside, written, relative)))
    # The gateway goes without stopping its builds: its files stay as they are now.
    left = shutil.copytree(state, tmp_path / "left")
    (cut.out / "world.duckdb").write_text("half written")
    # The build wrote its manifest last, just as the gateway went: a complete world.
    (finished.out / "manifest.json").write_text(json.dumps({"complete": True}))
    # The waiting build's name was taken by hand meanwhile: not the build's to remove.
    waited.out.mkdir()
    # Someone started writing into these since, one named as a path relative to where it runs.
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    other = subprocess.Popen([*sleep, written.out])
    by_hand = subprocess.Popen([*sleep, "worlds/relative"], cwd=tmp_path)
    try:
        # The next gateway reads the builds' files.
        again = {b.name: b for b in BuildQueue(5, 20, state_dir=left, worlds_root=root).all()}
        assert {b.state for b in again.values()} == {"interrupted"}
        assert not cut.out.exists() and root.is_dir()
        assert f"its unfinished world {cut.out} was removed" in again["cut"].lines
        assert read_manifest(finished.out) == {"complete": True}
        assert "complete world; left as it is" in again["finished"].lines[-1]
        assert outside.out.is_dir() and "not in the worlds root" in again["outside"].lines[-1]
        assert written.out.is_dir() and "still writing" in again["written"].lines[-1]
        assert relative.out.is_dir() and "still writing" in again["relative"].lines[-1]
        assert waited.out.is_dir() and again["waited"].lines[-1].startswith("the gateway stopped")
        # Every build the gone gateway left running was stopped before anything was removed.
        ran = (cut, finished, outside, written, relative)
        # A process stopping has no arguments left in /proc (which is how the gateway tells it is
        # gone) a moment before it has exited.
        _until(lambda: all(b.process and b.process.poll() is not None for b in ran))
        stopped = [b.process and b.process.poll() for b in ran]
        assert stopped == [-15] * len(ran), stopped  # SIGTERM
    finally:
        for process in (other, by_hand):
            process.kill()
            process.wait()
        first.close()


# The queue through the gateway, with real builds


def test_a_second_build_waits_and_the_gateway_stopping_cancels_every_build(
    paths: WorldPaths,
) -> None:
    with gateway_client(paths, settings=Settings(builds_at_once=1)) as client:
        running = client.get("/api/catalog", headers=_operator(paths)).json()["running"]
        variant = copy.deepcopy(running)
        variant["world"].update(scale=VARIANT_SCALE)
        outs = [paths.root.parent / f"queued-test-{n}" for n in range(3)]
        for out in outs:
            shutil.rmtree(out, ignore_errors=True)
        started = [
            client.post(
                "/api/builder/builds",
                json={"scenario": variant, "name": out.name},
                headers=_operator(paths),
            ).json()
            for out in outs
        ]
        assert [s["status"] for s in started] == ["building", "queued", "queued"]
        assert [s["ahead"] for s in started] == [None, 0, 1]
        second = client.get(f"/api/builder/builds/{started[1]['id']}", headers=_operator(paths))
        assert second.json()["status"] == "queued" and second.json()["answer_key"] is None
        listed = client.get("/api/builder/builds", headers=_operator(paths)).json()
        assert [b["status"] for b in listed] == ["queued", "queued", "building"]  # newest first
        again = client.post(
            "/api/builder/builds",
            json={"scenario": variant, "name": outs[1].name},
            headers=_operator(paths),
        )
        assert again.status_code == 409 and "already queued" in again.json()["detail"]
        cancelled = client.delete(
            f"/api/builder/builds/{started[2]['id']}", headers=_operator(paths)
        )
        assert cancelled.json()["status"] == "cancelled"
        builds: BuildQueue = client.app.state.builds  # type: ignore[attr-defined]
    # The gateway stopped: the waiting build never started, the running one was stopped.
    assert [b.state for b in builds.all()] == ["cancelled"] * 3
    assert not any(out.exists() for out in outs)
