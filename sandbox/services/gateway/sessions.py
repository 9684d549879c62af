"""Candidate sessions and their recorded history, kept by the gateway (their only writer) in the
interviewer half of the world directory.

Every request a candidate makes through the gateway becomes an event; an event is tagged with the
answer-key evidence it touched, so the interviewer's replay can show when evidence was first seen.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

SESSIONS_FILE = "sessions.duckdb"


class DiagnosisClosed(RuntimeError):
    pass


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
    id: str
    candidate: str
    candidate_token: str
    interviewer_token: str
    created_at: dt.datetime


class SessionStore:
    def __init__(self, interviewer_dir: Path, answer_key: dict[str, Any]) -> None:
        self.con = duckdb.connect(str(interviewer_dir / SESSIONS_FILE))
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[Session, str]] = {}  # sessions never change once made
        self.evidence = [e for key in answer_key.get("faults", []) for e in key["evidence"]]
        self.con.execute(
            "CREATE TABLE IF NOT EXISTS sessions (id VARCHAR PRIMARY KEY, candidate VARCHAR, "
            "candidate_token VARCHAR UNIQUE, interviewer_token VARCHAR UNIQUE, "
            "created_at TIMESTAMP)"
        )
        self.con.execute(
            "CREATE TABLE IF NOT EXISTS events (session_id VARCHAR, ts TIMESTAMP, "
            "sim_ts TIMESTAMP, kind VARCHAR, detail JSON, evidence VARCHAR[])"
        )
        # When the candidate first opened the workspace: the session timer counts from here.
        self.con.execute(
            "CREATE TABLE IF NOT EXISTS starts (session_id VARCHAR PRIMARY KEY, ts TIMESTAMP)"
        )
        self.con.execute(
            "CREATE TABLE IF NOT EXISTS diagnoses (session_id VARCHAR, version INTEGER, "
            "ts TIMESTAMP, fields JSON, submitted BOOLEAN, PRIMARY KEY (session_id, version))"
        )

    def create(self, candidate: str) -> Session:
        session = Session(
            id=uuid.uuid4().hex[:12],
            candidate=candidate,
            candidate_token=secrets.token_urlsafe(24),
            interviewer_token=secrets.token_urlsafe(24),
            created_at=_utcnow(),
        )
        with self._lock:
            self.con.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?, ?)",
                [
                    session.id,
                    session.candidate,
                    session.candidate_token,
                    session.interviewer_token,
                    session.created_at,
                ],
            )
        return session

    def by_token(self, token: str) -> tuple[Session, str] | None:
        """The session a token belongs to and the role it grants ("candidate"/"interviewer")."""
        if token in self._tokens:
            return self._tokens[token]
        with self._lock:
            rows = self.con.execute(
                "SELECT *, CASE WHEN candidate_token = ? THEN 'candidate' ELSE 'interviewer' END "
                "FROM sessions WHERE candidate_token = ? OR interviewer_token = ?",
                [token, token, token],
            ).fetchall()
        if not rows:
            return None
        *fields, role = rows[0]
        self._tokens[token] = (Session(*fields), role)
        return self._tokens[token]

    def get(self, session_id: str) -> Session | None:
        with self._lock:
            rows = self.con.execute("SELECT * FROM sessions WHERE id = ?", [session_id]).fetchall()
        return Session(*rows[0]) if rows else None

    def record(
        self, session_id: str, sim_ts: dt.datetime, kind: str, detail: dict[str, Any]
    ) -> None:
        evidence = self.evidence_touched(detail)
        with self._lock:
            self.con.execute(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)",
                [
                    session_id,
                    _utcnow(),
                    sim_ts,
                    kind,
                    json.dumps(detail, default=str),
                    evidence,
                ],
            )

    def started(self, session_id: str) -> dt.datetime:
        """When the candidate first opened the workspace (now, on the first call)."""
        with self._lock:
            self.con.execute(
                "INSERT INTO starts VALUES (?, ?) ON CONFLICT DO NOTHING", [session_id, _utcnow()]
            )
            return self.con.execute(
                "SELECT ts FROM starts WHERE session_id = ?", [session_id]
            ).fetchall()[0][0]

    def history(self, session_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            rows = self.con.execute(
                "SELECT ts, sim_ts, kind, detail, evidence FROM events WHERE session_id = ? "
                "AND (?::VARCHAR IS NULL OR kind = ?) ORDER BY ts, rowid",
                [session_id, kind, kind],
            ).fetchall()
        return [
            {
                "ts": ts.isoformat(),
                "sim_ts": sim_ts.isoformat() if sim_ts else None,
                "kind": kind,
                "detail": json.loads(detail),
                "evidence": list(evidence or []),
            }
            for ts, sim_ts, kind, detail, evidence in rows
        ]

    def diagnosis(self, session_id: str) -> Diagnosis | None:
        """The latest saved version of the session's diagnosis."""
        with self._lock:
            rows = self.con.execute(
                "SELECT version, ts, fields, submitted FROM diagnoses WHERE session_id = ? "
                "ORDER BY version DESC LIMIT 1",
                [session_id],
            ).fetchall()
        if not rows:
            return None
        version, ts, fields, submitted = rows[0]
        return Diagnosis(version, ts, json.loads(fields), submitted)

    def save_diagnosis(
        self, session_id: str, fields: dict[str, str], submit: bool = False
    ) -> Diagnosis:
        """A new version, unless nothing changed; DiagnosisClosed once submitted."""
        with self._lock:
            rows = self.con.execute(
                "SELECT version, fields, submitted FROM diagnoses WHERE session_id = ? "
                "ORDER BY version DESC LIMIT 1",
                [session_id],
            ).fetchall()
            version, previous, submitted = rows[0] if rows else (0, None, False)
            if submitted:
                raise DiagnosisClosed("the diagnosis was submitted; it can no longer change")
            if previous is not None and json.loads(previous) == fields and not submit:
                ts = self.con.execute(
                    "SELECT ts FROM diagnoses WHERE session_id = ? AND version = ?",
                    [session_id, version],
                ).fetchall()[0][0]
                return Diagnosis(version, ts, fields, False)
            saved = Diagnosis(version + 1, _utcnow(), fields, submit)
            self.con.execute(
                "INSERT INTO diagnoses VALUES (?, ?, ?, ?, ?)",
                [session_id, saved.version, saved.ts, json.dumps(fields), submit],
            )
        return saved

    def evidence_touched(self, detail: dict[str, Any]) -> list[str]:
        """Evidence a recorded request reached: a queried table.column, metric, log or changelog."""
        tables = set(detail.get("tables", []))
        text = str(detail.get("sql", "")).lower()
        found = []
        for e in self.evidence:
            ref = e["ref"]
            kind = e["kind"]
            if kind == "table_column":
                table, _, column = ref.rpartition(".")
                hit = table in tables and (column.lower() in text or "*" in text)
            elif kind == "metric":
                hit = "telemetry.metrics" in tables and ref.split("{")[0].lower() in text
            elif kind == "log_pattern":
                hit = "telemetry.logs" in tables
            else:
                hit = "ops.changelog" in tables
            if hit:
                found.append(e["id"])
        return found

    def close(self) -> None:
        self.con.close()
