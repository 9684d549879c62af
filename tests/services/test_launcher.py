"""Services forked from the supervisor run as `python -m` would run them: the module as
`__main__` with its arguments and environment, in a session of their own, output to their log,
no descriptor of another service, the command line exec would have given them, and their exit
status to the supervisor. Each case forks from a fresh interpreter of its own (as the supervisor
is), never from a test worker with threads of its own."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Run by the forked child: says what it sees, then exits with the code it is given.
CHILD = """
import json, os, signal, sys, time
from pathlib import Path

def is_open(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False
print(json.dumps({
    "name": __name__,
    "argv": sys.argv[1:],
    "env": os.environ.get("SEEN"),
    "stdin": sys.stdin.read(),
    "session_leader": os.getsid(0) == os.getpid(),
    "held_fd_open": is_open(int(os.environ["HELD_FD"])),
    "kept_fd_open": is_open(int(os.environ["KEPT_FD"])),
    "cmdline": Path(f"/proc/{os.getpid()}/cmdline").read_bytes().decode(),
    "comm": Path("/proc/self/comm").read_text().strip(),
    "sigterm_default": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
}))
print("to stderr", file=sys.stderr)
if sys.argv[1] == "sleep":
    time.sleep(60)
sys.exit(int(sys.argv[1]))
"""
PARENT = """
import json, os, signal, socket, sys, time
from sandbox.services import launcher

signal.signal(signal.SIGTERM, lambda *_: None)  # the supervisor's own handler
held, kept = socket.socket(), socket.socket()
log = open(sys.argv[2], "ab")
argv = [sys.executable, "-m", "launched_child", sys.argv[1], "--flag"]
fds = {"HELD_FD": str(held.fileno()), "KEPT_FD": str(kept.fileno())}
child = launcher.fork_module(argv, {"SEEN": "yes", **fds}, log.fileno(), keep=[kept.fileno()])
log.close()
if sys.argv[1] == "sleep":
    try:
        child.wait(timeout=0.3)
        timed_out = False
    except launcher.subprocess.TimeoutExpired:
        timed_out = True
    while "{" not in open(sys.argv[2]).read():  # its module runs: it has its title
        time.sleep(0.01)
    title = launcher.command_line(child.pid)
    os.killpg(child.pid, signal.SIGTERM)
    print(json.dumps({"timed_out": timed_out, "title": title, "code": child.wait(timeout=10)}))
else:
    print(json.dumps({"code": child.wait(timeout=30), "args": launcher.command_line(os.getpid())}))
"""


def _run(tmp_path: Path, how: str) -> tuple[dict, list[dict], str]:
    (tmp_path / "launched_child.py").write_text(CHILD)
    log = tmp_path / "child.log"
    done = subprocess.run(
        [sys.executable, "-c", PARENT, how, str(log)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    output = log.read_text()
    seen = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return json.loads(done.stdout), seen, output


def test_a_forked_service_runs_its_module_as_python_m_would(tmp_path: Path) -> None:
    parent, [child], output = _run(tmp_path, "3")
    assert parent["code"] == 3
    assert child["name"] == "__main__"
    assert child["argv"] == ["3", "--flag"]
    assert child["env"] == "yes"
    assert child["stdin"] == ""
    assert child["session_leader"]
    assert not child["held_fd_open"], "the supervisor's other descriptors stay with it"
    assert child["kept_fd_open"], "its own listening socket is handed down"
    assert child["sigterm_default"], "SIGTERM stops it, whatever the parent set"
    assert child["cmdline"].replace("\0", " ").split() == [
        sys.executable,
        "-m",
        "launched_child",
        "3",
        "--flag",
    ]
    assert child["comm"] == Path(sys.executable).name[:15], "`top` still shows the interpreter"
    assert "to stderr" in output, "stderr goes to the log too"
    assert parent["args"][:2] == [sys.executable, "-c"] and len(parent["args"]) == 5


def test_a_forked_service_killed_by_a_signal_reports_it(tmp_path: Path) -> None:
    parent, [child], _ = _run(tmp_path, "sleep")
    assert parent["timed_out"] and parent["code"] == -15
    # read from outside, the title is the command line exec would have given it
    assert parent["title"] == [sys.executable, "-m", "launched_child", "sleep", "--flag"]
    assert child["argv"] == ["sleep", "--flag"]


def test_services_fork_only_while_no_thread_has_started_since_the_preload() -> None:
    check = textwrap.dedent(
        """
        import threading, time
        from sandbox.services import launcher
        before = launcher.can_fork()
        launcher.preload()
        after = launcher.can_fork()
        threading.Thread(target=time.sleep, args=(2,), daemon=True).start()
        print(before, after, launcher.can_fork())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "False"]


def test_a_forked_service_never_returns_into_the_supervisors_code(tmp_path: Path) -> None:
    """Whatever its exit: here a negative code, which no signal number matches."""
    parent, [child], _ = _run(tmp_path, "-100")  # the parent's code ran once: one answer
    assert parent["code"] == -100 & 0xFF  # as the interpreter exits with it
    assert child["argv"] == ["-100", "--flag"]
