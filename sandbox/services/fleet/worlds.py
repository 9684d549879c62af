"""The worlds the operator's gateway looks after: the directory that holds them, what each one's
manifest says, how many sessions it has, and how much memory a running stack's processes hold.

Plain functions over files (`/proc`, manifests, session files); `stacks` starts and stops stacks.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from pathlib import Path
from typing import Any

from sandbox.layout import IncompleteWorld, WorldPaths, read_manifest
from sandbox.review.store import SESSIONS_FILE
from sandbox.services.launcher import command_line
from sandbox.services.settings import Settings

# A world's name is one plain directory name: no separators, no dots, nothing to escape with.
NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def worlds_root(settings: Settings, running_world: Path) -> Path:
    """Where worlds are built and listed: the `worlds_root` setting, else the directory that
    holds the running world."""
    return (settings.worlds_root or Path(running_world).resolve().parent).resolve()


def manifest_of(world: Path) -> dict[str, Any] | None:
    """The world's manifest when it is completely built, else None."""
    try:
        return read_manifest(world)
    except IncompleteWorld:
        return None


def built_worlds(root: Path) -> list[tuple[str, Path, dict[str, Any]]]:
    """(name, directory, manifest) of every complete world directly under `root`, by name.
    Directories whose names could not be a world's (a build's scratch, dotted names) are
    skipped."""
    found = []
    if root.is_dir():
        for world in sorted(root.iterdir()):
            if NAME.match(world.name) and world.is_dir():
                manifest = manifest_of(world)
                if manifest is not None:
                    found.append((world.name, world, manifest))
    return found


def describe(name: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """What the operator page shows of a world from its manifest."""
    return {
        "name": name,
        "seed": manifest.get("seed"),
        "scale": manifest.get("scale"),
        "difficulty": manifest.get("difficulty", "guided"),
        "content_hash": manifest.get("content_hash"),
    }


def session_count(world: Path) -> int:
    """How many sessions the world's sessions file holds (0 when it has none), read without
    writing: its own gateway may have it open."""
    path = WorldPaths(world).interviewer / SESSIONS_FILE
    if not path.is_file():
        return 0
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
        try:
            return int(con.execute("SELECT count(*) FROM sessions").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def _names(pid: int, wanted: Path) -> bool:
    """Whether one of the process's arguments is `wanted` (absolute), as given or relative to
    the directory the process runs in (`sandbox build --out worlds/x` run from the project)."""
    args = command_line(pid)
    if str(wanted) in args:
        return True
    relative = [a for a in args if a and not a.startswith(("/", "-"))]
    if not relative:
        return False
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return False
    return any(os.path.normpath(cwd / a) == str(wanted) for a in relative)


def processes_naming(path: Path) -> list[int]:
    """The processes with `path` as one of their arguments, given absolute or relative to their
    working directory: a build writing it, a stack serving it (a forked worker shows its
    parent's arguments, so it counts too)."""
    wanted = Path(os.path.normpath(Path(path).absolute()))
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and _names(int(entry.name), wanted)
    ]


def tree_rss_bytes(pid: int, apart: frozenset[int] = frozenset()) -> int | None:
    """Resident memory of the process and every process under it, but for the trees under the
    `apart` processes (stacks of their own), summed (None when it is gone)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            # The parent is the 2nd field after the command's closing parenthesis.
            stat = (entry / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    total, seen, todo = 0, False, [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError, ValueError, IndexError):
            pages = int(Path(f"/proc/{current}/statm").read_text().split()[1])
            total += pages * PAGE_BYTES
            seen = True
        todo.extend(child for child in children.get(current, []) if child not in apart)
    return total if seen else None
