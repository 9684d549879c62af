"""Start the stack's Python services as forks of one interpreter that has already imported the
libraries they share.

Each service is `python -m sandbox.services.<name>`; started that way, every one imports NumPy,
FastAPI and the rest again, and the model server and the retrieval service import scikit-learn
through skops (about four CPU-seconds each, most of their start). A stack's start and a service's
restart after a crash would pay it every time. Instead, the supervisor starts one multiprocessing
forkserver that imports `PRELOAD` once; a service is a fork of it, so it starts in under a second
and shares the imported pages with its siblings instead of holding its own copy.

Only libraries that are safe to fork after import are preloaded: Polars starts a thread pool on
import that a forked child cannot use, so each service imports Polars itself, and nothing in the
forkserver ever runs a computation (whose thread pools a child would inherit broken).

A forked service looks and behaves like the process it replaces: its own session and process group
(the supervisor signals the group), its command line set to `python -m <module> <args>` (what
`ps`, the fleet view and the benchmarks read), its output appended to its log file, its
environment the one given, and SIGTERM when the forkserver (and so the supervisor) dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import runpy
import signal
import subprocess
import sys
from collections.abc import Mapping
from multiprocessing.process import BaseProcess
from pathlib import Path

# Imported once by the forkserver. Not Polars (see above), and no module of this package: their
# import-time state (settings read from the environment) belongs to each service.
PRELOAD = (
    "numpy",
    "duckdb",
    "fastapi",
    "uvicorn",
    "httpx",
    "pydantic",
    "prometheus_client",
    "threadpoolctl",
    "setproctitle",
    "skops.io",
    "sklearn.ensemble",
    "sklearn.pipeline",
    "sklearn.feature_extraction.text",
    "sklearn.decomposition",
    "sklearn.preprocessing",
)
PR_SET_PDEATHSIG = 1


def _become(module: str, args: list[str], env: dict[str, str], log: str) -> None:
    """In the forked child: turn into `python -m module args` with `env`, writing to `log`."""
    os.setsid()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    # Before the environment changes: the title takes the room of the original command line and
    # environment, which setproctitle finds through the process's initial environment.
    import setproctitle

    setproctitle.setproctitle(" ".join([sys.executable, "-m", module, *args]))
    os.environ.clear()
    os.environ.update(env)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    # Line-buffered, as PYTHONUNBUFFERED makes a freshly started service's output.
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


class ForkedProcess:
    """What the supervisor uses of a `subprocess.Popen`, for a service forked by the launcher:
    its pid, `poll` and `wait` (the exit code, negative for the signal that ended it)."""

    def __init__(self, process: BaseProcess) -> None:
        self._process = process
        self.pid: int = process.pid or 0

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        code = self._process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
        return code


class Launcher:
    """Forks services from one forkserver; the first `start` starts the forkserver."""

    def __init__(self) -> None:
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(list(PRELOAD))

    def start(
        self, name: str, module: str, args: list[str], env: Mapping[str, str], log: Path
    ) -> ForkedProcess:
        process = self._context.Process(
            target=_become, args=(module, list(args), dict(env), str(log)), name=name
        )
        process.start()
        return ForkedProcess(process)
