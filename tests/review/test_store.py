"""The sessions store on its own: another process reads it while the gateway's process writes,
events keep their order, and the sessions of an earlier DuckDB file carry over."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from sandbox.review.store import (
    LEGACY_SESSIONS_FILE,
    SESSIONS_FILE,
    DiagnosisClosed,
    SessionStore,
    token_hash,
)

EVENTS = 300
SIM = dt.datetime(2026, 4, 13, 1)

# A process that holds the store open and records EVENTS events, one at a time, as the gateway
# does; it prints "open" once it holds the file, and "done" at the end.
WRITER = textwrap.dedent(
    """
    import datetime as dt, sys
    from pathlib import Path
    from sandbox.review.store import SessionStore

    store = SessionStore(Path(sys.argv[1]), {})
    session = sys.argv[2]
    print("open", flush=True)
    sys.stdin.readline()
    for i in range(int(sys.argv[3])):
        store.record(session, dt.datetime(2026, 4, 13, 1), "sql", {"sql": f"SELECT {i}", "n": i})
    print("done", flush=True)
    sys.stdin.readline()
    store.close()
    """
)


def _writer(tmp_path: Path, session_id: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path), session_id, str(EVENTS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_another_process_reads_the_history_while_it_is_written(tmp_path: Path) -> None:
    made = SessionStore(tmp_path, {})
    session = made.create("ada")
    made.close()
    writer = _writer(tmp_path, session.id)
    try:
        assert writer.stdout.readline().strip() == "open"
        # The writer holds the file open: a second process opens it all the same.
        reader = SessionStore(tmp_path, {})
        assert reader.by_token(session.candidate_token)[0].candidate == "ada"
        writer.stdin.write("go\n")
        writer.stdin.flush()
        seen: list[int] = []  # how many events each read found
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            history = reader.history(session.id)
            # Every read is whole events, oldest first, with none missing before the newest.
            assert [e["detail"]["n"] for e in history] == list(range(len(history)))
            assert [e["seq"] for e in history] == sorted({e["seq"] for e in history})
            seen.append(len(history))
            if len(history) == EVENTS:
                break
        assert seen[-1] == EVENTS, f"the reader stopped at {seen[-1]} events"
        assert any(0 < n < EVENTS for n in seen), "no read fell while the writer was writing"
        assert seen == sorted(seen)
        assert writer.stdout.readline().strip() == "done"
        # A reader reads as of one moment inside a snapshot, however much is written meanwhile.
        with reader.snapshot():
            before = reader.history(session.id)
            later = SessionStore(tmp_path, {})
            later.record(session.id, SIM, "page", {"page": "brief"})
            assert reader.history(session.id) == before
        assert reader.history(session.id)[-1]["kind"] == "page"
        later.close()
        reader.close()
    finally:
        writer.stdin.write("stop\n")
        writer.stdin.flush()
        writer.wait(timeout=30)
    assert writer.returncode == 0


def test_events_keep_their_order_and_state_outlives_the_process(tmp_path: Path) -> None:
    store = SessionStore(tmp_path, {})
    ada, grace = store.create("ada", time_limit_min=90), store.create("grace")
    first = store.started(ada.id)
    for i in range(4):
        store.record(ada.id if i % 2 else grace.id, SIM, "sql", {"n": i})
    saved, created = store.save_diagnosis(grace.id, {"root_cause": "x"}, submit=True)
    assert created and saved.version == 1
    store.revoke(ada.id)
    store.save_score(ada.id, "fix", 3, "good")
    store.close()

    reopened = SessionStore(tmp_path, {})
    assert reopened.started(ada.id) == first  # the first start stays
    assert reopened.state(reopened.get(ada.id)) == "revoked"
    assert reopened.state(reopened.get(grace.id)) == "submitted"
    with pytest.raises(DiagnosisClosed):
        reopened.save_diagnosis(grace.id, {"root_cause": "y"})
    assert [s.candidate for s in reopened.all()] == ["ada", "grace"]
    assert reopened.get(ada.id).time_limit_min == 90
    assert reopened.by_token(ada.interviewer_token)[1] == "interviewer"
    assert reopened.scores(ada.id)["fix"]["level"] == 3
    reopened.record(ada.id, SIM, "sql", {"n": 4})
    seqs = [e["seq"] for s in (ada, grace) for e in reopened.history(s.id)]
    assert len(set(seqs)) == 5  # one numbering across sessions, never reused
    assert [e["detail"]["n"] for e in reopened.history(ada.id)] == [1, 3, 4]
    newest = reopened.history(ada.id)[1]["seq"]
    assert [e["detail"]["n"] for e in reopened.history(ada.id, after=newest)] == [4]
    assert [e["kind"] for e in reopened.history(grace.id, kind="sql")] == ["sql", "sql"]
    reopened.close()


LEGACY_DDL = (
    # The sessions file before time limits, event numbers and hashed tokens.
    "CREATE TABLE sessions (id VARCHAR PRIMARY KEY, candidate VARCHAR, "
    "candidate_token VARCHAR UNIQUE, interviewer_token VARCHAR UNIQUE, created_at TIMESTAMP)",
    "CREATE TABLE events (session_id VARCHAR, ts TIMESTAMP, sim_ts TIMESTAMP, kind VARCHAR, "
    "detail JSON, evidence VARCHAR[])",
    "CREATE TABLE starts (session_id VARCHAR PRIMARY KEY, ts TIMESTAMP)",
    "CREATE TABLE diagnoses (session_id VARCHAR, version INTEGER, ts TIMESTAMP, fields JSON, "
    "submitted BOOLEAN, PRIMARY KEY (session_id, version))",
)


def test_an_earlier_duckdb_sessions_file_is_carried_over(tmp_path: Path) -> None:
    created = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0) - dt.timedelta(hours=1)
    with duckdb.connect(str(tmp_path / LEGACY_SESSIONS_FILE)) as old:
        for ddl in LEGACY_DDL:
            old.execute(ddl)
        old.execute("INSERT INTO sessions VALUES ('s1', 'ada', 'ctok', 'itok', ?)", [created])
        old.execute("INSERT INTO starts VALUES ('s1', ?)", [created + dt.timedelta(minutes=1)])
        for minute, kind in ((3, "page"), (2, "sql")):
            old.execute(
                "INSERT INTO events VALUES ('s1', ?, ?, ?, ?, ?)",
                [created + dt.timedelta(minutes=minute), SIM, kind, json.dumps({"k": kind}), ["e"]],
            )
        old.execute(
            "INSERT INTO diagnoses VALUES ('s1', 1, ?, ?, true)",
            [created, json.dumps({"root_cause": "x"})],
        )
    store = SessionStore(tmp_path, {})
    session, role = store.by_token("ctok")
    assert (session.id, session.candidate, role) == ("s1", "ada", "candidate")
    assert session.candidate_token == token_hash("ctok") and session.time_limit_min is None
    assert store.state(session) == "submitted"
    assert store.started_at("s1") == created + dt.timedelta(minutes=1)
    history = store.history("s1")
    assert [(e["kind"], e["evidence"]) for e in history] == [("sql", ["e"]), ("page", ["e"])]
    assert store.diagnosis("s1").fields == {"root_cause": "x"}
    store.close()
    # Once only: a later open finds its own file, whatever the old one holds.
    with duckdb.connect(str(tmp_path / LEGACY_SESSIONS_FILE)) as old:
        old.execute("DELETE FROM events")
    again = SessionStore(tmp_path, {})
    assert len(again.history("s1")) == 2
    again.close()
    assert (tmp_path / SESSIONS_FILE).is_file()


def test_a_first_version_sessions_file_gains_policies_and_seen_values(tmp_path: Path) -> None:
    """A sessions file written before policies and seen values keeps its sessions and events,
    which read as the defaults: assistance allowed, any client, nothing seen."""
    import sqlite3

    con = sqlite3.connect(tmp_path / SESSIONS_FILE)
    con.executescript(
        """
        CREATE TABLE sessions (id TEXT PRIMARY KEY, candidate TEXT NOT NULL,
            candidate_token TEXT UNIQUE NOT NULL, interviewer_token TEXT UNIQUE NOT NULL,
            created_at TEXT NOT NULL, time_limit_min INTEGER);
        CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT NOT NULL,
            ts TEXT NOT NULL, sim_ts TEXT, kind TEXT NOT NULL, detail TEXT NOT NULL,
            evidence TEXT NOT NULL);
        CREATE TABLE starts (session_id TEXT PRIMARY KEY, ts TEXT NOT NULL);
        CREATE TABLE revoked (session_id TEXT PRIMARY KEY, ts TEXT NOT NULL);
        CREATE TABLE diagnoses (session_id TEXT NOT NULL, version INTEGER NOT NULL,
            ts TEXT NOT NULL, fields TEXT NOT NULL, submitted INTEGER NOT NULL,
            PRIMARY KEY (session_id, version));
        CREATE TABLE scores (session_id TEXT NOT NULL, dimension TEXT NOT NULL, level INTEGER,
            note TEXT NOT NULL, ts TEXT NOT NULL, PRIMARY KEY (session_id, dimension));
        PRAGMA user_version = 1;
        """
    )
    con.execute(
        "INSERT INTO sessions VALUES ('s1', 'ada', ?, ?, '2026-12-01T10:00:00.000000', 60)",
        (token_hash("c"), token_hash("i")),
    )
    con.execute(
        "INSERT INTO events (session_id, ts, kind, detail, evidence) "
        "VALUES ('s1', '2026-12-01T10:01:00.000000', 'sql', '{\"sql\": \"SELECT 1\"}', '[]')"
    )
    con.commit()
    con.close()

    store = SessionStore(tmp_path, {})
    old = store.get("s1")
    assert old is not None and old.policy == {"assistance": "allowed", "workspace_only": False}
    assert [e["seen"] for e in store.history("s1")] == [[]]
    made = store.create("grace", assistance="not-allowed", workspace_only=True)
    store.record(made.id, SIM, "sql", {"sql": "SELECT 1"}, [("2026-04-13", "2026-04-13 | 0.595")])
    store.close()

    again = SessionStore(tmp_path, {})
    grace = again.get(made.id)
    assert grace is not None
    assert grace.policy == {"assistance": "not-allowed", "workspace_only": True}
    found = again.by_token(made.candidate_token)
    assert found is not None and found[0].workspace_only
    assert again.history(made.id)[0]["seen"] == ["2026-04-13", "0.595"]
    with pytest.raises(ValueError, match="allowed, not-allowed"):
        again.create("eve", assistance="sometimes")
    again.close()


def test_a_session_keeps_whether_actions_are_on(tmp_path: Path) -> None:
    store = SessionStore(tmp_path, {})
    off, on = store.create("ada"), store.create("grace", actions=True)
    store.close()
    again = SessionStore(tmp_path, {})
    assert [again.get(s.id).actions for s in (off, on)] == [False, True]  # type: ignore[union-attr]
    found = again.by_token(on.candidate_token)
    assert found is not None and found[0].actions
    again.close()
