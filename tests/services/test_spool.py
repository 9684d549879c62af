"""Spool files: what a service wrote before answering is read back whole, once, in order."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.services.spool import SpoolWriter, read_new, spool_files, spool_path


def test_records_are_read_once_and_a_torn_line_waits(tmp_path: Path) -> None:
    path = spool_path(tmp_path, "model-server", "serving.predictions")
    writer = SpoolWriter(path)
    writer.write({"a": 1}, {"a": 2})
    records, offset = read_new(path, 0)
    assert records == [{"a": 1}, {"a": 2}]
    with path.open("a") as f:
        f.write('{"a": 3')  # a writer killed mid-line
    assert read_new(path, offset) == ([], offset)
    # The next writer (the restarted service) starts on a fresh line; the torn one is skipped.
    SpoolWriter(path).write({"a": 4})
    records, _ = read_new(path, offset)
    assert records == [{"a": 4}]
    assert spool_files(tmp_path) == [("model-server", "serving.predictions", path)]


def test_only_live_tables_can_be_spooled(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no live table"):
        spool_path(tmp_path, "model-server", "raw.customers")
