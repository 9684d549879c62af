"""The stack's processes, once: what each runs, where it answers its health check, which others it
is told the address of, and which Prometheus scrapes. `sandbox up` runs them on loopback
(`supervisor`); `deploy/` writes the same list as containers for compose and Kubernetes, so the
two ways to run a stack cannot start different processes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sandbox.pipeline import registry_stamp

GATEWAY = "gateway"  # the one process reached from outside; every other is reached through it
MLFLOW = "mlflow"
PROMETHEUS = "prometheus"
MLFLOW_PREFIX = "/services/mlflow"  # the MLflow UI's static prefix, as the gateway proxies it


@dataclass(frozen=True)
class Service:
    name: str
    module: str  # run as `python -m module`; "" for a process that is not one of ours
    health: str  # path answering 200 once the process is ready
    container_port: int  # its port in a container (on loopback every port is a free one)
    needs: tuple[str, ...] = ()  # processes that must be healthy before this one starts
    links: tuple[tuple[str, str], ...] = ()  # (option, service): told that service's address
    scraped: bool = False  # Prometheus scrapes its /metrics
    # On loopback, started on first use rather than with the stack: the registry UI is the
    # heaviest process and the one a candidate opens least, so an idle stack does not hold it.
    on_demand: bool = False


SERVICES: tuple[Service, ...] = (
    Service("model-server", "sandbox.services.model_server", "/health", 8001, scraped=True),
    Service("retrieval", "sandbox.services.retrieval", "/health", 8002, scraped=True),
    Service(MLFLOW, "", f"{MLFLOW_PREFIX}/health", 5000, on_demand=True),
    Service(
        "traffic",
        "sandbox.services.traffic",
        "/",
        8003,
        needs=("model-server", "retrieval"),
        links=(("--model-url", "model-server"), ("--retrieval-url", "retrieval")),
    ),
    Service("jobs", "sandbox.services.jobs", "/", 8004, scraped=True),
    Service(PROMETHEUS, "", "/-/ready", 9090),
    Service(
        GATEWAY,
        "sandbox.services.gateway",
        "/-/health",
        8000,
        needs=("model-server", "retrieval", MLFLOW, "traffic", "jobs", PROMETHEUS),
    ),
)


def service(name: str) -> Service:
    return next(s for s in SERVICES if s.name == name)


def python_args(
    svc: Service,
    world: str,
    host: str,
    port: int,
    urls: Mapping[str, str],
    fd: int | None = None,
) -> list[str]:
    """The arguments after the interpreter for one of our services: its module, the world, where
    it listens (on the inherited listening socket `fd` when given), and the address of each
    service it is linked to (`urls`, by name)."""
    if not svc.module:
        raise ValueError(f"{svc.name} is not one of the stack's Python services")
    linked = [arg for option, target in svc.links for arg in (option, urls[target])]
    listen = ["--host", host, "--port", str(port), *([] if fd is None else ["--fd", str(fd)])]
    return ["-m", svc.module, "--world", world, *listen, *linked]


def mlflow_args(host: str, port: int, fd: int | None = None) -> list[str]:
    """The arguments after the interpreter for the MLflow UI: one uvicorn process serving
    MLflow's own app (on the inherited listening socket `fd` when given). `mlflow server` would
    start the same app as a child of a launcher process that holds as much memory again."""
    return [
        "-m",
        "uvicorn",
        "mlflow.server.fastapi_app:app",
        "--host",
        host,
        "--port",
        str(port),
        *([] if fd is None else ["--fd", str(fd)]),
        "--workers",
        "1",
        "--log-level",
        "warning",
        "--no-access-log",
    ]


def mlflow_env(store_uri: str, artifacts: str) -> dict[str, str]:
    """What `mlflow server --serve-artifacts --artifacts-destination ARTIFACTS` hands the app it
    starts (MLflow is pinned to the versions that read these). The registry records artifact
    locations as `mlflow-artifacts:/...`, served from `artifacts`, wherever the world is."""
    return {
        "_MLFLOW_SERVER_FILE_STORE": store_uri,
        "_MLFLOW_SERVER_ARTIFACT_ROOT": registry_stamp.PROXIED,
        "_MLFLOW_SERVER_SERVE_ARTIFACTS": "true",
        "_MLFLOW_SERVER_ARTIFACT_DESTINATION": artifacts,
        "_MLFLOW_STATIC_PREFIX": MLFLOW_PREFIX,
        "_MLFLOW_SGI_NAME": "uvicorn",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
