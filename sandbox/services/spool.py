"""Append-only telemetry files: how live services hand their rows to the gateway.

A service appends one JSON line per record *before* it answers the request the record describes, so
whatever a client has seen acknowledged survives the service being killed (a write that reached the
kernel outlives the process). The gateway, the telemetry's only owner, tails the files and loads
new complete lines; a torn last line from a killed writer is left until it is completed or ignored.
Each file holds rows of one table whose live rows services spool (`LIVE_TABLES`, declared in
`sandbox.schema`), written by a service the declaration names, with that table's columns as JSON
keys; timestamps and dates are ISO strings in simulated time. Live rows carry ids the service drew
at random (63-bit), the same ids its responses show, or none, and the gateway numbers them after
the world's own. A row may also carry `session_id`: the candidate session whose own call produced
it.

A row is checked against its table's declaration (`check`) where it is written and again where it
is loaded: every declared column present (NULL allowed; the id column may be left out), no other,
each value of the column's type. One that does not fit is refused with a message naming the table
and the column.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from sandbox import schema

SPOOL_DIR = "spool"
# The tables live services add rows to; `retrieval.search_clicks` (request_id, clicked_article_id,
# click_rank, clicked_at) is folded into `retrieval.search_log` by the gateway.
# Live rows of a table the gateway otherwise computes itself: metric points the scheduler restored
# from the request logs (`restore-metric-series`), shown beside the gateway's own live series.
RESTORED_METRICS = "telemetry.metrics"
WRITERS: dict[str, tuple[str, ...]] = schema.SPOOL_WRITERS
SPOOLED_TABLES: dict[str, schema.Table] = {name: schema.table(name) for name in WRITERS}
LIVE_TABLES = tuple(SPOOLED_TABLES)


class BadRow(ValueError):
    """A live row that does not fit its table's declaration; the message names table and column."""


def spool_path(run_dir: Path, service: str, table: str) -> Path:
    if table not in LIVE_TABLES:
        raise ValueError(f"no live table {table!r}; one of {', '.join(LIVE_TABLES)}")
    services = WRITERS[table]
    if schema.EVERY_SERVICE not in services and service not in services:
        raise ValueError(f"{service} adds no rows to {table} (written by {', '.join(services)})")
    return run_dir / SPOOL_DIR / f"{service}.{table}.jsonl"


def spool_files(run_dir: Path) -> list[tuple[str, str, Path]]:
    """(service, table, path) of every spool file present."""
    found = []
    for path in sorted((run_dir / SPOOL_DIR).glob("*.jsonl")):
        service, _, table = path.name.removesuffix(".jsonl").partition(".")
        if table in LIVE_TABLES:
            found.append((service, table, path))
    return found


# -- checking a row against its declaration -----------------------------------------------------


class _Unfit(ValueError):
    """A value that does not fit its column's type; the message says how."""


def _integer(type_: str, bits: int) -> Callable[[Any], int]:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1)

    def check(value: Any) -> int:
        if type(value) is not int:
            raise _Unfit(f"{type_} expects an integer, got {value!r}")
        if not low <= value < high:
            raise _Unfit(f"{value} is out of range for {type_}")
        return value

    return check


def _double(value: Any) -> float:
    if type(value) not in (float, int):
        raise _Unfit(f"DOUBLE expects a number, got {value!r}")
    try:
        return float(value)
    except OverflowError:
        raise _Unfit(f"{value} is out of range for DOUBLE") from None


def _varchar(value: Any) -> str:
    if type(value) is not str:
        raise _Unfit(f"VARCHAR expects a string, got {value!r}")
    return value


def _boolean(value: Any) -> bool:
    if type(value) is not bool:
        raise _Unfit(f"BOOLEAN expects true or false, got {value!r}")
    return value


def _parsed(parse: Callable[[str], Any], value: Any) -> Any:
    if type(value) is not str:
        return None
    try:
        return parse(value)
    except ValueError:
        return None


def _timestamp(value: Any) -> dt.datetime:
    parsed = _parsed(dt.datetime.fromisoformat, value)
    if parsed is None:
        raise _Unfit(f"TIMESTAMP expects an ISO timestamp string, got {value!r}")
    if parsed.tzinfo is not None:
        raise _Unfit(f"TIMESTAMP expects simulated time, without a UTC offset, got {value!r}")
    return parsed


def _date(value: Any) -> dt.date:
    parsed = _parsed(dt.date.fromisoformat, value)
    if parsed is None:
        raise _Unfit(f"DATE expects an ISO date string, got {value!r}")
    return parsed


def _list(type_: str, item: Callable[[Any], Any]) -> Callable[[Any], list[Any]]:
    def check(value: Any) -> list[Any]:
        if type(value) is not list:
            raise _Unfit(f"{type_} expects a list, got {value!r}")
        try:
            return [None if v is None else item(v) for v in value]
        except _Unfit as err:
            raise _Unfit(f"{type_} expects a list of its items: {err}") from None

    return check


CHECKS: dict[str, Callable[[Any], Any]] = {
    "BIGINT": _integer("BIGINT", 64),
    "INTEGER": _integer("INTEGER", 32),
    "TINYINT": _integer("TINYINT", 8),
    "DOUBLE": _double,
    "VARCHAR": _varchar,
    "BOOLEAN": _boolean,
    "TIMESTAMP": _timestamp,
    "DATE": _date,
    "BIGINT[]": _list("BIGINT[]", _integer("BIGINT", 64)),
    "DOUBLE[]": _list("DOUBLE[]", _double),
}


# Per live table: (column, its check, whether a row may leave it out) for every column a live row
# may carry: the declared ones, then the session whose call produced it.
_COLUMNS = {
    name: [
        (c.name, CHECKS[c.type], c.name == t.id or c is schema.SESSION)
        for c in (*t.columns, schema.SESSION)
    ]
    for name, t in SPOOLED_TABLES.items()
}


def check(table: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """`record`, a live row of `table` as read from JSON, with its values as Python values of
    the declared types (timestamps and dates parsed; an id or session left out is None). Raises
    BadRow naming the table and the first column that does not fit."""
    columns = _COLUMNS.get(table)
    if columns is None:
        raise BadRow(f"{table}: no live table; one of {', '.join(LIVE_TABLES)}")
    if not isinstance(record, Mapping):
        raise BadRow(f"{table}: a row is a JSON object of its columns, not {type(record).__name__}")
    row: dict[str, Any] = {}
    for name, fits, optional in columns:
        value = record.get(name)
        if value is None:
            if name not in record and not optional:
                raise BadRow(f"{table}.{name}: missing (send null for no value)")
            row[name] = None
            continue
        try:
            row[name] = fits(value)
        except _Unfit as err:
            raise BadRow(f"{table}.{name}: {err}") from None
    for name in record:
        if name not in row:
            declared = ", ".join(SPOOLED_TABLES[table].names)
            raise BadRow(f"{table}.{name}: no such column (declared: {declared})")
    return row


def production_rows(table: str, records: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """The `records` of `table` that fit its declaration (as `check` returns them) and that no
    session's own call wrote; a line that does not fit is skipped, as the console skips it."""
    for record in records:
        try:
            row = check(table, record)
        except BadRow:
            continue
        if row.get(schema.SESSION.name) is None:
            yield row


class SpoolWriter:
    """Appends records to one spool file; safe to share between a service's threads. Records are
    checked against the file's table first: a record that does not fit raises BadRow, and
    nothing of that call is written."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.table = path.name.removesuffix(".jsonl").partition(".")[2]
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()
        # A writer killed mid-line leaves a torn line; start ours on a fresh one.
        if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            os.write(self._fd, b"\n")

    def write(self, *records: dict[str, Any]) -> None:
        lines = [json.dumps(r, default=str, separators=(",", ":")) for r in records]
        for line in lines:  # as the gateway will read it
            check(self.table, json.loads(line))
        data = "".join(line + "\n" for line in lines)
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
