"""Waiting for something a running process will do: poll until it holds, or fail saying what
never happened and what was last seen. One helper, so no test sleeps a fixed time and hopes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def until(check: Callable[[], T], what: str, timeout: float = 30.0, every: float = 0.2) -> T:
    """`check()`'s first truthy result within `timeout` seconds, polled every `every` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        seen = check()
        if seen:
            return seen
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s (last seen: {seen!r})")
        time.sleep(every)
