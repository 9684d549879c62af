"""Structured JSON logs from every simulated job and service, kept as rows until the build writes them."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import polars as pl

from sandbox import schema

LOG_SCHEMA = schema.polars_schema("telemetry.logs")


class LogSink:
    def __init__(self) -> None:
        self._rows: list[dict[str, Any]] = []
        self._frames: list[pl.DataFrame] = []

    def emit(
        self, ts: dt.datetime, service: str, level: str, event: str, message: str, **attrs: Any
    ) -> None:
        self._rows.append(
            {
                "ts": ts,
                "service": service,
                "level": level,
                "event": event,
                "message": message,
                "attrs": json.dumps(attrs, sort_keys=True, default=str),
            }
        )

    def emit_frame(self, frame: pl.DataFrame) -> None:
        """Many lines at once (e.g. request logs): a frame with the LOG_SCHEMA columns."""
        self._frames.append(frame.select(list(LOG_SCHEMA)).cast(LOG_SCHEMA))

    def frame(self) -> pl.DataFrame:
        frames = [pl.DataFrame(self._rows, schema=LOG_SCHEMA), *self._frames]
        return pl.concat(frames).sort("ts", "service", "event", "message", maintain_order=True)
