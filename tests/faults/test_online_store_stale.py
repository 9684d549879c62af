"""The stale online store fault: its parameters and the frozen snapshot it keeps serving."""

from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from sandbox import scenario
from sandbox.faults.base import HookContext, WorldData
from sandbox.faults.online_store_stale import OnlineStoreStale, Params
from sandbox.pipeline import store
from sandbox.pipeline.features import MODEL_FEATURES
from sandbox.rng import stable_unit

CAL = scenario.load(None).world.calendar()
SECRET_WORDS = ("fault", "inject", "planted", "answer", "sabotage", "bug", "stale")


def fault(**params: object) -> OnlineStoreStale:
    return OnlineStoreStale(Params(**params))


def load(day: int, ids: np.ndarray) -> pl.DataFrame:
    """The online store as a healthy materialization would load it on `day`."""
    features = {c: np.full(len(ids), float(day)) for c in MODEL_FEATURES}
    features["tenure_days"] = (day + ids % 300).astype(float)
    return pl.DataFrame({"customer_id": ids}).with_columns(
        pl.lit(CAL.midnight(day)).cast(pl.Datetime("us")).alias("event_timestamp"),
        pl.lit(CAL.at(day - 1, 2.1)).cast(pl.Datetime("us")).alias("created_timestamp"),
        *[pl.Series(c, v) for c, v in features.items()],
        pl.lit(CAL.at(day, 4.0)).cast(pl.Datetime("us")).alias("materialized_at"),
    )


def active(day: int) -> np.ndarray:
    """Customers 1..10_000 at day 1; one more signs up and an old one leaves every 10 ids a day."""
    return np.arange(1 + 100 * day, 10_001 + 100 * day)


def run(f: OnlineStoreStale, days: range) -> dict[int, pl.DataFrame]:
    """Each day's load through the hook, its offline rows written first, as the build does."""
    con = duckdb.connect()
    con.execute("CREATE SCHEMA feature_store")
    data = WorldData(con)
    out = {}
    for d in days:
        con.register("rows", load(d, active(d)).drop("materialized_at").to_arrow())
        if d == days[0]:
            con.execute(f"CREATE TABLE {store.OFFLINE_TABLE} AS SELECT * FROM rows")
        else:
            con.execute(f"INSERT INTO {store.OFFLINE_TABLE} SELECT * FROM rows")
        con.unregister("rows")
        ctx = HookContext(1, d, CAL, data)
        out[d] = f.handle("materialize.online", load(d, active(d)), ctx)
    return out


@pytest.mark.parametrize(
    "params",
    [
        {"affected_share": 0.05},
        {"affected_share": 1.5},
        {"onset_day": 0},
        {"ramp_days": 22},
        {"surprise": 1},
    ],
)
def test_invalid_parameters_are_refused(params: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Params(**params)


def test_a_stall_is_a_step() -> None:
    assert Params().ramp_days == 0 and Params().affected_share == 1.0


def test_whole_store_freezes_at_the_last_good_load() -> None:
    out = run(fault(onset_day=5), range(1, 9))
    for day in range(1, 5):
        assert out[day].equals(load(day, active(day)))
    frozen = load(4, active(4))
    for day in range(5, 9):
        # Same rows and values as the day-4 load, but the job stamps today's load time.
        assert out[day].drop("materialized_at").equals(frozen.drop("materialized_at"))
        assert out[day]["materialized_at"].unique().to_list() == [CAL.at(day, 4.0)]


def test_a_shard_freezes_and_its_new_customers_disappear() -> None:
    share = 0.3
    out = run(fault(onset_day=5, affected_share=share), range(1, 12))[11]
    snapshot = load(4, active(4))
    today = load(11, active(11))
    stalled_today = stable_unit(today["customer_id"].to_numpy(), "online-store-stale") < share
    stalled_snap = stable_unit(snapshot["customer_id"].to_numpy(), "online-store-stale") < share
    assert stalled_today.mean() == pytest.approx(share, abs=0.02)
    fresh = out.filter(pl.col("event_timestamp") == CAL.midnight(11))
    stale = out.filter(pl.col("event_timestamp") == CAL.midnight(4))
    assert fresh.height + stale.height == out.height
    assert fresh.equals(today.filter(pl.Series(~stalled_today)))
    assert stale.drop("materialized_at").equals(
        snapshot.filter(pl.Series(stalled_snap)).drop("materialized_at")
    )
    # Stalled customers who signed up after the stall have no row; those who left are still there.
    new_ids = set(active(11)) - set(active(4))
    gone_ids = set(active(4)) - set(active(11))
    out_ids = set(out["customer_id"].to_list())
    stalled_ids = set(stale["customer_id"].to_list())
    assert new_ids - out_ids and all(
        stable_unit(np.array([i]), "online-store-stale")[0] < share for i in new_ids - out_ids
    )
    assert gone_ids & stalled_ids
    assert out["customer_id"].is_sorted() and out.columns == today.columns


def test_onset_on_day_one_freezes_the_first_load() -> None:
    out = run(fault(onset_day=1), range(1, 4))
    assert out[1].equals(load(1, active(1)))
    assert out[3]["event_timestamp"].unique().to_list() == [CAL.midnight(1)]


def test_the_same_days_give_the_same_loads_again() -> None:
    f = fault(onset_day=3)
    first = run(f, range(1, 6))
    again = run(f, range(1, 6))
    for day in first:
        assert first[day].equals(again[day])


def test_candidate_visible_text_keeps_the_secret() -> None:
    for onset in (1, 15, 42):
        for entry in fault(onset_day=onset).changelog(CAL):
            text = " ".join(str(v) for v in entry.values()).lower()
            assert not any(word in text for word in SECRET_WORDS), text
            assert CAL.first_day <= entry["day"] <= CAL.last_visible_day


def test_answer_key_is_complete() -> None:
    f = fault(onset_day=40, affected_share=0.25)
    key = f.key(CAL)
    assert key.fault_id == "online-store-stale" and "25%" in key.root_cause
    assert {e.kind for e in key.evidence} == {"table_column", "metric", "log_pattern", "changelog"}
    assert all(e.window_start <= e.window_end for e in key.evidence)
    titles = {entry["title"] for entry in f.changelog(CAL)}
    assert {e.ref for e in key.evidence if e.kind == "changelog"} <= titles
    assert 3 <= len(key.investigation) <= 5


@pytest.mark.parametrize("tier", ["guided", "standard", "hard"])
def test_each_tier_logs_its_own_trail(tier: str) -> None:
    f = OnlineStoreStale(Params(onset_day=24), tier)  # type: ignore[arg-type]
    entries = f.changelog(CAL)
    text = " ".join(str(v) for e in entries for v in e.values()).lower()
    assert all(t.lower() not in text for t in f.tells(tier))  # type: ignore[arg-type]
    cutover = [e for e in entries if e["day"] == 23 and e["hour"] == 21.0]
    changelog_evidence = [e for e in f.key(CAL).evidence if e.kind == "changelog"]
    if tier == "hard":
        # No entry for the cutover, only routine changes around it; the key cites none.
        assert not cutover and len(entries) >= 3 and not changelog_evidence
        assert all(CAL.first_day <= e["day"] <= CAL.last_visible_day for e in entries)
    else:
        assert len(cutover) == 1 and len(changelog_evidence) == 1
        assert ("cluster" in text) == (tier == "guided")
