"""A console worker runs a dashboard's panels at a lower CPU priority than console queries: on a
machine many stacks share, the statement a person waits on goes first."""

from __future__ import annotations

import os
from pathlib import Path

from sandbox.layout import WorldPaths
from sandbox.services.console.worker import BACKGROUND_NICE
from sandbox.services.settings import Settings
from tests.services.conftest import gateway_client, session_maker

# About a third of a second of one core; the parameters are the ones every panel is given.
HEAVY = (
    "SELECT count(*) AS n FROM range(40000000) t(i) "
    "WHERE hash(i) % 7 = 0 AND $start::TIMESTAMP < $end::TIMESTAMP"
)
BOARD = f'''
id = "heavy"
title = "Heavy"

[[panels]]
id = "heavy"
title = "Heavy"
chart = "stat"
y = ["n"]
sql = """{HEAVY}"""
'''
TICKS_S = os.sysconf("SC_CLK_TCK")

Threads = dict[tuple[int, int], tuple[float, int]]  # (pid, tid) -> (CPU seconds, nice)


def _children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as children:
            found += [int(c) for c in children.read().split()]
    return found


def _worker_threads() -> Threads:
    """Every thread of the console workers under this process: the forkserver's children."""
    threads: Threads = {}
    for server in _children(os.getpid()):
        with open(f"/proc/{server}/cmdline") as cmdline:
            if "forkserver" not in cmdline.read():
                continue
        for worker in _children(server):
            for tid in os.listdir(f"/proc/{worker}/task"):
                with open(f"/proc/{worker}/task/{tid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
                cpu = (int(fields[11]) + int(fields[12])) / TICKS_S
                threads[(worker, int(tid))] = (cpu, int(fields[16]))
    return threads


def _nice_of_busiest(before: Threads, after: Threads) -> int:
    """The nice value of the thread that worked most between the two looks."""
    _, thread = max((cpu - before.get(t, (0.0, 0))[0], t) for t, (cpu, _) in after.items())
    return after[thread][1]


def test_a_panel_runs_at_a_lower_cpu_priority_than_a_console_query(
    paths: WorldPaths, tmp_path: Path
) -> None:
    boards = tmp_path / "dashboards"
    boards.mkdir()
    (boards / "heavy.toml").write_text(BOARD)
    settings = Settings(query_time_limit_s=10, dashboards=boards)
    with gateway_client(paths, settings=settings) as client:
        links = session_maker(client, paths)("ada")
        who = {"Authorization": f"Bearer {links['candidate_token']}"}
        before = _worker_threads()
        panel = client.get("/api/dashboards/heavy/panels/heavy", headers=who)
        assert panel.status_code == 200, panel.text
        assert _nice_of_busiest(before, _worker_threads()) == BACKGROUND_NICE
        before = _worker_threads()
        query = client.post(
            "/api/sql",
            json={"sql": HEAVY.replace("$start", "'2000-01-01'").replace("$end", "'2001-01-01'")},
            headers=who,
        )
        assert query.status_code == 200, query.text
        assert _nice_of_busiest(before, _worker_threads()) == 0
        # the panel's thread kept its priority; the worker's own did not change
        assert {nice for _, nice in _worker_threads().values()} == {0, BACKGROUND_NICE}
