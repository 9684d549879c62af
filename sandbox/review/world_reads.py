"""What the review reads off a built world's tables to judge an action by its value, read once per
built world."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import duckdb

from sandbox.layout import WorldPaths, read_manifest

T = TypeVar("T")


def read_once(read: Callable[[duckdb.DuckDBPyConnection], T]) -> Callable[[Path], T | None]:
    """`read` of a world's tables, as a function of the world's directory that reads each built
    world once (by its content hash); None when the world cannot be read now, which is not
    remembered: the next call tries again."""

    @functools.lru_cache(maxsize=4)
    def cached(world: str, content_hash: str) -> T:
        con = duckdb.connect(str(WorldPaths(Path(world)).duckdb), read_only=True)
        try:
            return read(con)
        finally:
            con.close()

    def reference(world: Path) -> T | None:
        try:
            manifest = read_manifest(world)
            return cached(str(Path(world).resolve()), str(manifest.get("content_hash")))
        except Exception:  # a world being rebuilt, or one without these tables
            return None

    return reference
