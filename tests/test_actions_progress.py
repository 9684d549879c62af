"""How a long-running action's progress reaches the logs, in simulated time: without a world."""

from __future__ import annotations

import datetime as dt

import pytest

from sandbox.actions import progress
from sandbox.actions.catalog import BACKFILL_ONLINE_STORE, CATALOG, REBUILD_INDEX
from sandbox.services.retrieval import names_encoder

T0 = dt.datetime(2026, 4, 13, 9, 30)


def test_milestones_spread_the_items_over_the_work_in_proportion() -> None:
    end = T0 + dt.timedelta(hours=2)
    steps = progress.milestones(T0, end, 1200)
    assert [done for _, done in steps] == [200, 400, 600, 800, 1000, 1200]
    assert steps[-1] == (end, 1200)
    for ts, done in steps:
        assert ts - T0 == (end - T0) * (done / 1200)
    # Fewer items than lines: one line per item; none for nothing to do.
    assert [done for _, done in progress.milestones(T0, end, 3)] == [1, 2, 3]
    assert progress.milestones(T0, end, 0) == []
    # Uneven sizes still end on the total, each step once.
    uneven = [done for _, done in progress.milestones(T0, end, 288)]
    assert uneven == [48, 96, 144, 192, 240, 288]
    odd = [done for _, done in progress.milestones(T0, end, 7, lines=3)]
    assert odd == sorted(set(odd)) and odd[-1] == 7
    with pytest.raises(ValueError):
        progress.milestones(end, T0, 10)


def test_an_index_rebuild_logs_from_its_request_to_its_swap() -> None:
    delay = CATALOG[REBUILD_INDEX].delay
    effective = T0 + delay
    lines = progress.index_rebuild(
        "abc123", T0, effective, 1200, "ticket-encoder", 2, "articles-20260413-e2"
    )
    assert [line.ts for line in lines] == sorted(line.ts for line in lines)
    assert lines[0].ts == T0 and lines[0].event == "index_rebuild_started"
    assert lines[0].message == (
        "rebuilding article index with ticket-encoder version 2: 1,200 articles to re-embed"
    )
    steps = [line for line in lines if line.event == "index_rebuild_progress"]
    assert steps[0].message == "re-embedded 200 of 1,200 articles"
    assert steps[-1].message == "re-embedded 1,200 of 1,200 articles"
    # The work ends before the swap: the rest of the delay checks the new index.
    built = next(line for line in lines if line.event == "index_built")
    assert steps[-1].ts == built.ts == progress.work_end(T0, effective) < effective
    assert lines[-1].ts == effective and lines[-1].event == "index_loaded"
    assert lines[-1].message == "loaded article index articles-20260413-e2 (1,200 articles)"
    assert all(line.attrs["change_id"] == "abc123" for line in lines)
    assert all(T0 <= line.ts <= effective for line in lines)


def test_a_rebuilt_index_is_named_the_way_the_team_names_its_builds() -> None:
    assert names_encoder({"index_version": "articles-20251208-e1", "encoder_version": 1})
    assert not names_encoder({"index_version": "articles-20251208", "encoder_version": 1})
    assert not names_encoder({})


def test_an_online_store_backfill_logs_from_its_request_to_the_load() -> None:
    effective = T0 + CATALOG[BACKFILL_ONLINE_STORE].delay
    newest = dt.datetime(2026, 4, 12)
    lines = progress.online_backfill("ff00", T0, effective, 7850, newest)
    assert [line.ts for line in lines] == sorted(line.ts for line in lines)
    assert lines[0].ts == T0 and lines[0].event == "backfill_started"
    steps = [line for line in lines if line.event == "backfill_progress"]
    assert len(steps) == progress.PROGRESS_LINES
    assert steps[-1].message == "recomputed features for 7,850 of 7,850 customers"
    assert steps[-1].ts == progress.work_end(T0, effective) < effective
    assert lines[-1].ts == effective and lines[-1].event == "backfill_loaded"
    # Worded like the scheduled load's line, so a search for either finds both.
    assert lines[-1].message == (
        "online store loaded: 7850 rows, newest event_timestamp 2026-04-12 00:00:00 (backfill)"
    )
    assert all(line.attrs["change_id"] == "ff00" for line in lines)
