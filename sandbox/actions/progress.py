"""How a long-running action reports its progress: log lines stamped in simulated time, between its
request and the moment it takes effect, as the real job would write them while it works.

The service that carries an action out writes all its lines at once, when it has done the work;
the candidate's logs show a line only once the simulated clock reaches its timestamp, so the lines
appear one by one as time passes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

# The share of an action's delay its work takes; the rest is checking the result and swapping it in.
WORK_SHARE = 0.8
PROGRESS_LINES = 6  # progress lines for a job of any size (fewer when there are fewer items)


@dataclass(frozen=True)
class LogLine:
    ts: dt.datetime
    event: str
    message: str
    attrs: dict[str, Any] = field(default_factory=dict)


def milestones(
    start: dt.datetime, end: dt.datetime, total: int, lines: int = PROGRESS_LINES
) -> list[tuple[dt.datetime, int]]:
    """(when, items done) for `lines` evenly sized steps through `total` items, the time of each
    in proportion to the items done: the last is (end, total). None for an empty job."""
    if total <= 0:
        return []
    if end < start:
        raise ValueError("a job cannot end before it starts")
    steps = max(1, min(lines, total))
    done = sorted({round(total * i / steps) for i in range(1, steps + 1)})
    return [(start + (end - start) * (n / total), n) for n in done]


def work_end(requested_at: dt.datetime, effective_at: dt.datetime) -> dt.datetime:
    """When the work itself is done: the rest of the delay checks and swaps the result."""
    return requested_at + (effective_at - requested_at) * WORK_SHARE


def index_rebuild(
    change_id: str,
    requested_at: dt.datetime,
    effective_at: dt.datetime,
    articles: int,
    encoder: str,
    encoder_version: int,
    index_version: str,
) -> list[LogLine]:
    """The retrieval service's lines for a rebuild of the article index: started, articles
    re-embedded in steps, built, and the new index loaded (searched from then on)."""
    attrs = {"change_id": change_id, "encoder_version": encoder_version}
    built_at = work_end(requested_at, effective_at)
    lines = [
        LogLine(
            requested_at,
            "index_rebuild_started",
            f"rebuilding article index with {encoder} version {encoder_version}: "
            f"{articles:,} articles to re-embed",
            {**attrs, "doc_count": articles},
        )
    ]
    lines += [
        LogLine(
            ts,
            "index_rebuild_progress",
            f"re-embedded {done:,} of {articles:,} articles",
            {**attrs, "done": done, "doc_count": articles},
        )
        for ts, done in milestones(requested_at, built_at, articles)
    ]
    lines += [
        LogLine(
            built_at,
            "index_built",
            f"built article index {index_version} ({articles:,} articles); "
            f"swapping it in at {effective_at:%Y-%m-%d %H:%M}",
            {**attrs, "index_version": index_version, "doc_count": articles},
        ),
        LogLine(
            effective_at,
            "index_loaded",
            f"loaded article index {index_version} ({articles:,} articles)",
            {**attrs, "index_version": index_version, "doc_count": articles},
        ),
    ]
    return lines


def online_backfill(
    change_id: str,
    requested_at: dt.datetime,
    effective_at: dt.datetime,
    customers: int,
    newest: dt.datetime | None,
) -> list[LogLine]:
    """The materialization job's lines for a backfill of the online store: started, customers'
    features recomputed from the offline store in steps, and the store reloaded (served from
    then on). `newest` is the newest event_timestamp of the rows loaded."""
    attrs = {"change_id": change_id, "rows": customers}
    computed_at = work_end(requested_at, effective_at)
    newest_text = newest.isoformat(sep=" ") if newest is not None else None
    lines = [
        LogLine(
            requested_at,
            "backfill_started",
            f"backfilling the online store from the offline store: latest features of "
            f"{customers:,} customers (newest event_timestamp {newest_text})",
            attrs,
        )
    ]
    lines += [
        LogLine(
            ts,
            "backfill_progress",
            f"recomputed features for {done:,} of {customers:,} customers",
            {**attrs, "done": done},
        )
        for ts, done in milestones(requested_at, computed_at, customers)
    ]
    lines.append(
        LogLine(
            effective_at,
            "backfill_loaded",
            f"online store loaded: {customers} rows, newest event_timestamp {newest_text} "
            "(backfill)",
            {**attrs, "max_event_timestamp": newest_text},
        )
    )
    return lines


def batch_rerun(
    change_id: str,
    requested_at: dt.datetime,
    effective_at: dt.datetime,
    customers: int,
    flagged: int,
    model: str,
    threshold: float,
) -> list[LogLine]:
    """The batch scoring's lines for a run outside its 06:00 schedule: started, customers scored
    in steps, finished with the count flagged, and the new retention list published."""
    attrs = {"change_id": change_id, "model": model, "rows": customers}
    scored_at = work_end(requested_at, effective_at)
    lines = [
        LogLine(
            requested_at,
            "batch_started",
            f"churn scoring started for {customers} customers (run on request, not scheduled)",
            {**attrs, "threshold": threshold},
        )
    ]
    lines += [
        LogLine(
            ts,
            "batch_progress",
            f"scored {done:,} of {customers:,} customers",
            {**attrs, "done": done},
        )
        for ts, done in milestones(requested_at, scored_at, customers)
    ]
    lines += [
        LogLine(
            scored_at,
            "batch_finished",
            f"churn scoring finished: {flagged} customers flagged for retention",
            {**attrs, "flagged": flagged, "threshold": threshold},
        ),
        LogLine(
            effective_at,
            "retention_list_published",
            f"retention list replaced by the run started {requested_at:%Y-%m-%d %H:%M}: "
            f"{flagged} customers",
            {**attrs, "flagged": flagged},
        ),
    ]
    return lines
