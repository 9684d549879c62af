"""Start the stack's Python services as forked copies of the supervisor.

Every service imports the same libraries before it does anything: NumPy, Polars, DuckDB,
pydantic, FastAPI and the scenario's catalog, about 0.4 s of processor time in each of five
processes at every start. The supervisor imports them once (`preload`) and forks each service
from itself, which then runs its module as `python -m` would, with those imports done and their
pages shared until written.

A fork copies only the calling thread, so it is safe only while no other thread of the
supervisor can hold a lock the child needs. The libraries above start a few threads of their
own at import, idle until used (the supervisor never uses them: it imports them only to hand
them down). `can_fork` holds the supervisor to that count; when it has more (`--prometheus` reads
its history with DuckDB first), services start with exec, as they always could.

A forked child retitles itself with the command line exec would have given it, so `ps` and
whatever tells the stack's processes apart by their arguments see what they saw before.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import io
import os
import runpy
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import NoReturn

# What the services import before their own code, heaviest first.
PRELOADED = (
    "fastapi",
    "polars",
    "pydantic",
    "duckdb",
    "numpy",
    "uvicorn",
    "httpx",
    "prometheus_client",
    "sandbox.scenario",
    "sandbox.services.common",
)
_POLL_S = 0.01

_threads_after_preload: int | None = None


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def preload() -> None:
    """Import what every service imports, once, before the first fork."""
    global _threads_after_preload
    for name in PRELOADED:
        importlib.import_module(name)
    _threads_after_preload = _threads()


def can_fork() -> bool:
    """Whether a service may be forked from this process now: it has preloaded, and no thread
    has started since."""
    return _threads_after_preload is not None and _threads() <= _threads_after_preload


def command_line(pid: int) -> list[str]:
    """A process's arguments ([] when it is gone or a zombie). A process that retitled itself
    shows its title as one string: its words are its arguments."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    args = [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    return args[0].split() if len(args) == 1 else args


class Forked:
    """The part of `subprocess.Popen` the supervisor uses, for a child it forked."""

    def __init__(self, pid: int, args: list[str]) -> None:
        self.pid = pid
        self.args = args
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: its status is lost
                self.returncode = -1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            time.sleep(_POLL_S)
        return code


def fork_module(
    argv: list[str],
    env: Mapping[str, str],
    output: int,
    close: Iterable[int] = (),
    in_child: Callable[[], None] = lambda: None,
) -> Forked:
    """Fork a child that runs `argv` (`[python, "-m", module, *args]`) in a session of its own,
    with `env` added to its environment, stdin from /dev/null and stdout and stderr on the file
    descriptor `output`; `close`: descriptors it must not keep (other services' sockets);
    `in_child`: called in the child first (the parent-death signal)."""
    if argv[1:2] != ["-m"] or len(argv) < 3:
        raise ValueError(f"not a module to run: {argv}")
    close = list(close)
    for stream in (sys.stdout, sys.stderr):  # else the child writes the parent's pending output
        with contextlib.suppress(Exception):
            stream.flush()
    pid = os.fork()
    if pid == 0:
        _child(argv, env, output, close, in_child)
    return Forked(pid, argv)


def _child(
    argv: list[str],
    env: Mapping[str, str],
    output: int,
    close: list[int],
    in_child: Callable[[], None],
) -> NoReturn:
    code = 1
    try:
        # What the supervisor left behind is never collected here: its collection would touch
        # (and copy) every shared page, and finalizers would close descriptors of the parent's.
        gc.freeze()
        os.setsid()
        in_child()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _redirect(output)
        for fd in close:
            with contextlib.suppress(OSError):
                os.close(fd)
        os.environ.update(env)
        _retitle(" ".join(argv))
        atexit._clear()  # the parent's exit handlers are not the service's
        module = argv[2]
        sys.argv = [module, *argv[3:]]
        sys.path[0] = os.getcwd()  # as `python -m` has it
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc)
    except KeyboardInterrupt:
        code = -signal.SIGINT
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
    if code < 0:  # die of the signal, as the interpreter does for an uncaught Ctrl-C
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


def _redirect(output: int) -> None:
    """stdin from /dev/null; stdout and stderr to `output`, unbuffered as with -u."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(output, 1)
    os.dup2(output, 2)
    if output > 2:
        os.close(output)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.stdout = _unbuffered(1)
    sys.stderr = _unbuffered(2, errors="backslashreplace")


def _unbuffered(fd: int, errors: str = "strict") -> io.TextIOWrapper:
    return io.TextIOWrapper(
        io.FileIO(fd, "w", closefd=False), write_through=True, line_buffering=True, errors=errors
    )


def _retitle(title: str) -> None:
    import setproctitle

    setproctitle.setproctitle(title)


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1
