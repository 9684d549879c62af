"""Spool files: what a service wrote before answering is read back whole, once, in order; a row
that does not fit its table's declaration is refused, naming the table and the column."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest

from sandbox import schema
from sandbox.services.spool import (
    LIVE_TABLES,
    BadRow,
    SpoolWriter,
    check,
    read_new,
    spool_files,
    spool_path,
)

NOW = dt.datetime(2026, 4, 1, 10, 30)


def _log(message: str) -> dict[str, Any]:
    return {
        "ts": NOW.isoformat(),
        "service": "model-server",
        "level": "info",
        "event": "request",
        "message": message,
        "attrs": "{}",
    }


def _prediction(**changes: Any) -> dict[str, Any]:
    row = {
        "prediction_id": 7,
        "request_ts": NOW.isoformat(),
        "source": "online",
        "customer_id": 42,
        "model_name": "churn-model",
        "model_version": "3",
        **dict.fromkeys(schema.FEATURES, 1.5),
        "score": 0.25,
        "threshold": 0.1,
        "decision": True,
        "latency_ms": 7,
        "status": "ok",
    }
    return {**row, **changes}


def test_records_are_read_once_and_a_torn_line_waits(tmp_path: Path) -> None:
    path = spool_path(tmp_path, "model-server", "telemetry.logs")
    writer = SpoolWriter(path)
    writer.write(_log("a"), _log("b"))
    records, offset = read_new(path, 0)
    assert [r["message"] for r in records] == ["a", "b"]
    with path.open("a") as f:
        f.write('{"ts": "2026-')  # a writer killed mid-line
    assert read_new(path, offset) == ([], offset)
    # The next writer (the restarted service) starts on a fresh line; the torn one is skipped.
    SpoolWriter(path).write(_log("c"))
    records, _ = read_new(path, offset)
    assert [r["message"] for r in records] == ["c"]
    assert spool_files(tmp_path) == [("model-server", "telemetry.logs", path)]


def test_only_live_tables_can_be_spooled_by_the_services_that_add_their_rows(
    tmp_path: Path,
) -> None:
    with pytest.raises(ValueError, match="no live table"):
        spool_path(tmp_path, "model-server", "raw.customers")
    with pytest.raises(ValueError, match=r"retrieval adds no rows to serving\.predictions"):
        spool_path(tmp_path, "retrieval", "serving.predictions")
    spool_path(tmp_path, "traffic", "telemetry.logs")  # every process logs


def test_the_live_tables_are_the_declared_ones(tmp_path: Path) -> None:
    spooled_by = {name for name, t in schema.TABLES.items() if t.live and t.live.spooled_by}
    assert spooled_by == {"telemetry.metrics"}
    assert set(LIVE_TABLES) == set(schema.SPOOLED) | spooled_by
    # The gateway computes the live series; the scheduler spools only the points it restored.
    spool_path(tmp_path, "scheduler", "telemetry.metrics")
    with pytest.raises(ValueError, match="gateway adds no rows"):
        spool_path(tmp_path, "gateway", "telemetry.metrics")
    assert "retrieval.search_clicks" in LIVE_TABLES


def test_a_row_is_read_as_its_declared_types() -> None:
    row = check("serving.predictions", _prediction(session_id="s1"))
    assert row["request_ts"] == NOW and row["latency_ms"] == 7.0
    assert isinstance(row["latency_ms"], float) and row["session_id"] == "s1"
    assert list(row)[: len(schema.names("serving.predictions"))] == schema.names(
        "serving.predictions"
    )
    # The id may be left to the gateway; production's rows carry no session.
    unnumbered = _prediction()
    del unnumbered["prediction_id"]
    row = check("serving.predictions", unnumbered)
    assert row["prediction_id"] is None and row["session_id"] is None
    drift = check(
        "monitoring.drift_daily",
        {
            "report_date": "2026-04-01",
            "n_rows": 10,
            "n_features": 13,
            "n_drifted": 0,
            "share_drifted": 0.0,
            "dataset_drift": False,
        },
    )
    assert drift["report_date"] == dt.date(2026, 4, 1)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"score": None, "status": "error"}, None),  # NULL fits any column
        ({"score": "high"}, "serving.predictions.score: DOUBLE expects a number, got 'high'"),
        ({"decision": 1}, "serving.predictions.decision: BOOLEAN expects true or false, got 1"),
        ({"customer_id": 4.0}, "serving.predictions.customer_id: BIGINT expects an integer"),
        ({"customer_id": True}, "serving.predictions.customer_id: BIGINT expects an integer"),
        ({"customer_id": 2**63}, f"serving.predictions.customer_id: {2**63} is out of range"),
        ({"model_version": 3}, "serving.predictions.model_version: VARCHAR expects a string"),
        ({"request_ts": "yesterday"}, "serving.predictions.request_ts: TIMESTAMP expects an ISO"),
        ({"request_ts": "2026-04-01T10:30:00+02:00"}, "request_ts: TIMESTAMP expects simulated"),
        ({"session_id": 5}, "serving.predictions.session_id: VARCHAR expects a string, got 5"),
        ({"scores": 0.5}, "serving.predictions.scores: no such column (declared: prediction_id,"),
    ],
)
def test_a_mistyped_or_unknown_column_is_refused_naming_table_and_column(
    changes: dict[str, Any], message: str | None
) -> None:
    if message is None:
        check("serving.predictions", _prediction(**changes))
        return
    with pytest.raises(BadRow, match=re.escape(message)):
        check("serving.predictions", _prediction(**changes))


def test_a_missing_column_is_refused_naming_table_and_column() -> None:
    row = _prediction()
    del row["latency_ms"]
    with pytest.raises(BadRow) as refused:
        check("serving.predictions", row)
    assert str(refused.value) == "serving.predictions.latency_ms: missing (send null for no value)"
    search = {
        "request_id": 1,
        "ticket_id": 2,
        "request_ts": NOW.isoformat(),
        "query_text": "refund",
        "top_k_ids": [1, "2"],
        "top_k_scores": [0.5, 0.4],
        "top1_score": 0.5,
        "encoder_version": 1,
        "index_version": "1",
        "latency_ms": 1.0,
        "clicked_article_id": None,
        "click_rank": None,
    }
    with pytest.raises(BadRow, match=r"retrieval.search_log.top_k_ids: BIGINT\[\] expects"):
        check("retrieval.search_log", search)


def test_the_writer_refuses_a_row_that_does_not_fit_and_writes_nothing_of_the_call(
    tmp_path: Path,
) -> None:
    writer = SpoolWriter(spool_path(tmp_path, "model-server", "serving.predictions"))
    bad = _prediction()
    del bad["status"]
    with pytest.raises(BadRow, match=r"^serving.predictions.status: missing"):
        writer.write(_prediction(), bad)
    assert read_new(writer.path, 0) == ([], 0)
    writer.write(_prediction())
    assert len(read_new(writer.path, 0)[0]) == 1
