"""Recorded times as the review compares them with the world's tables."""

from __future__ import annotations

import datetime as dt


def naive_utc(iso: str) -> dt.datetime:
    """Naive UTC, as the world's tables keep time, whether the text carries "Z", an offset, or
    nothing."""
    value = dt.datetime.fromisoformat(str(iso).replace("Z", "+00:00"))
    return value if value.tzinfo is None else value.astimezone(dt.UTC).replace(tzinfo=None)
