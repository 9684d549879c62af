"""The running stack's address book and operator token, shared by the supervisor, the gateway and
the CLI through files in the world directory."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from sandbox.layout import WorldPaths

STACK_FILE = "stack.json"
ADMIN_TOKEN_FILE = "operator-token"
# A service started on its first use is asked for by a file of its name here (the gateway writes
# it, the supervisor, which owns every process, starts the service when it sees it).
START_REQUESTS = "start-requests"
# Path segment under /services/ -> the service it reaches.
PROXIED = {
    "model": "model-server",
    "retrieval": "retrieval",
    "mlflow": "mlflow",
    "prometheus": "prometheus",
}


@dataclass(frozen=True)
class ServiceAddress:
    url: str  # http://127.0.0.1:PORT
    health: str  # path answering 200 when the service is up
    # Not started with the stack but on first use: an idle stack does not hold it in memory.
    on_demand: bool = False


def write_addresses(run_dir: Path, gateway: str, services: dict[str, ServiceAddress]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {"gateway": gateway, "services": {k: asdict(v) for k, v in services.items()}}
    tmp = run_dir / (STACK_FILE + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(run_dir / STACK_FILE)


def read_addresses(run_dir: Path) -> dict[str, ServiceAddress]:
    raw = json.loads((run_dir / STACK_FILE).read_text())
    return {k: ServiceAddress(**v) for k, v in raw["services"].items()}


def gateway_url(run_dir: Path) -> str:
    return json.loads((run_dir / STACK_FILE).read_text())["gateway"]


def admin_token(paths: WorldPaths) -> str:
    """The operator's token (creates sessions), kept with the interviewer's files."""
    path = paths.interviewer / ADMIN_TOKEN_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def request_start(run_dir: Path, name: str) -> None:
    """Ask the supervisor to start the on-demand service `name` (idempotent)."""
    requests = run_dir / START_REQUESTS
    requests.mkdir(exist_ok=True)
    (requests / name).touch()


def start_requested(run_dir: Path, name: str) -> bool:
    return (run_dir / START_REQUESTS / name).exists()


def clear_start_requests(run_dir: Path) -> None:
    """A stack starting again starts its on-demand services on their first use again."""
    requests = run_dir / START_REQUESTS
    if requests.is_dir():
        for request in requests.iterdir():
            request.unlink(missing_ok=True)
