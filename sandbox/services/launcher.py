"""Start the stack's Python services as forked copies of the supervisor.

Every service imports the same libraries before it does anything: NumPy, Polars, DuckDB,
pydantic, FastAPI and the scenario's catalog, about 0.4 s of processor time in each of five
processes at every start. The supervisor imports them once (`preload`) and forks each service
from itself, which then runs its module as `python -m` would, with those imports done and their
pages shared until written.

A fork copies only the calling thread, so it is safe only while no other thread of the
supervisor can hold a lock the child needs. The libraries above start a few threads of their
own at import, idle until used (the supervisor never uses them: it imports them only to hand
them down). `can_fork` holds the supervisor to those threads; when another runs (a library left
one behind), services start with exec, as they always could.

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
import shlex
import signal
import subprocess
import sys
import threading
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
# The exit status of a child whose code failed before it could say why.
_BROKEN = 70

_threads_after_preload: frozenset[str] | None = None


def _threads() -> frozenset[str]:
    return frozenset(os.listdir("/proc/self/task"))


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
    if len(args) != 1:
        return args
    try:
        return shlex.split(args[0])
    except ValueError:  # not a title of ours
        return args[0].split()


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
                self.returncode = 255
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
    keep: Iterable[int] = (),
    in_child: Callable[[], None] = lambda: None,
) -> Forked:
    """Fork a child that runs `argv` (`[python, "-m", module, *args]`) in a session of its own,
    with `env` added to its environment, stdin from /dev/null, stdout and stderr on the file
    descriptor `output`, and of the parent's other descriptors only `keep` (its listening
    socket), as `Popen` with `pass_fds`; `in_child`: called in the child once it has its own
    session (the parent-death signal).
    Returns once the child leads its session, as `Popen` returns once the child has exec'd: a
    signal to its process group from then on reaches it."""
    if argv[1:2] != ["-m"] or len(argv) < 3:
        raise ValueError(f"not a module to run: {argv}")
    keep = frozenset(keep)
    for stream in (sys.stdout, sys.stderr):  # else the child writes the parent's pending output
        with contextlib.suppress(Exception):
            stream.flush()
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_read)
            _child(argv, env, output, keep, in_child, ready_write)
        except BaseException:
            with contextlib.suppress(BaseException):
                traceback.print_exc()
        finally:  # whatever went wrong, never back into the parent's code
            os._exit(_BROKEN)
    os.close(ready_write)
    try:
        os.read(ready_read, 1)  # a byte once it leads its session; end of file if it died first
    finally:
        os.close(ready_read)
    return Forked(pid, argv)


def _child(
    argv: list[str],
    env: Mapping[str, str],
    output: int,
    keep: frozenset[int],
    in_child: Callable[[], None],
    ready: int,
) -> NoReturn:
    # What the supervisor left behind is never collected here: its collection would touch (and
    # copy) every shared page, and finalizers would close descriptors of the parent's.
    gc.freeze()
    # The parent's handlers first: a stop signal from here on stops this process.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.setsid()
    in_child()
    os.write(ready, b"1")
    _redirect(output)
    _close_all_but(keep)
    os.environ.update(env)
    _retitle(shlex.join(argv))
    _own_secrets()
    module = argv[2]
    sys.argv = [module, *argv[3:]]
    sys.path[0] = os.getcwd()  # as `python -m` has it
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = _exit_code(exc)
    except KeyboardInterrupt:
        sys.excepthook(*sys.exc_info())
        code = -signal.SIGINT
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    # The interpreter's own shutdown, but for finalizing objects: threads joined, then the exit
    # handlers (the libraries', registered in the parent when they were imported).
    with contextlib.suppress(BaseException):
        threading._shutdown()  # type: ignore[attr-defined]
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    with contextlib.suppress(BaseException):
        sys.stdout.flush()
        sys.stderr.flush()
    if code < 0:  # die of the signal, as the interpreter does after an uncaught Ctrl-C
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code & 0xFF)


def _redirect(output: int) -> None:
    """stdin from /dev/null; stdout and stderr to `output`, unbuffered as with -u, encoded as
    the interpreter encodes them."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(output, 1)
    os.dup2(output, 2)
    os.close(output)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.stdout = _unbuffered(1, sys.__stdout__)
    sys.stderr = _unbuffered(2, sys.__stderr__)


def _close_all_but(keep: frozenset[int]) -> None:
    """Close every descriptor above stderr but `keep`: the other services' sockets, the
    supervisor's files, whatever the supervisor itself inherited. The parent's objects that
    hold them are never finalized here (`gc.freeze`, `os._exit`), so none is closed twice."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _unbuffered(fd: int, like: io.TextIOBase | None) -> io.TextIOWrapper:
    return io.TextIOWrapper(
        io.FileIO(fd, "w", closefd=False),
        encoding=getattr(like, "encoding", None),
        errors=getattr(like, "errors", None),
        write_through=True,
        line_buffering=True,
    )


def _retitle(title: str) -> None:
    """The command line `ps` shows; the process name (`ps -o comm`, `top`) stays the
    interpreter's, as exec gives it."""
    import setproctitle

    setproctitle.setproctitle(title)
    setproctitle.setthreadtitle(Path(sys.executable).name)


def _own_secrets() -> None:
    """A key of its own for multiprocessing's connections, not the key of every sibling."""
    process = sys.modules.get("multiprocessing.process")
    if process is not None:
        process.current_process().authkey = os.urandom(32)  # type: ignore[attr-defined]


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    print(exc.code, file=sys.stderr)
    return 1
