"""Candidate sessions and their recorded history, in the interviewer half of the world directory.

The gateway is their writer: every request a candidate makes through it becomes an event, tagged
with the answer-key evidence it touched, so the interviewer's replay can show when evidence was
first seen. A session is "not started" until its candidate first opens the workspace, then
"active" until the diagnosis is submitted, its time limit passes ("expired") or an interviewer
revokes it.

The store is an SQLite file in WAL mode: other processes (`sandbox review`) read it while the
gateway writes, each reader seeing whole events as of its query. An event is durable (on disk,
synced) when `record` returns.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import secrets
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from sandbox.review import evidence

SESSIONS_FILE = "sessions.sqlite"
# Where sessions were kept before: imported once into SESSIONS_FILE, then left as it was.
LEGACY_SESSIONS_FILE = "sessions.duckdb"
ENDED = ("submitted", "expired", "revoked")  # a session's states once it is over
STATES = ("not started", "active", *ENDED)
# Links stop working this long after the session was made, whatever its state. This and the
# history limits below are the store's defaults; the gateway hands it the stack's settings
# (`sandbox.services.settings`), whose defaults these are.
TOKEN_LIFETIME = dt.timedelta(days=14)
HASHED = "sha256:"
# What one session's history may hold. A long, busy session records a few thousand events and a
# few MB (every diagnosis version whole, SQL up to 100,000 characters); the review reads it all.
MAX_HISTORY_EVENTS = 10_000
MAX_HISTORY_BYTES = 8 * 1024 * 1024
# The diagnosis event's own keys (version, submitted) around its fields.
DIAGNOSIS_EVENT_OVERHEAD = 256
# Time away is measured by the browser's clock and posted a moment after the tab is back.
AWAY_SLACK_S = 2.0
# How long a statement waits for another process's write to finish before it gives up.
BUSY_TIMEOUT_MS = 10_000
# What a session's candidate is told about outside help, and whether only the workspace's own
# pages may call the candidate's routes.
Assistance = Literal["allowed", "not-allowed"]
ASSISTANCE: tuple[str, ...] = get_args(Assistance)
SCHEMA_VERSION = 3
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, candidate TEXT NOT NULL, "
    "candidate_token TEXT UNIQUE NOT NULL, interviewer_token TEXT UNIQUE NOT NULL, "
    "created_at TEXT NOT NULL, time_limit_min INTEGER, "
    "assistance TEXT NOT NULL DEFAULT 'allowed', workspace_only INTEGER NOT NULL DEFAULT 0, "
    "actions INTEGER NOT NULL DEFAULT 0)",
    # `seq` orders every event of the store: unique, increasing, never reused. `seen` is what
    # the event put in front of the candidate, as the values a diagnosis could cite (numbers,
    # dates): the review traces claims to it. It is kept apart from `detail`, which the
    # candidate's own history returns.
    "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
    "session_id TEXT NOT NULL, ts TEXT NOT NULL, sim_ts TEXT, kind TEXT NOT NULL, "
    "detail TEXT NOT NULL, evidence TEXT NOT NULL, seen TEXT NOT NULL DEFAULT '[]')",
    "CREATE INDEX IF NOT EXISTS events_of_session ON events (session_id, seq)",
    # When the candidate first opened the workspace: the session timer counts from here.
    "CREATE TABLE IF NOT EXISTS starts (session_id TEXT PRIMARY KEY, ts TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS revoked (session_id TEXT PRIMARY KEY, ts TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS diagnoses (session_id TEXT NOT NULL, version INTEGER NOT NULL, "
    "ts TEXT NOT NULL, fields TEXT NOT NULL, submitted INTEGER NOT NULL, "
    "PRIMARY KEY (session_id, version))",
    "CREATE TABLE IF NOT EXISTS scores (session_id TEXT NOT NULL, dimension TEXT NOT NULL, "
    "level INTEGER, note TEXT NOT NULL, ts TEXT NOT NULL, PRIMARY KEY (session_id, dimension))",
)
# How a file of an earlier version becomes this one, by the version it was at.
UPGRADES = {
    1: (
        "ALTER TABLE sessions ADD COLUMN assistance TEXT NOT NULL DEFAULT 'allowed'",
        "ALTER TABLE sessions ADD COLUMN workspace_only INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE events ADD COLUMN seen TEXT NOT NULL DEFAULT '[]'",
    ),
    2: ("ALTER TABLE sessions ADD COLUMN actions INTEGER NOT NULL DEFAULT 0",),
}
SESSION_COLUMNS = (
    "id, candidate, candidate_token, interviewer_token, created_at, time_limit_min, "
    "assistance, workspace_only, actions"
)
# At most this many values are kept of what one event showed.
MAX_SEEN_VALUES = 2_000


def token_hash(token: str) -> str:
    """Tokens are kept hashed: the sessions file alone lets nobody in."""
    return HASHED + hashlib.sha256(token.encode()).hexdigest()


class DiagnosisClosed(RuntimeError):
    pass


class HistoryFull(RuntimeError):
    """The session's history has no room for this event. Every route records what it did, so
    the refusal is that request's answer: `status_code` 429 when the count is reached, 413 when
    the event does not fit in the bytes left."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


class StoreUnavailable(RuntimeError):
    """The sessions cannot be opened now (another process holds what they must be read from)."""


class ImplausibleEvent(ValueError):
    """An event the browser could not have sent (time away that did not pass)."""


@dataclass(frozen=True)
class Diagnosis:
    version: int
    ts: dt.datetime
    fields: dict[str, str]
    submitted: bool


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _text(ts: dt.datetime | None) -> str | None:
    """Times are kept as naive UTC ISO text of fixed width: their order is the text's."""
    return ts.isoformat(timespec="microseconds") if ts is not None else None


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def _maybe_time(text: str | None) -> dt.datetime | None:
    return _time(text) if text is not None else None


@dataclass(frozen=True)
class Session:
    """A session. Its tokens are in the clear only on the object `create` returns; stored and
    loaded ones are hashes."""

    id: str
    candidate: str
    candidate_token: str
    interviewer_token: str
    created_at: dt.datetime
    time_limit_min: int | None = None
    # The policy the candidate is shown: whether outside help (an assistant, a script) is
    # allowed, and whether the candidate's routes answer only the workspace's own pages.
    assistance: str = "allowed"
    workspace_only: bool = False
    # Whether the candidate may act on the running stack from the ops console.
    actions: bool = False

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Session:
        sid, candidate, c_token, i_token, created_at, limit, assistance, workspace_only, actions = (
            row
        )
        return cls(
            sid,
            candidate,
            c_token,
            i_token,
            _time(created_at),
            limit,
            assistance,
            bool(workspace_only),
            bool(actions),
        )

    @property
    def policy(self) -> dict[str, Any]:
        return {"assistance": self.assistance, "workspace_only": self.workspace_only}


def exists(interviewer_dir: Path) -> bool:
    """Whether any session was ever recorded for this world."""
    return any((interviewer_dir / f).is_file() for f in (SESSIONS_FILE, LEGACY_SESSIONS_FILE))


class SessionStore:
    """One connection to the sessions file. Any number of processes may open it: the gateway
    writes while others read."""

    def __init__(
        self,
        interviewer_dir: Path,
        answer_key: dict[str, Any],
        max_events: int = MAX_HISTORY_EVENTS,
        max_bytes: int = MAX_HISTORY_BYTES,
        token_lifetime: dt.timedelta = TOKEN_LIFETIME,
    ) -> None:
        self.path = interviewer_dir / SESSIONS_FILE
        # Autocommit: every statement is its own transaction unless a method begins one.
        self.con = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
        )
        self._lock = threading.RLock()
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.token_lifetime = token_lifetime
        # session id -> (events, bytes of their details), counted from the file on first use
        self._usage: dict[str, tuple[int, int]] = {}
        self._tokens: dict[str, tuple[Session, str]] = {}
        # Kept in memory so that every request can check its session's state without a query.
        self._started: dict[str, dt.datetime] = {}
        self._closed: dict[str, str] = {}  # session id -> "submitted" | "revoked"
        self.evidence = [e for key in answer_key.get("faults", []) for e in key["evidence"]]
        self.con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self.con.execute("PRAGMA journal_mode = WAL")
        # Synced at every commit: an acknowledged event survives the machine, not only the process.
        self.con.execute("PRAGMA synchronous = FULL")
        if self.con.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            try:
                self._create(interviewer_dir / LEGACY_SESSIONS_FILE)
            except BaseException:
                self.con.close()
                raise
        self._started = {
            sid: _time(ts) for sid, ts in self.con.execute("SELECT session_id, ts FROM starts")
        }
        for (sid,) in self.con.execute("SELECT DISTINCT session_id FROM diagnoses WHERE submitted"):
            self._closed[sid] = "submitted"
        for (sid,) in self.con.execute("SELECT session_id FROM revoked"):
            self._closed[sid] = "revoked"

    def _create(self, legacy: Path) -> None:
        """The tables, and what a sessions file of an earlier version holds, in one transaction:
        a process stopped halfway leaves nothing to build on."""
        with self._transaction("IMMEDIATE"):
            version = self.con.execute("PRAGMA user_version").fetchone()[0]
            if version >= SCHEMA_VERSION:
                return  # another process made them first
            if version == 0:
                for ddl in SCHEMA:
                    self.con.execute(ddl)
                if legacy.is_file():
                    _import_legacy(legacy, self.con)
            else:
                for step in range(version, SCHEMA_VERSION):
                    for ddl in UPGRADES[step]:
                        self.con.execute(ddl)
            self.con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _transaction(self, mode: str = "DEFERRED") -> Iterator[None]:
        with self._lock:
            self.con.execute(f"BEGIN {mode}")
            try:
                yield
            except BaseException:
                self.con.execute("ROLLBACK")
                raise
            self.con.execute("COMMIT")

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads inside see the store as of one moment, whatever is written meanwhile."""
        with self._transaction():
            yield

    def create(
        self,
        candidate: str,
        time_limit_min: int | None = None,
        assistance: str = "allowed",
        workspace_only: bool = False,
        actions: bool = False,
    ) -> Session:
        if assistance not in ASSISTANCE:
            raise ValueError(f"assistance is one of {', '.join(ASSISTANCE)}, not {assistance!r}")
        session = Session(
            id=uuid.uuid4().hex[:12],
            candidate=candidate,
            candidate_token=secrets.token_urlsafe(24),
            interviewer_token=secrets.token_urlsafe(24),
            created_at=_utcnow(),
            time_limit_min=time_limit_min,
            assistance=assistance,
            workspace_only=workspace_only,
            actions=actions,
        )
        with self._lock:
            self.con.execute(
                f"INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    session.id,
                    session.candidate,
                    token_hash(session.candidate_token),
                    token_hash(session.interviewer_token),
                    _text(session.created_at),
                    session.time_limit_min,
                    session.assistance,
                    int(session.workspace_only),
                    int(session.actions),
                ),
            )
        return session

    def by_token(self, token: str) -> tuple[Session, str] | None:
        """The session a token belongs to and the role it grants ("candidate"/"interviewer");
        None for an unknown token. A revoked or expired session's candidate is refused by the
        caller; its interviewer keeps reviewing it."""
        hashed = token_hash(token)
        found = self._tokens.get(hashed)
        if found is None:
            with self._lock:
                row = self.con.execute(
                    f"SELECT {SESSION_COLUMNS}, CASE WHEN candidate_token = ? THEN 'candidate' "
                    "ELSE 'interviewer' END FROM sessions "
                    "WHERE candidate_token = ? OR interviewer_token = ?",
                    (hashed, hashed, hashed),
                ).fetchone()
            if row is None:
                return None
            *fields, role = row
            found = self._tokens[hashed] = (Session.from_row(tuple(fields)), role)
        if _utcnow() - found[0].created_at > self.token_lifetime:
            return None
        return found

    def get(self, session_id: str) -> Session | None:
        with self._lock:
            row = self.con.execute(
                f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
        return Session.from_row(row) if row else None

    def all(self) -> list[Session]:
        with self._lock:
            rows = self.con.execute(
                f"SELECT {SESSION_COLUMNS} FROM sessions ORDER BY created_at"
            ).fetchall()
        return [Session.from_row(row) for row in rows]

    def state(self, session: Session, now: dt.datetime | None = None) -> str:
        """One of STATES. `now` is wall time (UTC): a time limit is the interview's, not the
        simulation's."""
        closed = self._closed.get(session.id)
        if closed:
            return closed
        started = self._started.get(session.id)
        if started is None:
            return "not started"
        if session.time_limit_min is not None:
            deadline = started + dt.timedelta(minutes=session.time_limit_min)
            if (now or _utcnow()) >= deadline:
                return "expired"
        return "active"

    def revoke(self, session_id: str) -> None:
        """End a session: its tokens stop working at once."""
        with self._lock:
            self.con.execute(
                "INSERT INTO revoked VALUES (?, ?) ON CONFLICT DO NOTHING",
                (session_id, _text(_utcnow())),
            )
            self._closed[session_id] = "revoked"

    def record(
        self,
        session_id: str,
        sim_ts: dt.datetime,
        kind: str,
        detail: dict[str, Any],
        shown: evidence.Shown = (),
    ) -> None:
        """Append an event, tagged with the evidence it touched and the values it showed;
        durable when this returns. HistoryFull when the session's history has no room for it,
        ImplausibleEvent for time away that did not pass; either way nothing is written."""
        touched = evidence.touched(self.evidence, kind, detail, list(shown))
        payload = json.dumps(detail, default=str)
        seen = json.dumps(evidence.seen_values(shown, MAX_SEEN_VALUES))
        with self._lock:
            now = _utcnow()
            self._make_room(session_id, len(payload) + len(seen))
            if kind == "away":
                self._check_away(session_id, detail.get("seconds", 0), now)
            self.con.execute(
                "INSERT INTO events (session_id, ts, sim_ts, kind, detail, evidence, seen) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (session_id, _text(now), _text(sim_ts), kind, payload, json.dumps(touched), seen),
            )
            events, size = self._usage[session_id]
            self._usage[session_id] = (events + 1, size + len(payload) + len(seen))

    def _make_room(self, session_id: str, size: int) -> None:
        """HistoryFull unless an event of `size` bytes fits. Called with the lock held."""
        if session_id not in self._usage:
            events, total = self.con.execute(
                "SELECT count(*), coalesce(sum(length(detail) + length(seen)), 0) FROM events "
                "WHERE session_id = ?",
                (session_id,),
            ).fetchone()
            self._usage[session_id] = (int(events), int(total))
        events, total = self._usage[session_id]
        if events + 1 > self.max_events:
            raise HistoryFull(
                429, f"this session's history is full: it holds {self.max_events:,} events"
            )
        if total + size > self.max_bytes:
            raise HistoryFull(
                413,
                f"this session's history is full: it holds {self.max_bytes // 1024 // 1024} MB, "
                f"and this request would add {size // 1024 + 1} KB to the {total // 1024} KB "
                "recorded",
            )

    def _check_away(self, session_id: str, seconds: Any, now: dt.datetime) -> None:
        """Time away is the time since the tab was hidden: it began after the session started
        and after the previous absence ended (when that was recorded), so absences can never
        add up to more than the time that passed. Called with the lock held."""
        (last,) = self.con.execute(
            "SELECT max(ts) FROM events WHERE session_id = ? AND kind = 'away'", (session_id,)
        ).fetchone()
        since = _maybe_time(last) or self._started.get(session_id) or now
        possible = (now - since).total_seconds() + AWAY_SLACK_S
        if not isinstance(seconds, int | float) or seconds > possible:
            raise ImplausibleEvent(
                f"{seconds} s away is more than the {max(0, round(possible))} s that passed "
                "since the session started or the last time away ended"
            )

    def started(self, session_id: str) -> dt.datetime:
        """When the candidate first opened the workspace (now, on the first call)."""
        if session_id in self._started:
            return self._started[session_id]
        with self._lock:
            (ts,) = self.con.execute(
                "INSERT INTO starts VALUES (?, ?) "
                "ON CONFLICT DO UPDATE SET ts = ts RETURNING ts",  # the first start stays
                (session_id, _text(_utcnow())),
            ).fetchone()
        self._started[session_id] = started = _time(ts)
        return started

    def started_at(self, session_id: str) -> dt.datetime | None:
        return self._started.get(session_id)

    def history(
        self, session_id: str, kind: str | None = None, after: int = 0
    ) -> list[dict[str, Any]]:
        """Events oldest first; `after` (a `seq`) returns only newer ones, for a live view."""
        with self._lock:
            rows = self.con.execute(
                "SELECT seq, ts, sim_ts, kind, detail, evidence, seen FROM events "
                "WHERE session_id = ? AND (? IS NULL OR kind = ?) AND seq > ? "
                "ORDER BY seq",
                (session_id, kind, kind, after),
            ).fetchall()
        return [
            {
                "seq": seq,
                "ts": _time(ts).isoformat(),
                "sim_ts": _time(sim_ts).isoformat() if sim_ts else None,
                "kind": kind,
                "detail": json.loads(detail),
                "evidence": json.loads(evidence),
                "seen": json.loads(seen),
            }
            for seq, ts, sim_ts, kind, detail, evidence, seen in rows
        ]

    def diagnosis(self, session_id: str) -> Diagnosis | None:
        """The latest saved version of the session's diagnosis."""
        versions = self.diagnoses(session_id, latest_only=True)
        return versions[0] if versions else None

    def diagnoses(self, session_id: str, latest_only: bool = False) -> list[Diagnosis]:
        """Every saved version, oldest first (or only the latest)."""
        order = "DESC LIMIT 1" if latest_only else "ASC"
        with self._lock:
            rows = self.con.execute(
                "SELECT version, ts, fields, submitted FROM diagnoses WHERE session_id = ? "
                f"ORDER BY version {order}",
                (session_id,),
            ).fetchall()
        return [Diagnosis(v, _time(ts), json.loads(f), bool(sub)) for v, ts, f, sub in rows]

    def save_diagnosis(
        self, session_id: str, fields: dict[str, str], submit: bool = False
    ) -> tuple[Diagnosis, bool]:
        """A new version (and True), unless nothing changed (the latest, and False);
        DiagnosisClosed once submitted."""
        with self._transaction("IMMEDIATE"):
            row = self.con.execute(
                "SELECT version, ts, fields, submitted FROM diagnoses WHERE session_id = ? "
                "ORDER BY version DESC LIMIT 1",
                (session_id,),
            ).fetchone()
            version, ts, previous, submitted = row or (0, None, None, False)
            if submitted:
                raise DiagnosisClosed("the diagnosis was submitted; it can no longer change")
            if previous is not None and json.loads(previous) == fields and not submit:
                assert ts is not None  # a saved version has its time
                return Diagnosis(version, _time(ts), fields, False), False
            # A version the history has no room to record is not saved either: the review shows
            # every version with the event that saved it.
            self._make_room(session_id, len(json.dumps(fields)) + DIAGNOSIS_EVENT_OVERHEAD)
            saved = Diagnosis(version + 1, _utcnow(), fields, submit)
            self.con.execute(
                "INSERT INTO diagnoses VALUES (?, ?, ?, ?, ?)",
                (session_id, saved.version, _text(saved.ts), json.dumps(fields), int(submit)),
            )
        if submit:
            self._closed[session_id] = "submitted"
        return saved, True

    def scores(self, session_id: str) -> dict[str, dict[str, Any]]:
        with self._lock:
            rows = self.con.execute(
                "SELECT dimension, level, note, ts FROM scores WHERE session_id = ?",
                (session_id,),
            ).fetchall()
        return {
            d: {"level": lvl, "note": note, "ts": _time(ts).isoformat()}
            for d, lvl, note, ts in rows
        }

    def save_score(self, session_id: str, dimension: str, level: int | None, note: str) -> None:
        with self._lock:
            self.con.execute(
                "INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?)",
                (session_id, dimension, level, note, _text(_utcnow())),
            )

    def close(self) -> None:
        with self._lock:
            self.con.close()


def _import_legacy(path: Path, con: sqlite3.Connection) -> None:
    """Copy the sessions of a DuckDB sessions file (of any earlier version: without time limits,
    event `seq` numbers or hashed tokens) into the new file's tables."""
    import duckdb

    try:
        old = duckdb.connect(str(path), read_only=True)
    except duckdb.IOException as exc:
        raise StoreUnavailable(
            f"{path} holds this world's earlier sessions and another process has it open "
            f"({exc}); stop it, then retry"
        ) from None
    with old:
        tables = {t for (t,) in old.execute("SELECT table_name FROM duckdb_tables()").fetchall()}

        def rows(table: str, columns: list[str], order: list[str]) -> list[tuple[Any, ...]]:
            """`columns` of every row of `table`, NULL for those it lacks, ordered by those of
            `order` it has."""
            if table not in tables:
                return []
            have = {
                c
                for (c,) in old.execute(
                    "SELECT column_name FROM duckdb_columns() WHERE table_name = ?", [table]
                ).fetchall()
            }
            select = ", ".join(c if c in have else f"NULL AS {c}" for c in columns)
            by = ", ".join(c for c in order if c in have) or "1"
            return old.execute(f"SELECT {select} FROM {table} ORDER BY {by}").fetchall()

        session_columns = ["id", "candidate", "candidate_token", "interviewer_token"]
        for sid, candidate, c_token, i_token, created_at, limit in rows(
            "sessions", [*session_columns, "created_at", "time_limit_min"], ["created_at"]
        ):
            if not c_token.startswith(HASHED):
                c_token, i_token = token_hash(c_token), token_hash(i_token)
            con.execute(
                "INSERT INTO sessions (id, candidate, candidate_token, interviewer_token, "
                "created_at, time_limit_min) VALUES (?, ?, ?, ?, ?, ?)",
                (sid, candidate, c_token, i_token, _text(created_at), limit),
            )
        # Events in the order they were recorded: by wall time, then by `seq` where it exists.
        for sid, ts, sim_ts, kind, detail, touched in rows(
            "events",
            ["session_id", "ts", "sim_ts", "kind", "detail", "evidence"],
            ["ts", "seq"],
        ):
            con.execute(
                "INSERT INTO events (session_id, ts, sim_ts, kind, detail, evidence) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (sid, _text(ts), _text(sim_ts), kind, detail, json.dumps(list(touched or []))),
            )
        for table in ("starts", "revoked"):
            for sid, ts in rows(table, ["session_id", "ts"], ["ts"]):
                con.execute(f"INSERT INTO {table} VALUES (?, ?)", (sid, _text(ts)))
        for sid, version, ts, fields, submitted in rows(
            "diagnoses",
            ["session_id", "version", "ts", "fields", "submitted"],
            ["session_id", "version"],
        ):
            con.execute(
                "INSERT INTO diagnoses VALUES (?, ?, ?, ?, ?)",
                (sid, version, _text(ts), fields, int(bool(submitted))),
            )
        for sid, dimension, level, note, ts in rows(
            "scores", ["session_id", "dimension", "level", "note", "ts"], ["ts"]
        ):
            con.execute(
                "INSERT INTO scores VALUES (?, ?, ?, ?, ?)",
                (sid, dimension, level, note or "", _text(ts)),
            )
