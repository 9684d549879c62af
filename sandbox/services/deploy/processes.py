"""The stack as containers: every process of `topology.SERVICES` (the processes `sandbox up`
runs), with the command, port, health path and environment it runs with in a container.
compose/compose.yaml is checked against this list (tests/services/deploy/) and the Kubernetes
manifests are written from it, so the two cannot drift apart."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sandbox.services import topology
from sandbox.services.topology import GATEWAY, MLFLOW, PROMETHEUS

IMAGE = "ml-incident-sandbox:latest"
PROMETHEUS_IMAGE = "prom/prometheus:v2.53.0"
WORLD = "/world"
INIT = "world"  # the one-shot container (compose) / Job (Kubernetes) running `compose-init`
# Written by `compose-init` once everything the processes share is in place.
READY_FILE = "containers-ready"
DEFAULT_PUBLIC_URL = "http://localhost:8000"
PROMETHEUS_CONFIG = "/etc/prometheus/prometheus.yml"
PROMETHEUS_DATA = "/prometheus"

# What a Kubernetes scheduler must find free for each process, in MiB: its idle resident memory
# on the default world as the stack benchmark measures it (`python -m benchmarks.stack
# --prometheus`, "Per service", warm run, with each service started on its own as a container
# starts it, not forked from the supervisor: gateway with its console workers 438 MB, model server
# 190, retrieval 164, traffic 137, jobs 95, Prometheus 45 once its history is backfilled), rounded
# up with about a tenth to spare; Prometheus gets more, for its head block as scrapes accumulate
# and for the dashboards' range queries. The MLflow UI starts on first use; 340 MB is what it
# held once started. A retrain from the ops console loads scikit-learn into the model server for
# a while (about 170 MB more): a request is what it needs idle, not its peak.
MEMORY_MB: Mapping[str, int] = {
    "gateway": 512,
    "model-server": 224,
    "retrieval": 192,
    "mlflow": 384,
    "traffic": 160,
    "jobs": 112,
    "prometheus": 128,
}
# The init container builds the world when it is missing: the build's peak at the default scale
# (README, "Performance": at most 3 GB, measured by `python -m benchmarks.build`).
INIT_MEMORY_MB = 3072


@dataclass(frozen=True)
class Process:
    name: str
    command: tuple[str, ...]
    port: int
    health: str  # path answering 200 once the process is ready
    needs: tuple[str, ...] = ()  # processes that must be healthy before this one starts
    env: Mapping[str, str] = field(default_factory=dict)
    image: str = IMAGE
    scraped: bool = False  # Prometheus scrapes its /metrics

    @property
    def memory_mb(self) -> int:
        return MEMORY_MB[self.name]


def processes(public_url: str = DEFAULT_PUBLIC_URL) -> list[Process]:
    """Every long-running container, in start order (`topology.SERVICES`), each reaching the
    others by container name. `public_url` is the gateway's address as people open it: session
    links and Prometheus' own links are made from it."""
    urls = {svc.name: f"http://{svc.name}:{svc.container_port}" for svc in topology.SERVICES}
    return [_process(svc, urls, public_url) for svc in topology.SERVICES]


def _process(svc: topology.Service, urls: dict[str, str], public_url: str) -> Process:
    port = svc.container_port
    env: dict[str, str] = {}
    image = IMAGE
    if svc.name == MLFLOW:
        mlflow_data = f"{WORLD}/candidate/mlflow"
        command = ("python", *topology.mlflow_args("0.0.0.0", port))
        env = topology.mlflow_env(f"sqlite:///{mlflow_data}/mlflow.db", f"{mlflow_data}/artifacts")
    elif svc.name == PROMETHEUS:
        # The history the init container wrote is backfilled once, then Prometheus scrapes live.
        command = (
            "/bin/sh",
            "-c",
            f"[ -e {PROMETHEUS_DATA}/.backfilled ] || "
            "{ promtool tsdb create-blocks-from openmetrics --max-block-duration=744h "
            f"{WORLD}/run/prometheus/history.om {PROMETHEUS_DATA} && "
            f"touch {PROMETHEUS_DATA}/.backfilled; }}; "
            f"exec prometheus --config.file={PROMETHEUS_CONFIG} "
            f"--storage.tsdb.path={PROMETHEUS_DATA} --storage.tsdb.retention.time=400d "
            f"--web.external-url={public_url}/services/prometheus/ --web.route-prefix=/",
        )
        image = PROMETHEUS_IMAGE
    else:
        command = ("python", *topology.python_args(svc, WORLD, "0.0.0.0", port, urls))
        if svc.name == GATEWAY:
            env = {"SANDBOX_PUBLIC_URL": public_url}
    return Process(
        svc.name,
        command,
        port,
        svc.health,
        needs=svc.needs,
        env=env,
        image=image,
        scraped=svc.scraped,
    )


def init_command(speed: str, scale: str) -> tuple[str, ...]:
    """The one-shot container: builds the world if it is missing, then writes the run state."""
    return ("sandbox", "compose-init", WORLD, "--speed", speed, "--scale", scale)


def prometheus_config(procs: list[Process]) -> dict:
    """compose/prometheus.yml: the processes Prometheus scrapes, by container name."""
    return {
        "global": {"scrape_interval": "5s"},
        "scrape_configs": [
            {"job_name": p.name, "static_configs": [{"targets": [f"{p.name}:{p.port}"]}]}
            for p in procs
            if p.scraped
        ],
    }
