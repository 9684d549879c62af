"""Several candidates at once on one stack, each in its own session: typical queries, dashboard
loads, log searches and diagnosis saves for a while with no error, and every session's history
holding exactly its own candidate's acknowledged actions. p95 latency per route is printed."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.http_client import HTTP
from tests.services.candidates import (
    TAG,
    Candidate,
    create_session,
    event_tag,
    history,
    reconcile,
    route_stats,
    run_candidates,
    stats_table,
)
from tests.services.running import Stack, new_session

CANDIDATES = 5
SECONDS = 8.0  # with every kind of action done at least once per candidate (min_rounds)
THINK_S = 0.05  # mean pause between a candidate's actions


@pytest.fixture(scope="module")
def stack(shared_stack: Stack) -> Stack:
    return new_session(shared_stack, "crowd-host")


@pytest.fixture(scope="module")
def crowd(stack: Stack) -> list[Candidate]:
    sessions = [create_session(stack.url, stack.world, f"c{i:02d}") for i in range(CANDIDATES)]
    candidates = [
        Candidate(stack.url, s, index=i, seed=i, think_s=THINK_S) for i, s in enumerate(sessions)
    ]
    run_candidates(candidates, SECONDS, min_rounds=1)
    for c in candidates:
        c.close()
    print("", *stats_table(route_stats([o for c in candidates for o in c.outcomes])), sep="\n")
    return candidates


def test_parallel_candidates_get_no_errors(crowd: list[Candidate]) -> None:
    outcomes = [o for c in crowd for o in c.outcomes]
    failed = Counter((o.route, o.status, o.error[:80]) for o in outcomes if o.failed)
    assert not failed, failed
    routes = Counter(o.route for o in outcomes)
    for route in ("POST /api/sql", "GET /api/dashboards/{id}/panels/{panel}", "PUT /api/diagnosis"):
        assert routes[route] >= CANDIDATES, routes  # every kind ran, at least once per candidate


def test_each_history_holds_exactly_its_candidates_acknowledged_actions(
    stack: Stack, crowd: list[Candidate]
) -> None:
    seqs: list[int] = []
    for candidate in crowd:
        events = history(stack.url, candidate.session)
        got = reconcile(candidate, events)
        name = candidate.session.name
        assert got.unacknowledged == 0
        assert got.missing == [], f"{name}: acknowledged but not recorded: {got.missing[:5]}"
        assert got.duplicated == [], f"{name}: recorded twice: {got.duplicated[:5]}"
        assert got.foreign == [], f"{name}: another's or unexplained events: {got.foreign[:5]}"
        assert got.seq_increasing
        assert got.events == got.acknowledged == got.found
        seqs += [e["seq"] for e in events]
    assert len(seqs) == len(set(seqs)), "two sessions' events share a seq"


def test_a_candidate_sees_only_their_own_history(stack: Stack, crowd: list[Candidate]) -> None:
    for candidate in crowd:
        assert candidate.foreign_seen == set()  # during the run, in the console's history
        reply = HTTP.get(
            stack.url + "/api/my/history",
            params={"kind": ""},
            headers={"Authorization": f"Bearer {candidate.session.candidate_token}"},
            timeout=60,
        )
        assert reply.status_code == 200, reply.text
        mine = reply.json()
        assert not any("seq" in e or "evidence" in e for e in mine)
        tags = [event_tag(e) for e in mine]
        assert sorted(tags) == sorted(candidate.acknowledged())
        assert set(TAG.findall(reply.text)) <= set(candidate.acknowledged())
