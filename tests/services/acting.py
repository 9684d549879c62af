"""Driving the ops console on a running stack: a stack whose only session has actions on, an
action applied as the candidate, simulated time moved on as the interviewer, live predictions."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sandbox.world.build import BuildSummary
from tests.http_client import HTTP
from tests.services.running import Stack, running_stack
from tests.waiting import until


@contextlib.contextmanager
def acting_stack(built: BuildSummary, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of its own on a copy of `built` whose only session has actions on; simulated time
    moves at wall speed, and a test moves it further with the interviewer's fast-forward."""
    with running_stack(built, tmp_path_factory, 1.0, session_policy={"actions": True}) as stack:
        yield stack


def act(stack: Stack, action: str, params: dict[str, Any]) -> dict[str, Any]:
    """Apply `action` as the candidate; the 202 answer (its id, requested and effective times)."""
    reply = HTTP.post(
        stack.url + "/api/actions",
        json={"action": action, "params": params},
        headers=stack.candidate,
        timeout=10,
    )
    assert reply.status_code == 202, reply.text
    return reply.json()


def model_now(stack: Stack) -> dt.datetime:
    """The simulated now as the model server has it."""
    meta = HTTP.get(stack.url + "/services/model/metadata", headers=stack.candidate, timeout=10)
    return dt.datetime.fromisoformat(meta.json()["now"])


def forward(
    stack: Stack, hours: float, now: Callable[[Stack], dt.datetime] = model_now
) -> dt.datetime:
    """Fast-forward as the interviewer; returns the new now once the service whose clock `now`
    reads is there."""
    reply = HTTP.post(
        f"{stack.url}/api/sessions/{stack.session_id}/clock/forward",
        json={"hours": hours},
        headers=stack.interviewer,
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    target = dt.datetime.fromisoformat(reply.json()["now"])
    until(lambda: now(stack) >= target, "the service on the forwarded clock", timeout=10)
    return target


def predictions(stack: Stack, customers: list[int]) -> list[dict[str, Any]]:
    """The model server's live answers for `customers`, one batch request."""
    reply = HTTP.post(
        stack.url + "/services/model/predict/batch",
        json={"requests": [{"customer_id": c} for c in customers]},
        headers=stack.candidate,
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["predictions"]


def review(stack: Stack) -> dict[str, Any]:
    """The session's review, as the interviewer reads it."""
    reply = HTTP.get(
        f"{stack.url}/api/sessions/{stack.session_id}/review", headers=stack.interviewer, timeout=30
    )
    assert reply.status_code == 200, reply.text
    return reply.json()


def verdicts(stack: Stack) -> dict[str, str]:
    """Each applied action's verdict in the session's review, by action."""
    return {a["id"]: a["verdict"] for a in review(stack)["actions"]}
