"""The ordinary changelog tells the truth: every entry that states a fact the tables can show is
checked against a built world, and every other entry is named as stating none."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable

import duckdb
import pytest

from sandbox import scenario
from sandbox.faults.base import FaultSet
from sandbox.pipeline.ops import changelog
from sandbox.world.build import BuildSummary
from tests.conftest import connect

CAL = scenario.load(None).world.calendar()
ORDINARY = changelog(CAL, FaultSet([]))

# Entries that state nothing the world's tables could show (resources, notes, outside events).
NO_CHECKABLE_FACT = (
    r"^feature-job: worker memory",
    r"^payments: provider maintenance window",
    r"^model-server image",
    r"^on-call handoff",
    r"^model-server: autoscaling",
    r"^payments: card network incident",
    r"^INC-\d+: CDN degradation",
)


def _entry(con: duckdb.DuckDBPyConnection, pattern: str) -> tuple[dt.datetime, re.Match[str]]:
    rows = con.execute("SELECT ts, title || ' | ' || body FROM ops.changelog").fetchall()
    found = [(ts, m) for ts, text in rows if (m := re.search(pattern, text))]
    assert len(found) == 1, f"one changelog entry matches {pattern!r}: {found}"
    return found[0]


def _batch_at_six(con: duckdb.DuckDBPyConnection) -> None:
    _, match = _entry(con, r"batch-scoring moved to (\d\d):(\d\d) UTC")
    hours = con.execute(
        "SELECT DISTINCT hour(request_ts), minute(request_ts) FROM serving.predictions "
        "WHERE source = 'batch'"
    ).fetchall()
    assert hours == [(int(match[1]), int(match[2]))]


def _training_window(con: duckdb.DuckDBPyConnection) -> None:
    ts, match = _entry(
        con,
        r"churn-model trained on (\d+) score dates over (\d+) weeks.*"
        r"Newest score date (\d+) days before training",
    )
    dates, span, newest = con.execute(
        "SELECT count(DISTINCT score_date), date_diff('day', min(score_date), max(score_date)), "
        "max(score_date) FROM training.churn_training_set WHERE model_version = "
        "(SELECT min(model_version::INT)::VARCHAR FROM training.churn_training_set)"
    ).fetchall()[0]
    assert dates == int(match[1])
    assert round(span / 7) == int(match[2])
    assert (ts.date() - newest).days == int(match[3])
    assert ts.date() == CAL.date(0)


def _feature_job_speedup(con: duckdb.DuckDBPyConnection) -> None:
    ts, match = _entry(con, r"feature-job (\S+): .*; (\d+)x faster")
    before, after = con.execute(
        "SELECT median(duration_s) FILTER (WHERE started_at < $ts AND started_at >= $ts - "
        "INTERVAL 14 DAY), median(duration_s) FILTER (WHERE started_at > $ts) "
        "FROM ops.feature_job_runs",
        {"ts": ts},
    ).fetchall()[0]
    speedup = int(match[2])
    assert 0.8 * speedup <= before / after <= 1.25 * speedup, (before, after)


def _label_delay(con: duckdb.DuckDBPyConnection) -> None:
    _, match = _entry(con, r"label job: .* (\d+) days")
    days = int(match[1])
    horizons = con.execute(
        "SELECT DISTINCT horizon_days, date_diff('day', score_date, label_available_at) "
        "FROM labels.churn_labels"
    ).fetchall()
    assert horizons == [(days, days)]


def _app_rollouts(con: duckdb.DuckDBPyConnection) -> None:
    rows = con.execute(
        "SELECT ts, title FROM ops.changelog WHERE title LIKE 'apps % staged rollout started' "
        "AND body LIKE '%over about two weeks%' ORDER BY ts"
    ).fetchall()
    assert rows
    for ts, title in rows:
        version = title.split()[1]
        day = CAL.day_of(ts)
        if day + 14 > CAL.last_visible_day:
            continue
        # Version strings of one major compare as text: 5.10 would need more than this.
        shares = [
            con.execute(
                "SELECT avg((app_version >= ?)::INT) FROM raw.viewing_activity "
                "WHERE activity_date = ?",
                [version, CAL.date(day + after)],
            ).fetchall()[0][0]
            for after in (1, 14)
        ]
        assert shares[0] < 0.5 < 0.75 <= shares[1], (version, shares)


def _retrieval_timeout(con: duckdb.DuckDBPyConnection) -> None:
    ts, match = _entry(con, r"retrieval: request timeout \d+ ms -> (\d+) ms")
    slowest = con.execute(
        "SELECT max(latency_ms) FROM retrieval.search_log WHERE request_ts > ?", [ts]
    ).fetchall()[0][0]
    assert slowest < int(match[1])


CHECKED: dict[str, Callable[[duckdb.DuckDBPyConnection], None]] = {
    r"^batch-scoring moved to": _batch_at_six,
    r"^churn-model trained on": _training_window,
    r"^feature-job \d+\.\d+\.\d+:": _feature_job_speedup,
    r"^label job:": _label_delay,
    r"^apps .* staged rollout started": _app_rollouts,
    r"^retrieval: request timeout": _retrieval_timeout,
}


def test_every_ordinary_entry_is_checked_or_states_no_fact() -> None:
    for title in ORDINARY["title"]:
        kinds = [p for p in (*CHECKED, *NO_CHECKABLE_FACT) if re.search(p, title)]
        assert len(kinds) == 1, f"{title!r}: check it against the tables, or say it states none"


@pytest.mark.parametrize("fact", list(CHECKED))
def test_the_changelog_entry_matches_the_world(faulty_world: BuildSummary, fact: str) -> None:
    con = connect(faulty_world)
    try:
        CHECKED[fact](con)
    finally:
        con.close()
