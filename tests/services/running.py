"""A real `sandbox up` on a copy of a built world, with one candidate session: what the stack and
browser tests drive over HTTP."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox.layout import WorldPaths
from sandbox.services.stack import admin_token
from sandbox.services.supervisor import free_port
from sandbox.world.build import BuildSummary
from tests.http_client import HTTP
from tests.waiting import until

SANDBOX = str(Path(sys.executable).with_name("sandbox"))
READY_S = 150.0


@dataclass
class Stack:
    process: subprocess.Popen
    world: Path
    url: str
    candidate: dict[str, str]
    interviewer: dict[str, str]
    session_id: str
    candidate_url: str
    interviewer_url: str

    def sql(self, query: str) -> dict:
        reply = HTTP.post(
            self.url + "/api/sql", json={"sql": query}, headers=self.candidate, timeout=30
        )
        assert reply.status_code == 200, reply.text
        return reply.json()

    def scalar(self, query: str):
        return self.sql(query)["rows"][0][0]

    def history(self) -> list[dict]:
        reply = HTTP.get(
            f"{self.url}/api/sessions/{self.session_id}/history",
            headers=self.interviewer,
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
        return reply.json()


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = READY_S) -> dict:
    def health() -> dict | None:
        assert process.poll() is None, "sandbox up exited"
        with contextlib.suppress(httpx.HTTPError):
            reply = HTTP.get(url + "/-/health", timeout=2)
            if reply.status_code == 200:
                return reply.json()
        return None

    return until(health, "the stack healthy", timeout=timeout, every=0.5)


def _in_session(stack: Stack, links: dict[str, Any]) -> Stack:
    """The stack driven through the session whose links (as created) are `links`."""
    return dataclasses.replace(
        stack,
        candidate={"Authorization": f"Bearer {links['candidate_token']}"},
        interviewer={"Authorization": f"Bearer {links['interviewer_token']}"},
        session_id=links["session_id"],
        candidate_url=links["candidate_url"],
        interviewer_url=links["interviewer_url"],
    )


def new_session(stack: Stack, candidate: str, *options: str) -> Stack:
    """The same running stack, driven through a new candidate session of its own; `options` are
    more of `sandbox session create`'s (its policy)."""
    made = subprocess.run(
        [
            SANDBOX,
            "session",
            "create",
            str(stack.world),
            "--candidate",
            candidate,
            "--json",
            *options,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return _in_session(stack, json.loads(made.stdout))


def operator_session(stack: Stack, candidate: str, **policy: Any) -> Stack:
    """The same running stack, driven through a new candidate session the operator creates
    over the gateway's API (as the operator page does); `policy`: the session's `assistance`,
    `workspace_only` and `actions`, as the API takes them."""
    reply = HTTP.post(
        stack.url + "/api/sessions",
        json={"candidate": candidate, **policy},
        headers={"Authorization": f"Bearer {admin_token(WorldPaths(stack.world))}"},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    return _in_session(stack, reply.json())


@contextlib.contextmanager
def running_stack(
    built: BuildSummary,
    tmp_path_factory: pytest.TempPathFactory,
    speed: float,
    options: tuple[str, ...] = (),
    session_policy: dict[str, Any] | None = None,
) -> Iterator[Stack]:
    """The stack on a copy of `built` (it writes into its world) on a free port, with one
    session the operator created (`session_policy`); Ctrl-C at the end."""
    world = tmp_path_factory.mktemp("stack") / "world"
    shutil.copytree(built.root, world, ignore=shutil.ignore_patterns("run", "sessions.*"))
    port = free_port()
    process = subprocess.Popen(
        [SANDBOX, "up", str(world), "--port", str(port), "--speed", str(speed), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield operator_session(
            Stack(process, world, url, {}, {}, "", "", ""), "ada", **(session_policy or {})
        )
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    """Ctrl-C to a stack still running, then kill if it has not stopped within 30 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
