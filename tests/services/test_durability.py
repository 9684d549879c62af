"""Durability under kill -9: a gateway killed while a candidate writes history comes back with
every acknowledged event once and the session going on; a world build killed halfway leaves
nothing `sandbox up` accepts."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from sandbox.layout import IncompleteWorld, read_manifest
from tests.services.candidates import Session, kill_gateway_while_writing
from tests.services.running import SANDBOX, Stack, new_session
from tests.waiting import until

BUILD_SCALE = "0.04"  # 1,000 customers
BUILD_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def stack(shared_stack: Stack) -> Stack:
    """The shared stack, through a session of this module's own: its supervisor brings the
    killed gateway back, as it would for a candidate."""
    return new_session(shared_stack, "durable")


def _token(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


def test_a_gateway_killed_mid_session_keeps_every_acknowledged_event_once(stack: Stack) -> None:
    session = Session("ada", stack.session_id, _token(stack.candidate), _token(stack.interviewer))
    run = kill_gateway_while_writing(stack.url, stack.process.pid, session)
    assert run.failure is None, run.failure
    assert run.successor is not None and run.successor != run.victim
    assert run.failed_requests > 0, "the kill did not interrupt the candidate"

    got = run.reconciled
    assert got is not None
    assert got.missing == [], f"acknowledged but lost: {got.missing}"
    assert got.duplicated == [], f"recorded twice: {got.duplicated}"
    assert got.foreign == [], f"events no request explains: {got.foreign}"
    assert got.seq_increasing, "seq values are not unique and increasing"
    assert got.found == got.acknowledged > 30

    # The session goes on: the same token works, the state and timer are those from before.
    assert run.token_after == 200
    assert run.state_after["state"] == run.state_before["state"] == "active"
    assert run.state_after["started_at"] == run.state_before["started_at"]
    assert run.last_diagnosis_tag in run.diagnosis_after["fields"]["root_cause"]
    versions = [
        e["detail"]["version"] for e in stack.history() if e["kind"] == "diagnosis"
    ]  # a version lost with the gateway may leave a gap, never a repeat
    assert versions == sorted(set(versions))
    assert run.diagnosis_after["version"] == versions[-1]
    # Nothing the killed gateway started (its console workers) outlives it.
    assert _group_alive(run.victim, within_s=5.0) == []


def _group_alive(pgid: int, within_s: float) -> list[int]:
    """The processes of group `pgid` still alive after up to `within_s` seconds."""

    def alive() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    state = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(state[2]) == pgid and state[0] != "Z":
                    found.append(int(entry.name))
        return found

    with contextlib.suppress(AssertionError):
        until(lambda: not alive(), "the group gone", timeout=within_s, every=0.1)
    return alive()


def _kill_build_at(out: Path, stage: str, share: float) -> None:
    """`sandbox build` until its progress reaches `share` of `stage`, then SIGKILL to its whole
    process group (no chance to clean up)."""
    build = subprocess.Popen(
        [SANDBOX, "build", "--out", str(out), "--scale", BUILD_SCALE, "--progress", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen: list[dict] = []
    try:
        assert build.stdout is not None
        for line in build.stdout:
            try:
                update = json.loads(line)
            except ValueError:
                continue
            seen.append(update)
            done, total = update.get("done", 0), update.get("total") or 1
            if update.get("stage") == stage and done >= share * total:
                os.killpg(build.pid, signal.SIGKILL)
                break
        else:
            raise AssertionError(f"the build ended before {stage}: {seen[-3:]}")
    finally:
        if build.poll() is None:
            os.killpg(build.pid, signal.SIGKILL)
        build.wait(timeout=BUILD_TIMEOUT_S)
    assert build.returncode == -signal.SIGKILL


@pytest.mark.world  # a real build, killed
def test_a_build_killed_halfway_is_not_accepted_as_a_world(tmp_path: Path) -> None:
    """Killed halfway through simulating the world's days, its tables half written."""
    out = tmp_path / "half"
    _kill_build_at(out, "simulate", 0.5)
    assert (out / "candidate" / "world.duckdb").exists(), "killed before it wrote anything"

    with pytest.raises(IncompleteWorld, match="did not finish"):
        read_manifest(out)
    refused = subprocess.run(
        [SANDBOX, "up", str(out), "--port", "0"], capture_output=True, text=True, timeout=60
    )
    said = " ".join((refused.stderr + refused.stdout).split())
    assert refused.returncode != 0
    assert str(out) in said and "did not finish" in said, said
    assert "Traceback" not in said


def test_a_manifest_cut_short_by_a_kill_is_an_incomplete_world(tmp_path: Path) -> None:
    out = tmp_path / "cut"
    (out / "candidate").mkdir(parents=True)
    (out / "manifest.json").write_text('{\n  "build_seconds": 12.9,\n  "calen')
    with pytest.raises(IncompleteWorld):
        read_manifest(out)
