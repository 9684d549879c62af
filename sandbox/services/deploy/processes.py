"""The stack as containers, once: every process `sandbox up` runs (plus Prometheus), with the
command, port, health path and environment it runs with in a container. compose/compose.yaml is
checked against this list (tests/services/deploy/) and the Kubernetes manifests are written from
it, so the two cannot drift apart."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sandbox.pipeline import registry_stamp
from sandbox.services.supervisor import MLFLOW_PREFIX

IMAGE = "ml-incident-sandbox:latest"
PROMETHEUS_IMAGE = "prom/prometheus:v2.53.0"
WORLD = "/world"
# The one process reached from outside; everything else is reached through it.
GATEWAY = "gateway"
INIT = "world"  # the one-shot container (compose) / Job (Kubernetes) running `compose-init`
# Written by `compose-init` once everything the processes share is in place.
READY_FILE = "containers-ready"
DEFAULT_PUBLIC_URL = "http://localhost:8000"
PROMETHEUS_CONFIG = "/etc/prometheus/prometheus.yml"
PROMETHEUS_DATA = "/prometheus"

# What a Kubernetes scheduler must find free for each process, in MiB: its idle resident memory
# on the default world as the stack benchmark measures it (`python -m benchmarks.stack`, "Per
# service", warm run: gateway with its console workers 462 MB, model server 366, retrieval 341,
# traffic 134, jobs 91), rounded up with about a tenth to spare. The MLflow UI starts on first
# use; 340 MB is what it held once started. Prometheus is not part of that benchmark and is given
# a small server's usual figure.
MEMORY_MB: Mapping[str, int] = {
    "gateway": 512,
    "model-server": 400,
    "retrieval": 384,
    "mlflow": 384,
    "traffic": 160,
    "jobs": 112,
    "prometheus": 256,
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


def _python(module: str, port: int, *extra: str) -> tuple[str, ...]:
    return (
        "python",
        "-m",
        module,
        "--world",
        WORLD,
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
        *extra,
    )


def processes(public_url: str = DEFAULT_PUBLIC_URL) -> list[Process]:
    """Every long-running container, in start order. `public_url` is the gateway's address as
    people open it: session links and Prometheus' own links are made from it."""
    mlflow_data = f"{WORLD}/candidate/mlflow"
    return [
        Process(
            "model-server",
            _python("sandbox.services.model_server", 8001),
            8001,
            "/health",
            scraped=True,
        ),
        Process(
            "retrieval", _python("sandbox.services.retrieval", 8002), 8002, "/health", scraped=True
        ),
        Process(
            "mlflow",
            # One uvicorn process serving MLflow's app, as `sandbox up` runs it
            # (supervisor.mlflow_ui says why, and what these variables are).
            (
                "python",
                "-m",
                "uvicorn",
                "mlflow.server.fastapi_app:app",
                "--host",
                "0.0.0.0",
                "--port",
                "5000",
                "--workers",
                "1",
                "--no-access-log",
            ),
            5000,
            f"{MLFLOW_PREFIX}/health",
            env={
                "_MLFLOW_SERVER_FILE_STORE": f"sqlite:///{mlflow_data}/mlflow.db",
                "_MLFLOW_SERVER_ARTIFACT_ROOT": registry_stamp.PROXIED,
                "_MLFLOW_SERVER_SERVE_ARTIFACTS": "true",
                "_MLFLOW_SERVER_ARTIFACT_DESTINATION": f"{mlflow_data}/artifacts",
                "_MLFLOW_STATIC_PREFIX": MLFLOW_PREFIX,
                "_MLFLOW_SGI_NAME": "uvicorn",
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            },
        ),
        Process(
            "traffic",
            _python(
                "sandbox.services.traffic",
                8003,
                "--model-url",
                "http://model-server:8001",
                "--retrieval-url",
                "http://retrieval:8002",
            ),
            8003,
            "/",
            needs=("model-server", "retrieval"),
        ),
        Process("jobs", _python("sandbox.services.jobs", 8004), 8004, "/", scraped=True),
        Process(
            "prometheus",
            # The history the init container wrote is backfilled once, then Prometheus scrapes
            # live.
            (
                "/bin/sh",
                "-c",
                f"[ -e {PROMETHEUS_DATA}/.backfilled ] || "
                "{ promtool tsdb create-blocks-from openmetrics --max-block-duration=744h "
                f"{WORLD}/run/prometheus/history.om {PROMETHEUS_DATA} && "
                f"touch {PROMETHEUS_DATA}/.backfilled; }}; "
                f"exec prometheus --config.file={PROMETHEUS_CONFIG} "
                f"--storage.tsdb.path={PROMETHEUS_DATA} --storage.tsdb.retention.time=400d "
                f"--web.external-url={public_url}/services/prometheus/ --web.route-prefix=/",
            ),
            9090,
            "/-/ready",
            image=PROMETHEUS_IMAGE,
        ),
        Process(
            GATEWAY,
            _python("sandbox.services.gateway.app", 8000),
            8000,
            "/-/health",
            needs=("model-server", "retrieval", "mlflow", "traffic", "jobs", "prometheus"),
            env={"SANDBOX_PUBLIC_URL": public_url},
        ),
    ]


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
