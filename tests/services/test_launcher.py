"""Services forked from the launcher look and behave as if started with `python -m`: their own
process group, their command line, their log, only the environment given, the exit code the
supervisor restarts on; and the libraries they share were imported once, before they started.

The launcher's forkserver is one per process and multiprocessing keeps it for the process's
life, so each test drives it from a fresh interpreter (`DRIVE`), never from the test process,
whose in-process gateways start forkservers of their own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

MODULE = "tests.services.launched"
# Starts the stand-in service, reads what it says, ends it with a signal and reports.
DRIVE = """
import json, os, signal, sys, time
from pathlib import Path
from sandbox.services.gateway.worlds import command_line
from sandbox.services.launcher import Launcher
os.environ["LAUNCHED_NOT_GIVEN"] = "the launcher's own"
log, sig = Path(sys.argv[1]), int(sys.argv[2])
process = Launcher().start("launched", "MODULE", ["--world", "/w", "--port", "1"],
                           {"LAUNCHED_GIVEN": "yes"}, log)
deadline = time.monotonic() + 60
while not (log.exists() and log.read_text().strip()) and time.monotonic() < deadline:
    time.sleep(0.05)
running = process.poll()
try:
    process.wait(timeout=0.2)
    timed_out = False
except Exception as exc:
    timed_out = type(exc).__name__
title = command_line(process.pid)
os.killpg(process.pid, sig)
code = process.wait(timeout=30)
print(json.dumps({"pid": process.pid, "said": json.loads(log.read_text().splitlines()[0]),
                  "title": title, "running": running, "timed_out": timed_out, "code": code}))
""".replace("MODULE", MODULE)


def _drive(tmp_path: Path, sig: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", DRIVE, str(tmp_path / "launched.log"), str(sig)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_a_forked_service_is_its_own_process_with_its_command_line_log_and_environment(
    tmp_path: Path,
) -> None:
    got = _drive(tmp_path, 15)
    said = got["said"]
    assert said["pid"] == got["pid"] and said["pgid"] == got["pid"]  # a group to signal
    assert said["name"] == "__main__" and said["argv"] == ["--world", "/w", "--port", "1"]
    assert (said["given"], said["not_given"]) == ("yes", None)
    assert said["sklearn_before_main"]  # preloaded: imported once, by the forkserver
    assert got["title"][-6:] == ["-m", MODULE, "--world", "/w", "--port", "1"]
    assert got["running"] is None and got["timed_out"] == "TimeoutExpired"
    assert got["code"] == 3  # its own exit code, from its SIGTERM handler


def test_a_killed_service_reports_the_signal(tmp_path: Path) -> None:
    assert _drive(tmp_path, 9)["code"] == -9
