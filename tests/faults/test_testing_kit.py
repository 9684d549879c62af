"""The kit's bar fails a fault that falls short, and says which fault and why: checks that were
not measurable never get a fault through, a symptom must fail without the fault, an
investigation must find its evidence and prove something, evidence must exist, hooks and the
story must be there, and nothing candidate-visible may name a planted fault."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import duckdb
import pytest

from sandbox import scenario, testing
from sandbox.difficulty import Tier
from sandbox.faults.base import Check, Evidence, HookContext, Step, hook
from sandbox.faults.duplicate_billing_events import DuplicateBillingEvents
from sandbox.testing import FaultFailure

CAL = scenario.load(None).world.calendar()
PASSED = Check(name="symptom", passed=True, detail="seen")
FAILED = Check(name="symptom", passed=False, detail="not seen")
UNKNOWN = Check(name="labels", outcome="not measurable", detail="too few labels")


def fault_verifying(*checks: Check) -> DuplicateBillingEvents:
    class Verified(DuplicateBillingEvents):
        def verify(self, con: duckdb.DuckDBPyConnection, calendar: object) -> list[Check]:
            return list(checks)

    return Verified(DuplicateBillingEvents.Params())


def test_a_fault_verifies_on_its_symptom_not_on_checks_that_were_not_measurable() -> None:
    con = duckdb.connect()
    assert testing.assert_verifies_where_planted(fault_verifying(PASSED, UNKNOWN), con, CAL)
    for checks in [(UNKNOWN, PASSED), (UNKNOWN,), (PASSED, FAILED), ()]:
        with pytest.raises(FaultFailure, match=r"^duplicate-billing-events: its verification"):
            testing.assert_verifies_where_planted(fault_verifying(*checks), con, CAL)


def test_the_symptom_must_fail_without_the_fault() -> None:
    con = duckdb.connect()
    assert testing.assert_absent_without_it(fault_verifying(FAILED, UNKNOWN), con, CAL) == FAILED
    for checks in [(PASSED,), (UNKNOWN, FAILED)]:
        with pytest.raises(FaultFailure, match="should fail in a world without it"):
            testing.assert_absent_without_it(fault_verifying(*checks), con, CAL)


def fault_investigating(table: str) -> DuplicateBillingEvents:
    class Investigated(DuplicateBillingEvents):
        def investigation(self, calendar: object) -> list[Step]:
            step = Step(
                question="Is it there?",
                sql=f"SELECT x FROM {table}",
                evidence="duplicate-events",
                finding="it is",
                found=lambda f: f.height > 0 and f["x"][0] == 1,
            )
            return [step, step, step]

    return Investigated(DuplicateBillingEvents.Params())


def test_an_investigation_finds_its_evidence_and_proves_something() -> None:
    world, control, empty = duckdb.connect(), duckdb.connect(), duckdb.connect()
    world.execute("CREATE TABLE t AS SELECT 1 AS x")
    control.execute("CREATE TABLE t AS SELECT 0 AS x")
    fault = fault_investigating("t")
    testing.assert_investigation_reaches_evidence(fault, world, control, CAL)
    testing.assert_investigation_reaches_evidence(fault, world, empty, CAL)  # no such table
    with pytest.raises(FaultFailure, match="also finds its evidence in a world without it"):
        testing.assert_investigation_reaches_evidence(fault, world, world, CAL)
    with pytest.raises(FaultFailure, match=r"step 1 \('Is it there\?'\) does not find"):
        testing.assert_investigation_reaches_evidence(fault, control, empty, CAL)
    with pytest.raises(FaultFailure, match=r"step 1 .* fails"):
        testing.assert_investigation_reaches_evidence(fault_investigating("u"), world, empty, CAL)


def test_evidence_points_at_what_exists() -> None:
    con = duckdb.connect()
    con.execute("CREATE SCHEMA raw; CREATE TABLE raw.billing_events (event_id BIGINT)")
    con.execute("CREATE SCHEMA ops; CREATE TABLE ops.changelog AS SELECT 'a deploy' AS title")
    con.execute(
        "CREATE SCHEMA telemetry; CREATE TABLE telemetry.metrics AS SELECT 'm' AS metric; "
        """CREATE TABLE telemetry.logs AS SELECT '{"rows_in": 3}' AS attrs"""
    )

    def exists(kind: str, ref: str) -> bool:
        evidence = Evidence(
            id="e",
            kind=kind,  # type: ignore[arg-type]
            ref=ref,
            description="d",
            window_start=CAL.date(1),
            window_end=CAL.date(2),
        )
        return testing.evidence_exists(con, evidence)

    assert exists("table_column", "raw.billing_events.event_id")
    assert not exists("table_column", "raw.billing_events.amount")
    assert exists("changelog", "a deploy") and not exists("changelog", "another")
    assert exists("metric", "m") and not exists("metric", "n")
    assert exists("log_pattern", r'"rows_in": \d') and not exists("log_pattern", "rows_out")
    with pytest.raises(FaultFailure, match="points at evidence the world lacks"):
        testing.assert_evidence_exists(DuplicateBillingEvents(DuplicateBillingEvents.Params()), con)


def test_hooks_and_the_story_must_be_there() -> None:
    testing.assert_documented(DuplicateBillingEvents)
    testing.assert_hooks_well_formed(DuplicateBillingEvents)

    class Misnamed(DuplicateBillingEvents):
        id = "Billing Events"

    with pytest.raises(FaultFailure, match=r"^Misnamed: its id is lowercase words"):
        testing.assert_documented(Misnamed)

    class Untitled(DuplicateBillingEvents):
        title = ""

    with pytest.raises(FaultFailure, match=r"^duplicate-billing-events: title is missing"):
        testing.assert_documented(Untitled)

    class ByHand(DuplicateBillingEvents):
        def apply(self, point: str, value: object, ctx: HookContext) -> object:
            return value

    with pytest.raises(FaultFailure, match="dispatches by hand"):
        testing.assert_hooks_well_formed(ByHand)

    class Renamed(DuplicateBillingEvents):
        @hook("serve.traffic")
        def double(self, multiplier: float, ctx: HookContext) -> float:
            return multiplier * 2

    Renamed.handlers = {**Renamed.handlers, "serve.traffic": "retry_some_events"}
    with pytest.raises(FaultFailure, match=r"not marked @hook\('serve.traffic'\)"):
        testing.assert_hooks_well_formed(Renamed)


def test_answer_keys_are_complete_and_dated_in_the_faults_window() -> None:
    testing.assert_answer_key_complete(DuplicateBillingEvents(DuplicateBillingEvents.Params()))

    class Undated(DuplicateBillingEvents):
        def answer_key(self, calendar: object):  # type: ignore[no-untyped-def]
            key = super().answer_key(CAL)
            key.evidence[0].window_end = CAL.date(self.params.onset_day - 1)
            return key

    with pytest.raises(FaultFailure, match="evidence 'duplicate-events' is dated"):
        testing.assert_answer_key_complete(Undated(DuplicateBillingEvents.Params()), CAL)


def fake_world(root: Path, changelog_title: str) -> Path:
    """The candidate part of a world, as far as the secrecy scan reads it."""
    candidate = root / "candidate"
    (candidate / "logs").mkdir(parents=True)
    (candidate / "mlflow").mkdir()
    (candidate / "logs" / "billing.jsonl").write_text('{"event": "run_finished"}\n')
    con = duckdb.connect(str(candidate / "world.duckdb"))
    con.execute("CREATE SCHEMA ops")
    con.execute("CREATE TABLE ops.changelog AS SELECT ? AS title", [changelog_title])
    con.close()
    registry = sqlite3.connect(candidate / "mlflow" / "mlflow.db")
    registry.execute("CREATE TABLE tags (value TEXT)")
    registry.executemany("INSERT INTO tags VALUES (?)", [(f"tag {i}",) for i in range(30)])
    registry.commit()
    registry.close()
    return root


def test_nothing_a_candidate_can_read_may_name_a_planted_fault(tmp_path: Path) -> None:
    testing.assert_nothing_names(fake_world(tmp_path / "clean", "billing deploy"), ["my-fault"])
    leaky = fake_world(tmp_path / "leaky", "rollback of my-fault")
    with pytest.raises(FaultFailure, match=r"ops\.changelog\.title: \[\"rollback of my-fault\"\]"):
        testing.assert_nothing_names(leaky, ["my-fault"])
    planted = fake_world(tmp_path / "planted", "fault planted here")
    with pytest.raises(FaultFailure, match="gives a planted fault away"):
        testing.assert_nothing_names(planted)
    assert testing.telltale(["x-y"]).search("the X-Y change") and not testing.telltale().search(
        "a debugger"
    )


def fault_with_steps(tier: Tier, *sqls: str) -> DuplicateBillingEvents:
    class Investigated(DuplicateBillingEvents):
        def investigation(self, calendar: object) -> list[Step]:
            return [
                Step(question="q", sql=sql, evidence="e", finding="f", found=lambda f: True)
                for sql in sqls
            ]

    return Investigated(DuplicateBillingEvents.Params(), tier)


def test_at_hard_an_investigation_takes_four_queries_one_reading_two_tables() -> None:
    one = "SELECT * FROM raw.a"
    joined = "SELECT * FROM raw.a JOIN raw.b USING (k)"
    nested = "WITH x AS (SELECT k FROM raw.a) SELECT * FROM raw.b WHERE k IN (SELECT k FROM x)"
    testing.assert_investigation_fits_tier(fault_with_steps("hard", one, one, one, joined), CAL)
    testing.assert_investigation_fits_tier(fault_with_steps("hard", one, one, one, nested), CAL)
    testing.assert_investigation_fits_tier(fault_with_steps("standard", one, one, one), CAL)
    with pytest.raises(FaultFailure, match=r"at hard the investigation has 3 steps"):
        testing.assert_investigation_fits_tier(fault_with_steps("hard", one, one, joined), CAL)
    with pytest.raises(FaultFailure, match="no step of the investigation reads two tables"):
        self_join = "WITH x AS (SELECT * FROM raw.a) SELECT * FROM x JOIN raw.a USING (k)"
        testing.assert_investigation_fits_tier(
            fault_with_steps("hard", one, one, one, self_join), CAL
        )
