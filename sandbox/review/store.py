"""Candidate sessions and their recorded history, in the interviewer half of the world directory.

The gateway is their only writer: every request a candidate makes through it becomes an event,
tagged with the answer-key evidence it touched, so the interviewer's replay can show when evidence
was first seen.
A session is "not started" until its candidate first opens the workspace, then "active" until the
diagnosis is submitted, its time limit passes ("expired") or an interviewer revokes it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from sandbox.review import evidence

SESSIONS_FILE = "sessions.duckdb"
STATES = ("not started", "active", "submitted", "expired", "revoked")
# Links stop working this long after the session was made, whatever its state.
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


class SessionStore:
    def __init__(
        self,
        interviewer_dir: Path,
        answer_key: dict[str, Any],
        max_events: int = MAX_HISTORY_EVENTS,
        max_bytes: int = MAX_HISTORY_BYTES,
    ) -> None:
        self.con = duckdb.connect(str(interviewer_dir / SESSIONS_FILE))
        self._lock = threading.Lock()
        self.max_events = max_events
        self.max_bytes = max_bytes
        # session id -> (events, bytes of their details), counted from the file on first use
        self._usage: dict[str, tuple[int, int]] = {}
        self._tokens: dict[str, tuple[Session, str]] = {}
        # Kept in memory so that every request can check its session's state without a query.
        self._started: dict[str, dt.datetime] = {}
        self._closed: dict[str, str] = {}  # session id -> "submitted" | "revoked"
        self.evidence = [e for key in answer_key.get("faults", []) for e in key["evidence"]]
        for ddl in (
            "CREATE TABLE IF NOT EXISTS sessions (id VARCHAR PRIMARY KEY, candidate VARCHAR, "
            "candidate_token VARCHAR UNIQUE, interviewer_token VARCHAR UNIQUE, "
            "created_at TIMESTAMP, time_limit_min INTEGER)",
            "CREATE SEQUENCE IF NOT EXISTS event_seq",
            "CREATE TABLE IF NOT EXISTS events (seq BIGINT DEFAULT nextval('event_seq'), "
            "session_id VARCHAR, ts TIMESTAMP, sim_ts TIMESTAMP, kind VARCHAR, detail JSON, "
            "evidence VARCHAR[])",
            # When the candidate first opened the workspace: the session timer counts from here.
            "CREATE TABLE IF NOT EXISTS starts (session_id VARCHAR PRIMARY KEY, ts TIMESTAMP)",
            "CREATE TABLE IF NOT EXISTS revoked (session_id VARCHAR PRIMARY KEY, ts TIMESTAMP)",
            "CREATE TABLE IF NOT EXISTS diagnoses (session_id VARCHAR, version INTEGER, "
            "ts TIMESTAMP, fields JSON, submitted BOOLEAN, PRIMARY KEY (session_id, version))",
            "CREATE TABLE IF NOT EXISTS scores (session_id VARCHAR, dimension VARCHAR, "
            "level INTEGER, note VARCHAR, ts TIMESTAMP, PRIMARY KEY (session_id, dimension))",
            # Session files written before these columns existed.
            "ALTER TABLE sessions ADD COLUMN IF NOT EXISTS time_limit_min INTEGER",
            "ALTER TABLE events ADD COLUMN IF NOT EXISTS seq BIGINT DEFAULT nextval('event_seq')",
            # ...and before tokens were hashed.
            f"UPDATE sessions SET candidate_token = '{HASHED}' || sha256(candidate_token), "
            f"interviewer_token = '{HASHED}' || sha256(interviewer_token) "
            f"WHERE NOT starts_with(candidate_token, '{HASHED}')",
        ):
            self.con.execute(ddl)
        self._started = dict(self.con.execute("SELECT session_id, ts FROM starts").fetchall())
        for (sid,) in self.con.execute(
            "SELECT DISTINCT session_id FROM diagnoses WHERE submitted"
        ).fetchall():
            self._closed[sid] = "submitted"
        for (sid,) in self.con.execute("SELECT session_id FROM revoked").fetchall():
            self._closed[sid] = "revoked"

    def create(self, candidate: str, time_limit_min: int | None = None) -> Session:
        session = Session(
            id=uuid.uuid4().hex[:12],
            candidate=candidate,
            candidate_token=secrets.token_urlsafe(24),
            interviewer_token=secrets.token_urlsafe(24),
            created_at=_utcnow(),
            time_limit_min=time_limit_min,
        )
        with self._lock:
            self.con.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?)",
                [
                    session.id,
                    session.candidate,
                    token_hash(session.candidate_token),
                    token_hash(session.interviewer_token),
                    session.created_at,
                    session.time_limit_min,
                ],
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
                rows = self.con.execute(
                    "SELECT *, CASE WHEN candidate_token = ? THEN 'candidate' "
                    "ELSE 'interviewer' END FROM sessions "
                    "WHERE candidate_token = ? OR interviewer_token = ?",
                    [hashed, hashed, hashed],
                ).fetchall()
            if not rows:
                return None
            *fields, role = rows[0]
            found = self._tokens[hashed] = (Session(*fields), role)
        if _utcnow() - found[0].created_at > TOKEN_LIFETIME:
            return None
        return found

    def get(self, session_id: str) -> Session | None:
        with self._lock:
            rows = self.con.execute("SELECT * FROM sessions WHERE id = ?", [session_id]).fetchall()
        return Session(*rows[0]) if rows else None

    def all(self) -> list[Session]:
        with self._lock:
            rows = self.con.execute("SELECT * FROM sessions ORDER BY created_at").fetchall()
        return [Session(*row) for row in rows]

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
                "INSERT INTO revoked VALUES (?, ?) ON CONFLICT DO NOTHING", [session_id, _utcnow()]
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
        """Append an event, tagged with the evidence it touched; durable when this returns.
        HistoryFull when the session's history has no room for it, ImplausibleEvent for time
        away that did not pass; either way nothing is written."""
        touched = evidence.touched(self.evidence, kind, detail, list(shown))
        payload = json.dumps(detail, default=str)
        with self._lock:
            now = _utcnow()
            self._make_room(session_id, len(payload))
            if kind == "away":
                self._check_away(session_id, detail.get("seconds", 0), now)
            self.con.execute(
                "INSERT INTO events (session_id, ts, sim_ts, kind, detail, evidence) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [session_id, now, sim_ts, kind, payload, touched],
            )
            events, size = self._usage[session_id]
            self._usage[session_id] = (events + 1, size + len(payload))

    def _make_room(self, session_id: str, size: int) -> None:
        """HistoryFull unless an event of `size` bytes fits. Called with the lock held."""
        if session_id not in self._usage:
            events, total = self.con.execute(
                "SELECT count(*), coalesce(sum(strlen(detail::VARCHAR)), 0) FROM events "
                "WHERE session_id = ?",
                [session_id],
            ).fetchall()[0]
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
        last = self.con.execute(
            "SELECT max(ts) FROM events WHERE session_id = ? AND kind = 'away'", [session_id]
        ).fetchall()[0][0]
        since = last or self._started.get(session_id) or now
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
            self.con.execute(
                "INSERT INTO starts VALUES (?, ?) ON CONFLICT DO NOTHING", [session_id, _utcnow()]
            )
            ts = self.con.execute(
                "SELECT ts FROM starts WHERE session_id = ?", [session_id]
            ).fetchall()[0][0]
        self._started[session_id] = ts
        return ts

    def started_at(self, session_id: str) -> dt.datetime | None:
        return self._started.get(session_id)

    def history(
        self, session_id: str, kind: str | None = None, after: int = 0
    ) -> list[dict[str, Any]]:
        """Events oldest first; `after` (a `seq`) returns only newer ones, for a live view."""
        with self._lock:
            rows = self.con.execute(
                "SELECT seq, ts, sim_ts, kind, detail, evidence FROM events "
                "WHERE session_id = ? AND (?::VARCHAR IS NULL OR kind = ?) AND seq > ? "
                "ORDER BY seq",
                [session_id, kind, kind, after],
            ).fetchall()
        return [
            {
                "seq": seq,
                "ts": ts.isoformat(),
                "sim_ts": sim_ts.isoformat() if sim_ts else None,
                "kind": kind,
                "detail": json.loads(detail),
                "evidence": list(evidence or []),
            }
            for seq, ts, sim_ts, kind, detail, evidence in rows
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
                [session_id],
            ).fetchall()
        return [Diagnosis(v, ts, json.loads(fields), sub) for v, ts, fields, sub in rows]

    def save_diagnosis(
        self, session_id: str, fields: dict[str, str], submit: bool = False
    ) -> tuple[Diagnosis, bool]:
        """A new version (and True), unless nothing changed (the latest, and False);
        DiagnosisClosed once submitted."""
        with self._lock:
            rows = self.con.execute(
                "SELECT version, ts, fields, submitted FROM diagnoses WHERE session_id = ? "
                "ORDER BY version DESC LIMIT 1",
                [session_id],
            ).fetchall()
            version, ts, previous, submitted = rows[0] if rows else (0, None, None, False)
            if submitted:
                raise DiagnosisClosed("the diagnosis was submitted; it can no longer change")
            if previous is not None and json.loads(previous) == fields and not submit:
                return Diagnosis(version, ts, fields, False), False
            # A version the history has no room to record is not saved either: the review shows
            # every version with the event that saved it.
            self._make_room(session_id, len(json.dumps(fields)) + DIAGNOSIS_EVENT_OVERHEAD)
            saved = Diagnosis(version + 1, _utcnow(), fields, submit)
            self.con.execute(
                "INSERT INTO diagnoses VALUES (?, ?, ?, ?, ?)",
                [session_id, saved.version, saved.ts, json.dumps(fields), submit],
            )
            if submit:
                self._closed[session_id] = "submitted"
        return saved, True

    def scores(self, session_id: str) -> dict[str, dict[str, Any]]:
        with self._lock:
            rows = self.con.execute(
                "SELECT dimension, level, note, ts FROM scores WHERE session_id = ?",
                [session_id],
            ).fetchall()
        return {d: {"level": lvl, "note": note, "ts": ts.isoformat()} for d, lvl, note, ts in rows}

    def save_score(self, session_id: str, dimension: str, level: int | None, note: str) -> None:
        with self._lock:
            self.con.execute(
                "INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?)",
                [session_id, dimension, level, note, _utcnow()],
            )

    def close(self) -> None:
        self.con.close()
