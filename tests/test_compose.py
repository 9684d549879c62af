"""compose/: the stack as containers. There is no Docker engine here, so the compose file is
checked by Debian's docker-compose, and against the processes `sandbox up` runs; `sandbox
compose-init` prepares a real world for the containers."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sandbox.cli import app
from sandbox.services import compose
from sandbox.services.deploy import k8s
from sandbox.services.deploy.processes import (
    GATEWAY,
    INIT,
    READY_FILE,
    init_command,
    processes,
    prometheus_config,
)
from sandbox.services.simclock import SimClock
from sandbox.world.build import BuildSummary
from tests.conftest import REPO

COMPOSE = REPO / "compose" / "compose.yaml"
# The processes of `sandbox up`, plus the observability tools.
PROCESSES = {"gateway", "model-server", "retrieval", "traffic", "jobs", "mlflow"}


@pytest.fixture(scope="module")
def config() -> dict:
    if shutil.which("docker-compose") is None:
        pytest.fail("Debian's docker-compose is missing: `make test` installs it")
    done = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)  # the file as compose resolved it


def test_one_service_per_process_each_with_a_health_check(config: dict) -> None:
    services = config["services"]
    assert PROCESSES | {"prometheus", "grafana", "world"} == set(services)
    for name in PROCESSES | {"prometheus", "grafana"}:
        assert services[name].get("healthcheck", {}).get("test"), name
    for name, service in services.items():
        for needed, how in service.get("depends_on", {}).items():
            assert how["condition"] in ("service_healthy", "service_completed_successfully"), (
                name,
                needed,
            )
    gateway_needs = set(services["gateway"]["depends_on"])
    assert PROCESSES - {"gateway"} <= gateway_needs


def _module_exists(name: str) -> bool:
    """Whether `name` is a module of an installed package, or a package that `python -m` can
    run (it has a `__main__`), found on disk: `find_spec` of a submodule imports its parents,
    and MLflow's take seconds."""
    top, *rest = name.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not rest:
        return spec is not None
    base = Path(next(iter(spec.submodule_search_locations or []), "")).joinpath(*rest)
    return base.with_suffix(".py").is_file() or (base / "__main__.py").is_file()


def test_every_command_runs_a_module_of_the_package(config: dict) -> None:
    for name in PROCESSES:
        command = config["services"][name]["command"]
        module = command[command.index("-m") + 1]
        if module == "uvicorn":
            module = command[command.index("-m") + 2].split(":")[0]
        assert _module_exists(module), (name, module)
        ports = {p for p in command if p.isdigit()}
        if name in compose.SERVICES:
            assert str(compose.SERVICES[name][0]) in ports, name


def test_the_image_is_multi_stage_and_runs_as_a_user() -> None:
    dockerfile = (REPO / "compose" / "Dockerfile").read_text()
    stages = [line for line in dockerfile.splitlines() if line.startswith("FROM ")]
    assert len(stages) >= 2
    users = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")


def test_compose_init_prepares_a_world_for_the_containers(
    faulty_world: BuildSummary, tmp_path: Path
) -> None:
    world = tmp_path / "world"
    shutil.copytree(faulty_world.root, world, ignore=shutil.ignore_patterns("run", "sessions*"))
    result = CliRunner().invoke(app, ["compose-init", str(world), "--speed", "60"])
    assert result.exit_code == 0, result.output
    run = world / "run"
    addresses = json.loads((run / "stack.json").read_text())["services"]
    for name, (port, health) in compose.SERVICES.items():
        # every container runs from the start: none is started on demand
        assert addresses[name] == {
            "url": f"http://{name}:{port}",
            "health": health,
            "on_demand": False,
        }
    assert SimClock.load(run).speed == 60
    history = (run / "prometheus" / "history.om").read_text()
    assert history.rstrip().endswith("# EOF") and "business_daily_churn_rate" in history
    provisioned = (REPO / "compose/grafana/provisioning/dashboards/sandbox.yaml").read_text()
    assert "/world/run/grafana" in provisioned
    assert sorted(p.stem for p in (run / "grafana").glob("*.json"))
    assert (world / "interviewer" / "operator-token").exists()
    assert (run / READY_FILE).exists()  # what the Kubernetes pods wait for


def health_url(test: list[str]) -> tuple[int, str]:
    """The port and path a compose healthcheck asks for."""
    found = re.search(r"http://localhost:(\d+)([^'\s]*)", " ".join(test))
    assert found, test
    return int(found[1]), found[2]


def test_compose_runs_the_processes_of_the_one_definition(config: dict) -> None:
    """compose.yaml is written by hand; the Kubernetes manifests come from the definition it is
    held to here, field by field, so the two cannot drift apart."""
    services = config["services"]
    procs = processes()  # compose's defaults: the gateway on localhost:8000
    assert set(services) == {p.name for p in procs} | {INIT, "grafana"}
    assert services[INIT]["command"] == list(init_command("48", "1"))
    for proc in procs:
        service = services[proc.name]
        assert service.get("entrypoint", []) + service["command"] == list(proc.command), proc.name
        assert service["image"] == proc.image
        assert health_url(service["healthcheck"]["test"]) == (proc.port, proc.health), proc.name
        assert service.get("environment", {}) == dict(proc.env), proc.name
        healthy = {
            n for n, how in service["depends_on"].items() if how["condition"] == "service_healthy"
        }
        assert healthy == set(proc.needs), proc.name
        assert "world:/world" in " ".join(service["volumes"])
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {GATEWAY, "grafana"}
    prometheus_yml = yaml.safe_load((REPO / "compose" / "prometheus.yml").read_text())
    assert prometheus_yml == prometheus_config(procs)


def test_compose_and_kubernetes_agree_on_processes_commands_and_ports(config: dict) -> None:
    docs = [d for file in k8s.manifests(k8s.Options()).values() for d in file]
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]
        for d in docs
        if d["kind"] == "Deployment"
    }
    services = config["services"]
    assert set(pods) == set(services) - {INIT, "grafana"}
    for name, pod in pods.items():
        [container] = pod["containers"]
        compose_command = services[name].get("entrypoint", []) + services[name]["command"]
        assert container["command"] == compose_command, name
        probe = container["readinessProbe"]["httpGet"]
        assert (probe["port"], probe["path"]) == health_url(services[name]["healthcheck"]["test"])
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        assert env == services[name].get("environment", {}), name
    [job] = [d for d in docs if d["kind"] == "Job"]
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == services[INIT]["command"]
