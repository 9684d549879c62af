"""Append-only telemetry files: how live services hand their rows to the gateway.

A service appends one JSON line per record *before* it answers the request the record describes, so
whatever a client has seen acknowledged survives the service being killed (a write that reached the
kernel outlives the process). The gateway, the telemetry's only owner, tails the files and loads
new complete lines; a torn last line from a killed writer is left until it is completed or ignored.
Each file holds rows of one candidate-visible table (`LIVE_TABLES`), with that table's columns as
JSON keys; timestamps are ISO strings in simulated time. Live rows carry ids the service drew at
random (63-bit), the same ids its responses show, or none, and the gateway numbers them after the
world's own.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

SPOOL_DIR = "spool"
# The tables live services add rows to; `retrieval.search_clicks` (request_id, clicked_article_id,
# click_rank, clicked_at) is folded into `retrieval.search_log` by the gateway.
LIVE_TABLES = (
    "serving.predictions",
    "retrieval.search_log",
    "retrieval.search_clicks",
    "telemetry.logs",
    "telemetry.metrics",
    "ops.materialization_runs",
    "monitoring.drift_daily",
    "monitoring.drift_feature_daily",
)


def spool_path(run_dir: Path, service: str, table: str) -> Path:
    if table not in LIVE_TABLES:
        raise ValueError(f"no live table {table!r}; one of {', '.join(LIVE_TABLES)}")
    return run_dir / SPOOL_DIR / f"{service}.{table}.jsonl"


def spool_files(run_dir: Path) -> list[tuple[str, str, Path]]:
    """(service, table, path) of every spool file present."""
    found = []
    for path in sorted((run_dir / SPOOL_DIR).glob("*.jsonl")):
        service, _, table = path.name.removesuffix(".jsonl").partition(".")
        if table in LIVE_TABLES:
            found.append((service, table, path))
    return found


class SpoolWriter:
    """Appends records to one spool file; safe to share between a service's threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()
        # A writer killed mid-line leaves a torn line; start ours on a fresh one.
        if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            os.write(self._fd, b"\n")

    def write(self, *records: dict[str, Any]) -> None:
        data = "".join(json.dumps(r, default=str, separators=(",", ":")) + "\n" for r in records)
        with self._lock:
            os.write(self._fd, data.encode())

    def close(self) -> None:
        os.close(self._fd)


def read_new(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Complete records after byte `offset`, and the offset to read from next time."""
    if not path.exists():
        return [], offset
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    records = []
    for line in data[:end].splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # the remains of a line torn by a killed writer
    return records, offset + end
