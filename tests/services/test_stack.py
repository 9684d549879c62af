"""The main job end to end: `sandbox demo` prints working links, every process runs on loopback,
live traffic lands in the candidate's telemetry, a killed service is restarted without losing what
it acknowledged, Ctrl-C leaves nothing behind. One stack serves the module, started as a user
starts it: a stack start is among the suite's dearest steps."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sandbox import scenario
from sandbox.layout import WorldPaths
from sandbox.pipeline import deploy
from sandbox.services import topology
from sandbox.services.stack import admin_token
from sandbox.services.supervisor import free_port
from sandbox.world.build import BuildSummary
from tests.http_client import HTTP
from tests.services.running import READY_S, SANDBOX, Stack, new_session, stop, wait_healthy
from tests.waiting import until


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _tree(root: int) -> dict[int, str]:
    """Every live descendant of `root` (pid -> command line), however deep."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            commands[int(entry.name)] = (
                (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            )
        except OSError:
            continue
        # The command name in parentheses may hold spaces: the fields after it are fixed.
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = commands.get(pid, "")
                frontier.append(pid)
    return found


def _service_pid(stack: Stack, module: str) -> int:
    [pid] = [p for p, cmd in _tree(stack.process.pid).items() if module in cmd]
    return pid


@pytest.fixture(scope="module")
def demo(
    faulty_world: BuildSummary, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, dict[str, str]]]:
    """`sandbox demo` on a copy of the built world (so it skips the build), and the candidate and
    interviewer links it printed; the stack has one more session for the tests' own calls."""
    world = tmp_path_factory.mktemp("demo") / "demo"
    shutil.copytree(faulty_world.root, world, ignore=shutil.ignore_patterns("run", "sessions.*"))
    port = free_port()
    process = subprocess.Popen(
        [SANDBOX, "demo", "--out", str(world), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        links = _printed_links(process)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process)
        yield new_session(Stack(process, world, url, {}, {}, "", "", ""), "ada"), links
    finally:
        stop(process)


def _printed_links(process: subprocess.Popen) -> dict[str, str]:
    links: dict[str, str] = {}
    deadline = time.monotonic() + READY_S
    assert process.stdout is not None
    while len(links) < 2 and time.monotonic() < deadline:
        line = process.stdout.readline()
        assert line, "sandbox demo exited before printing the links"
        for role in ("candidate", "interviewer"):
            if line.startswith(f"{role}:"):
                links[role] = line.split()[-1]
    assert set(links) == {"candidate", "interviewer"}
    return links


@pytest.fixture(scope="module")
def stack(demo: tuple[Stack, dict[str, str]]) -> Stack:
    return demo[0]


def test_demo_prints_working_links(demo: tuple[Stack, dict[str, str]]) -> None:
    stack, links = demo
    # The other test process shares the cores: a first page may wait its turn for seconds.
    with httpx.Client(follow_redirects=True, timeout=30) as browser:
        page = browser.get(links["candidate"])
        assert page.status_code == 200 and "token" not in str(page.url)
        answer = browser.post(
            stack.url + "/api/sql", json={"sql": "SELECT count(*) FROM raw.customers"}
        )
        assert answer.status_code == 200 and answer.json()["rows"][0][0] > 0


def test_the_worlds_page_counts_the_demo_stacks_memory(stack: Stack) -> None:
    """The operator's own stack, started by `sandbox demo`, is listed running with the memory
    of every process of it."""
    operator = {"Authorization": f"Bearer {admin_token(WorldPaths(stack.world))}"}
    listed = HTTP.get(stack.url + "/api/worlds", headers=operator, timeout=30)
    assert listed.status_code == 200, listed.text
    [own] = [w for w in listed.json() if w["state"] == "running" and w["url"] == stack.url]
    rss = sum(_rss_mb(pid) for pid in [stack.process.pid, *_tree(stack.process.pid)])
    # Read a moment apart from the page's own reading, as a console worker may start or go:
    # the same processes, within a quarter.
    assert own["memory_mb"] == pytest.approx(rss, rel=0.25)


def _rss_mb(pid: int) -> float:
    try:
        status = (Path("/proc") / str(pid) / "status").read_text()
    except OSError:
        return 0.0
    kb = [line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")]
    return int(kb[0]) / 1024 if kb else 0.0


def _live_start(world: Path) -> dt.datetime:
    cal = scenario.load(WorldPaths(world).scenario).world.calendar()
    return cal.midnight(cal.last_production_day + 1)


def _a_customer(world: Path) -> int:
    import polars as pl

    _, newest = deploy.online_snapshots(WorldPaths(world).online_store)[0]
    return int(pl.read_parquet(newest)["customer_id"][0])


def test_every_service_is_healthy(stack: Stack) -> None:
    """Every process of the stack's one definition runs, once, and answers; Prometheus only
    with `--prometheus`, which the demo leaves out."""
    health = HTTP.get(stack.url + "/-/health").json()
    assert health["status"] == "ok"
    expected = {svc.name for svc in topology.SERVICES if svc.name != topology.PROMETHEUS}
    assert set(health["services"]) == expected | {"console"}  # the gateway's console workers
    commands = list(_tree(stack.process.pid).values())
    for svc in topology.SERVICES:
        if svc.module:
            assert sum(f"-m {svc.module} " in cmd for cmd in commands) == 1, (svc.name, commands)
    assert not any("prometheus" in cmd.split(" ", 1)[0] for cmd in commands), commands


def test_the_serving_processes_load_no_scikit_learn(stack: Stack) -> None:
    """They score and encode with the models' serving form: scikit-learn and SciPy would cost
    each one seconds of start and 170 MB."""
    for module in ("sandbox.services.model_server", "sandbox.services.retrieval"):
        maps = (Path("/proc") / str(_service_pid(stack, module)) / "maps").read_text()
        assert "/numpy/" in maps  # the check reads what the process has loaded
        assert "/sklearn/" not in maps and "/scipy/" not in maps, module


def test_the_console_workers_load_nothing_of_the_gateways_web_stack(stack: Stack) -> None:
    """The workers are forked from a server that preloaded only what queries need; none imports
    the gateway again (multiprocessing would, were the gateway started as a plain module), which
    would cost every new worker a third of a second and tens of MB."""
    console = [
        p for p, cmd in _tree(stack.process.pid).items() if "multiprocessing.forkserver" in cmd
    ]
    assert len(console) >= 2, console  # the server and its standing worker
    gateway = _service_pid(stack, "-m sandbox.services.gateway ")
    assert "/markupsafe/" in _maps(gateway)  # its pages
    for pid in console:
        assert "/markupsafe/" not in _maps(pid), pid


def _maps(pid: int) -> str:
    """What the process has mapped; nothing for one that has just gone (a retired worker)."""
    try:
        return (Path("/proc") / str(pid) / "maps").read_text()
    except OSError:
        return ""


def test_the_mlflow_ui_starts_on_its_first_visit(stack: Stack) -> None:
    """The registry UI holds no memory until someone opens it; the first visit waits for it."""
    assert HTTP.get(stack.url + "/-/health").json()["services"]["mlflow"] == "idle"
    assert not [c for c in _tree(stack.process.pid).values() if "mlflow.server" in c]

    search = "/services/mlflow/ajax-api/2.0/mlflow/registered-models/search"
    reply = HTTP.get(stack.url + search, headers=stack.candidate, timeout=90)
    assert reply.status_code == 200, reply.text
    assert {m["name"] for m in reply.json()["registered_models"]} >= {"churn-model"}

    health = HTTP.get(stack.url + "/-/health").json()
    assert health["status"] == "ok" and health["services"]["mlflow"] == "ok"
    assert [c for c in _tree(stack.process.pid).values() if "mlflow.server" in c]
    until(
        lambda: stack.scalar(
            "SELECT list(message) FROM telemetry.logs WHERE event = 'service_started'"
        ),
        "the start, in the candidate's logs",
        timeout=10,
        every=0.5,
    )
    [started] = stack.scalar(
        "SELECT list(message) FROM telemetry.logs WHERE event = 'service_started'"
    )
    assert started.startswith("mlflow started (pid ")


def test_predict_and_search_through_the_gateway(stack: Stack) -> None:
    customer = _a_customer(stack.world)
    reply = HTTP.post(
        stack.url + "/services/model/predict",
        json={"customer_id": customer},
        headers=stack.candidate,
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["customer_id"] == customer and 0 <= body["score"] <= 1
    meta = HTTP.get(stack.url + "/services/model/metadata", headers=stack.candidate).json()
    assert body["model_version"] == meta["model_version"]

    found = HTTP.post(
        stack.url + "/services/retrieval/search",
        json={"text": "my video keeps buffering on the tv app", "k": 3},
        headers=stack.candidate,
        timeout=10,
    )
    assert found.status_code == 200, found.text
    assert len(found.json()["results"]) == 3


def test_bad_requests_get_clear_errors(stack: Stack) -> None:
    malformed = HTTP.post(
        stack.url + "/services/model/predict", json={"customer_id": "abc"}, headers=stack.candidate
    )
    assert malformed.status_code == 422 and "customer_id" in malformed.text
    unknown = HTTP.post(
        stack.url + "/services/model/predict", json={"customer_id": 10**12}, headers=stack.candidate
    )
    assert unknown.status_code == 404 and str(10**12) in unknown.text
    no_text = HTTP.post(
        stack.url + "/services/retrieval/search", json={"k": 3}, headers=stack.candidate
    )
    assert no_text.status_code == 422 and "text" in no_text.text


def test_live_traffic_lands_in_the_candidates_telemetry(stack: Stack) -> None:
    start = _live_start(stack.world)
    until(
        lambda: stack.scalar(
            "SELECT count(*) FROM serving.predictions WHERE source = 'online' "
            f"AND request_ts >= '{start}'"
        ),
        "live predictions in the candidate's views",
        timeout=60,
        every=0.5,
    )
    until(
        lambda: stack.scalar(
            f"SELECT count(*) FROM retrieval.search_log WHERE request_ts >= '{start}'"
        ),
        "live searches in the candidate's views",
        timeout=60,
        every=0.5,
    )
    logs = stack.scalar(
        f"SELECT count(*) FROM telemetry.logs WHERE service = 'model-server' AND ts >= '{start}'"
    )
    assert logs > 0
    warned = stack.scalar(
        "SELECT count(*) FROM telemetry.logs WHERE service = 'traffic' AND level = 'warning'"
    )
    assert warned == 0, "clients wait for the services at start: no outage is reported"
    # The demo's clock runs at 48x: a live 5-minute point is complete within seconds.
    until(
        lambda: stack.scalar(
            "SELECT count(*) FROM telemetry.metrics "
            f"WHERE service = 'model-server' AND ts >= '{start}'"
        ),
        "live metric points of the model server",
        timeout=60,
        every=0.5,
    )


def test_the_interviewer_sees_the_candidates_requests(stack: Stack) -> None:
    stack.sql("SELECT count(*) FROM ops.changelog")
    events = HTTP.get(
        f"{stack.url}/api/sessions/{stack.session_id}/history", headers=stack.interviewer
    ).json()
    kinds = {e["kind"] for e in events}
    assert {"sql", "service"} <= kinds
    assert any(e["detail"].get("path") == "predict" for e in events)


def test_sandbox_review_exports_a_session_from_the_running_stack(
    stack: Stack, tmp_path: Path
) -> None:
    """The interviewer's command beside a running stack: the gateway holds the sessions store,
    and the command reads it from its own process, up to the last event recorded."""
    stack.sql("SELECT 'exported while running' AS marker")
    out = tmp_path / "review.md"
    done = subprocess.run(
        [SANDBOX, "review", stack.session_id, "--world", str(stack.world), "--export", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    served = HTTP.get(
        f"{stack.url}/api/sessions/{stack.session_id}/export.md", headers=stack.interviewer
    )
    assert served.status_code == 200

    def timeline(text: str) -> str:
        return text.split("## Timeline", 1)[1].split("\n## ", 1)[0]

    # The same events as the gateway's own export (the rest may differ by the clock's moving).
    assert "exported while running" in timeline(out.read_text())
    assert timeline(out.read_text()) == timeline(served.text)


def test_a_killed_model_server_comes_back_without_losing_acknowledged_predictions(
    stack: Stack,
) -> None:
    customer = _a_customer(stack.world)
    acknowledged = []
    for _ in range(5):
        reply = HTTP.post(
            stack.url + "/services/model/predict",
            json={"customer_id": customer},
            headers=stack.candidate,
            timeout=10,
        )
        assert reply.status_code == 200
        acknowledged.append(reply.json()["prediction_id"])
    victim = _service_pid(stack, "sandbox.services.model_server")
    port = int(_tree(stack.process.pid)[victim].split("--port ")[1].split()[0])
    os.kill(victim, signal.SIGKILL)
    # While it is down, its port stays the stack's: no other process (another stack starting)
    # can take it and answer in its place.
    with socket.socket() as intruder, pytest.raises(OSError, match="in use"):
        intruder.bind(("127.0.0.1", port))

    def restarted() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            if HTTP.get(stack.url + "/-/health", timeout=2).status_code == 200:
                again = [
                    p
                    for p, cmd in _tree(stack.process.pid).items()
                    if "sandbox.services.model_server" in cmd
                ]
                return bool(again) and again[0] != victim
        return False

    until(restarted, "the model server restarted, and the stack healthy", timeout=90, every=0.5)

    ids = ", ".join(str(i) for i in acknowledged)
    until(
        lambda: (
            stack.scalar(f"SELECT count(*) FROM serving.predictions WHERE prediction_id IN ({ids})")
            == len(acknowledged)
        ),
        "every acknowledged prediction in the log",
        timeout=10,
        every=0.5,
    )
    until(
        lambda: stack.scalar(
            "SELECT count(*) FROM telemetry.logs WHERE event = 'service_exited' "
            "AND message LIKE 'model-server exited (signal 9)%'"
        ),
        "the restart, visible in the candidate's logs",
        timeout=10,
        every=0.5,
    )


def _stops_cleanly(process: subprocess.Popen) -> None:
    """Ctrl-C: the supervisor exits, and every process it started, however deep, is gone."""
    started = _tree(process.pid)
    assert len(started) >= 6, started  # the gateway and five services
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)
    until(
        lambda: not any(_alive(p) for p in started),
        "every process the supervisor started, gone",
        timeout=10,
        every=0.3,
    )


def test_ctrl_c_stops_every_process(stack: Stack) -> None:
    _stops_cleanly(stack.process)


def test_up_refuses_a_world_that_is_missing_or_half_built(tmp_path: Path) -> None:
    half = tmp_path / "half"
    (half / "candidate").mkdir(parents=True)
    for world in (tmp_path / "nope", half):
        refused = subprocess.run(
            [SANDBOX, "up", str(world), "--port", "0"], capture_output=True, text=True, timeout=60
        )
        said = " ".join((refused.stderr + refused.stdout).split())
        assert refused.returncode != 0
        assert "no manifest.json" in said and f"sandbox build --out {world}" in said


def test_up_refuses_a_world_whose_registry_has_no_serving_forms(
    faulty_world: BuildSummary, tmp_path: Path
) -> None:
    """A world built before the models' serving forms were logged is named for a rebuild at
    once, not after the services fail to start."""
    world = tmp_path / "older"
    shutil.copytree(faulty_world.root, world, ignore=shutil.ignore_patterns("run"))
    for form in (world / "candidate" / "mlflow").rglob("serving.npz"):
        form.unlink()
    refused = subprocess.run(
        [SANDBOX, "up", str(world), "--port", "0"], capture_output=True, text=True, timeout=60
    )
    said = " ".join((refused.stderr + refused.stdout).split())
    assert refused.returncode != 0
    assert "built by an older version" in said and "models:/churn-model/1" in said, said
    assert f"sandbox build --out {world} --force" in said


def test_up_refuses_a_port_in_use_at_once(faulty_world: BuildSummary, tmp_path: Path) -> None:
    world = tmp_path / "w"
    shutil.copytree(faulty_world.root, world, ignore=shutil.ignore_patterns("run"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = subprocess.run(
            [SANDBOX, "up", str(world), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    said = " ".join((refused.stderr + refused.stdout).split())
    assert refused.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in said and "choose another --port" in said, said
