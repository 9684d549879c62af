"""The ops console on a running stack: an action changes what the live services serve from its
effective time in simulated time, measured against the same-seed control world.

The default world's fault fills a growing share of customers' watch time with a wrong mean: live
requests for those customers are served the fill value. Setting the fill value back to the
policy's mean moves their served features and scores toward the control world's; changing the
decision threshold leaves both as they were and changes only the decisions.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Iterator

import duckdb
import numpy as np
import polars as pl
import pytest
from playwright.sync_api import Browser, Page, expect

from sandbox.actions.catalog import SET_FILL, SET_THRESHOLD
from sandbox.layout import WorldPaths
from sandbox.pipeline import deploy, registry
from sandbox.services.supervisor import HEARTBEAT_FILE
from sandbox.world.build import BuildSummary
from tests.http_client import HTTP
from tests.services.acting import act, acting_stack, forward, model_now, predictions
from tests.services.acting import review as acting_review
from tests.services.running import SANDBOX, Stack
from tests.services.test_workspace_browser import WAIT_MS
from tests.waiting import until

FEATURE = "avg_daily_minutes_7d"
AFFECTED = 120  # customers served the fill value that the test asks about


@pytest.fixture(scope="module")
def acting(faulty_world: BuildSummary, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with acting_stack(faulty_world, tmp_path_factory) as stack:
        yield stack


@pytest.fixture(scope="module")
def journey(
    faulty_world: BuildSummary, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A stack of its own, so the candidate sees the fault before anything was shipped."""
    with acting_stack(faulty_world, tmp_path_factory) as stack:
        yield stack


def _served(stack: Stack, customers: list[int]) -> pl.DataFrame:
    rows = predictions(stack, customers)
    return pl.DataFrame(
        {
            "customer_id": [r["customer_id"] for r in rows],
            "score": [r["score"] for r in rows],
            "threshold": [r["threshold"] for r in rows],
            "decision": [r["decision"] for r in rows],
            FEATURE: [r["features"][FEATURE] for r in rows],
        }
    )


def _snapshot(paths: WorldPaths, at: dt.datetime) -> pl.DataFrame:
    _, path = [s for s in deploy.online_snapshots(paths.online_store) if s[0] <= at][-1]
    return pl.read_parquet(path)


def _policy(paths: WorldPaths) -> dict[str, list[float]]:
    """Each imputed feature's fill values, oldest first: the first is the column mean the policy
    began with."""
    with duckdb.connect(str(paths.duckdb), read_only=True) as con:
        rows = con.execute(
            "SELECT feature, list(fill_value ORDER BY effective_from) "
            "FROM feature_store.imputation_policy GROUP BY feature"
        ).fetchall()
    return dict(rows)


def test_actions_change_what_the_live_model_serves_toward_the_control_world(
    acting: Stack, control_world: BuildSummary
) -> None:
    paths, control = WorldPaths(acting.world), WorldPaths(control_world.root)
    now = model_now(acting)
    policy = _policy(paths)
    fills = policy[FEATURE]
    assert len(fills) >= 2, "the fault's wrong fill value is in the policy"
    faulty = _snapshot(paths, now)
    customers = (faulty.filter(pl.col(FEATURE).is_in(fills)).sort("customer_id").head(AFFECTED))[
        "customer_id"
    ].to_list()
    assert len(customers) == AFFECTED

    # What the same customers' rows hold in the control world at the same time, scored by the
    # model this stack serves: where the live symptom should move back to.
    record = deploy.read_model_deployment(paths.deploy)
    model = registry.load_model(paths.mlflow, record.model_uri)
    truth = (
        _snapshot(control, now).filter(pl.col("customer_id").is_in(customers)).sort("customer_id")
    )
    assert truth["customer_id"].to_list() == customers
    truth = truth.with_columns(
        pl.Series(
            "control_score", model.predict_proba(truth.select(record.features).to_numpy())[:, 1]
        )
    )

    def gaps(served: pl.DataFrame) -> tuple[float, float]:
        """How far the served rows are from control: the feature's mean absolute difference,
        and the bias of the mean score (the fault makes these customers look safe)."""
        joined = served.join(truth, on="customer_id", suffix="_control")
        feature = (joined[FEATURE] - joined[f"{FEATURE}_control"]).abs().mean()
        score = abs(joined["score"].mean() - joined["control_score"].mean())  # type: ignore[operator]
        return float(feature), float(score)  # type: ignore[arg-type]

    before = _served(acting, customers)
    feature_gap, score_gap = gaps(before)
    assert feature_gap > 0 and score_gap > 0

    # An action that does not touch the cause: the scores and features stay; decisions follow
    # the new threshold once it is in effect.
    lower = round(record.threshold / 2, 4)
    act(acting, SET_THRESHOLD, {"threshold": lower})
    assert _served(acting, customers)["threshold"].unique().to_list() == [record.threshold]
    forward(acting, 0.25)
    moved = _served(acting, customers)
    assert moved["score"].to_list() == before["score"].to_list()
    assert gaps(moved) == (feature_gap, score_gap)
    assert moved["threshold"].unique().to_list() == [lower]
    assert moved["decision"].to_list() == (moved["score"] >= lower).to_list()

    # The mitigation: every feature the wrong refresh touched back to the column mean the policy
    # began with. Nothing changes until the online store is reloaded with them; then the symptom
    # moves toward control.
    mean = fills[0]
    for feature, values in policy.items():
        if len(values) > 1:
            applied = act(acting, SET_FILL, {"feature": feature, "fill_value": values[0]})
    logged = (
        "SELECT count(*) FROM telemetry.logs WHERE event = 'change_applied' "
        f"AND attrs LIKE '%{applied['id']}%'"
    )
    assert acting.scalar(logged) == 0
    assert gaps(_served(acting, customers)) == (feature_gap, score_gap)
    forward(acting, 1.0)
    after = _served(acting, customers)
    assert np.allclose(after[FEATURE].to_numpy(), mean)
    fixed_feature_gap, fixed_score_gap = gaps(after)
    assert fixed_feature_gap < feature_gap
    assert fixed_score_gap < score_gap / 2
    until(lambda: acting.scalar(logged) == 1, "the change's progress in the logs")

    # The next online-store load (04:00) runs as the clock passes it, and keeps the change: the
    # customers it holds at the fill value are served the one set from the console.
    loads = (
        "SELECT count(*) FROM ops.materialization_runs "
        f"WHERE materialized_at > TIMESTAMP '{now.isoformat()}'"
    )
    assert acting.scalar(loads) == 0
    forward(acting, 3.0)
    until(lambda: acting.scalar(loads) >= 1, "the 04:00 load recorded")
    later = model_now(acting)
    next_day = _snapshot(paths, later)
    assert next_day["materialized_at"].max() > faulty["materialized_at"].max()
    refilled = (next_day.filter(pl.col(FEATURE).is_in(fills)).sort("customer_id").head(AFFECTED))[
        "customer_id"
    ].to_list()
    assert np.allclose(_served(acting, refilled)[FEATURE].to_numpy(), mean)
    # The supervisor follows the moved clock: a restart resumes from there.
    heartbeat = acting.world / "run" / HEARTBEAT_FILE
    until(
        lambda: dt.datetime.fromisoformat(heartbeat.read_text().strip()) >= later,
        "the supervisor's heartbeat at the forwarded time",
        timeout=10,
    )

    # The review judges both by the answer key, and times the first mitigation.
    review = acting_review(acting)
    # Halving the threshold more than doubles the list, further from the plan than the fault
    # took it: harmful.
    assert {a["id"]: a["verdict"] for a in review["actions"]} == {
        SET_THRESHOLD: "harmful",
        SET_FILL: "mitigates",
    }
    assert review["action_summary"]["time_to_first_mitigation_s"] is not None


def test_a_second_session_is_refused_on_a_stack_with_actions_on(acting: Stack) -> None:
    for actions in ("on", "off"):
        made = subprocess.run(
            [SANDBOX, "session", "create", str(acting.world), "--actions", actions],
            capture_output=True,
            text=True,
        )
        assert made.returncode != 0
        assert "has actions on" in made.stdout + made.stderr


def test_the_ops_console_and_the_review_in_a_browser(acting: Stack, browser: Browser) -> None:
    """The candidate applies an action from the console's form; the interviewer's review shows it
    with its verdict and moves time forward."""
    errors: list[str] = []
    candidate = browser.new_context().new_page()
    candidate.on("pageerror", lambda error: errors.append(str(error)))
    candidate.goto(acting.candidate_url)
    candidate.goto(acting.url + "/ops")
    form = candidate.locator('form[data-action="set-decision-threshold"]')
    form.locator('input[name="threshold"]').fill("0.3")
    form.get_by_role("button", name="Apply").click()
    expect(candidate.locator('[data-result="set-decision-threshold"]')).to_contain_text(
        "in effect from", timeout=WAIT_MS
    )
    expect(candidate.locator("#applied li").first).to_contain_text("set-decision-threshold")
    assert not any(v in candidate.content() for v in ("mitigates", "harmful", "no effect"))

    interviewer = browser.new_context().new_page()
    interviewer.on("pageerror", lambda error: errors.append(str(error)))
    interviewer.goto(acting.interviewer_url)
    expect(interviewer.locator(".review[data-ready]")).to_be_attached(timeout=WAIT_MS)
    row = interviewer.locator('#actions-table tr[data-action="set-decision-threshold"]').last
    expect(row.locator("[data-verdict]")).to_have_text("harmful")  # it flags almost nobody
    expect(row.locator(".verdict-note")).to_contain_text("further from the planned 10%")
    before = model_now(acting)
    interviewer.get_by_role("button", name="+1 h").click()
    expect(interviewer.locator("#forward-line")).to_contain_text("simulated time now")
    until(lambda: model_now(acting) >= before + dt.timedelta(hours=1), "the clock an hour on")
    assert not errors


def test_the_next_daily_batch_runs_with_the_change_and_takes_the_worlds_place(
    acting: Stack,
) -> None:
    """From the first 06:00 after a change took effect, the day's batch is the live model
    server's: its rows and lines are what the candidate sees, at the threshold set, the
    world's batch of that day is gone from their views, and that night's drift report reads
    the live rows."""
    act(acting, SET_THRESHOLD, {"threshold": 0.05})
    act(acting, SET_FILL, {"feature": FEATURE, "policy": "training-mean"})
    now = forward(acting, 7.0)
    batch = now.replace(hour=6, minute=0, second=0, microsecond=0)
    if batch > now:
        batch -= dt.timedelta(days=1)
    served = float(
        HTTP.get(
            acting.url + "/services/model/metadata", headers=acting.candidate, timeout=10
        ).json()["threshold"]
    )
    assert served == 0.05
    day_rows = (
        "SELECT count(*), count(DISTINCT threshold), max(threshold), avg(decision::INT) "
        "FROM serving.predictions WHERE source = 'batch' "
        f"AND request_ts >= TIMESTAMP '{batch}' AND request_ts < TIMESTAMP '{batch}' + INTERVAL 1 HOUR"
    )
    rows, thresholds, threshold, flagged = until(
        lambda: (found := acting.sql(day_rows)["rows"][0])[0] and found, "the day's batch rows"
    )
    assert (thresholds, threshold) == (1, 0.05)
    lines = acting.sql(
        "SELECT message FROM telemetry.logs WHERE service = 'batch-scoring' "
        f"AND ts >= TIMESTAMP '{batch}' AND ts < TIMESTAMP '{batch}' + INTERVAL 1 HOUR ORDER BY ts"
    )["rows"]
    assert lines[0][0] == f"daily churn scoring started for {rows} customers"
    assert len(lines) == 2
    # The world's own batch of that day scored at its own threshold, and is not shown.
    with duckdb.connect(str(WorldPaths(acting.world).duckdb), read_only=True) as con:
        world = con.execute(
            "SELECT count(*), max(threshold), avg(decision::INT) FROM serving.predictions "
            "WHERE source = 'batch' AND request_ts >= $at AND request_ts < $at + INTERVAL 1 HOUR",
            {"at": batch},
        ).fetchone()
    assert world is not None and world[0] > 0 and world[1] != 0.05
    assert abs(world[0] - rows) <= rows * 0.01  # the same customers, about
    assert flagged != world[2]

    # That night's drift report reads the batch the candidate sees: its mean of the served
    # feature is the live batch's (the fill value set above), not the world's.
    forward(acting, 19.0)
    live_mean = acting.scalar(
        f"SELECT avg({FEATURE}) FROM serving.predictions WHERE source = 'batch' "
        f"AND request_ts >= TIMESTAMP '{batch.date()}' "
        f"AND request_ts < TIMESTAMP '{batch.date()}' + INTERVAL 1 DAY"
    )
    ((reported,),) = until(
        lambda: acting.sql(
            "SELECT current_mean FROM monitoring.drift_feature_daily "
            f"WHERE report_date = DATE '{batch.date()}' AND feature = '{FEATURE}'"
        )["rows"],
        "the night's drift report",
        timeout=60,
    )
    with duckdb.connect(str(WorldPaths(acting.world).duckdb), read_only=True) as con:
        world_mean = con.execute(
            f"SELECT avg({FEATURE}) FROM serving.predictions WHERE source = 'batch' "
            "AND request_ts::DATE = $day",
            {"day": batch.date()},
        ).fetchone()[0]  # type: ignore[index]
    assert abs(reported - live_mean) < 1e-3 * abs(live_mean), (reported, live_mean)
    assert abs(reported - world_mean) > 0.01 * abs(world_mean), (reported, world_mean)


ONSET = dt.datetime(2026, 3, 16)  # the default world's fault begins here (its answer key)
SAMPLE = 1000  # at most this many customers served the wrong fill, checked before and after the fix


def _levels(
    page: Page, url: str, board: str, panel: str, query: str
) -> tuple[float, float, list[tuple[dt.datetime, float]]]:
    """A drawn dashboard panel's level before the fault, over the two days before live time
    (the fault at full ramp), and its points, oldest first: every trace's together."""
    page.goto(f"{url}/dashboards/{board}?{query}")
    page.wait_for_selector("body[data-dashboard-ready='true']", timeout=WAIT_MS)
    traces = page.evaluate(
        """(id) => document.querySelector(`[data-panel="${id}"] .js-plotly-plot`).data
             .map((t) => ({ x: t.x, y: t.y }))""",
        panel,
    )
    points = sorted(
        (dt.datetime.fromisoformat(str(x)), float(y))
        for t in traces
        for x, y in zip(t["x"], t["y"], strict=True)
        if y is not None
    )
    live = dt.datetime(2026, 4, 13)
    before = [y for x, y in points if x < ONSET]
    faulty = [y for x, y in points if live - dt.timedelta(days=2) <= x < live]
    assert before and faulty
    return float(np.mean(before)), float(np.mean(faulty)), points


def test_a_candidate_ships_the_fix_and_the_interviewer_sees_it_recover(
    journey: Stack, browser: Browser
) -> None:
    """The candidate finds the wrong fill value in the SQL console, checks the customers served
    it, and sets it back from the ops console; the interviewer moves time on; the candidate's
    second check of the same customers (as a script would) shows on Feature health and Model
    outputs back toward the level before the fault, and the review shows the action, its verdict
    and the recovery chart."""
    errors: list[str] = []
    candidate = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    candidate.on("pageerror", lambda error: errors.append(str(error)))
    candidate.goto(journey.candidate_url)

    # Finding it: the source column arrives empty, and the fill values changed at onset.
    candidate.goto(journey.url + "/sql")
    editor = candidate.locator("#sql")
    for query, column in (
        (
            "SELECT date_trunc('week', activity_date) AS week,\n"
            "       avg((minutes_watched IS NULL)::INT) AS null_share\n"
            "FROM raw.viewing_activity GROUP BY 1 ORDER BY 1",
            "null_share",
        ),
        (
            "SELECT feature, fill_value, effective_from FROM feature_store.imputation_policy\n"
            "ORDER BY feature, effective_from",
            "fill_value",
        ),
    ):
        editor.fill(query)
        editor.press("Control+Enter")
        expect(candidate.locator("#grid thead")).to_contain_text(column, timeout=WAIT_MS)
    rows = candidate.locator("#grid tbody tr").all()
    policy: dict[str, list[float]] = {}
    for row in rows:
        feature, fill, _ = row.locator("td").all_inner_texts()
        policy.setdefault(feature, []).append(float(fill))
    refreshed = {f: v[0] for f, v in policy.items() if len(v) > 1}
    assert FEATURE in refreshed

    # Before shipping, the candidate scores the customers the store holds at a wrong fill value
    # (as a script would): their check is the first point of its own on Model outputs.
    paths = WorldPaths(journey.world)
    started = model_now(journey)
    held = _snapshot(paths, started)
    # Those the store still holds after the next load too: the same customers checked twice.
    kept = _snapshot(paths, started + dt.timedelta(hours=8))["customer_id"].to_list()
    customers = (
        held.filter(
            (pl.col(FEATURE) == _policy(paths)[FEATURE][-1]) & pl.col("customer_id").is_in(kept)
        )
        .sort("customer_id")
        .head(SAMPLE)["customer_id"]
        .to_list()
    )
    assert len(customers) >= SAMPLE // 2
    _served(journey, customers)
    mine = "SELECT count(*) FROM serving.predictions WHERE client = 'workspace'"
    until(lambda: journey.scalar(mine) >= len(customers), "the first checks in the telemetry")

    # Shipping it: every refreshed feature back to the fill value it had before.
    candidate.goto(journey.url + "/ops")
    form = candidate.locator(f'form[data-action="{SET_FILL}"]')
    for feature, value in refreshed.items():
        form.locator('select[name="feature"]').select_option(feature)
        form.locator('input[name="fill_value"]').fill(str(value))
        form.get_by_role("button", name="Apply").click()
        expect(candidate.locator(f'[data-result="{SET_FILL}"]')).to_contain_text(
            "in effect from", timeout=WAIT_MS
        )
        expect(candidate.locator("#applied li").first).to_contain_text(f"feature={feature}")

    # The interviewer moves simulated time on, past the change's delay.
    interviewer = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    interviewer.on("pageerror", lambda error: errors.append(str(error)))
    interviewer.goto(journey.interviewer_url)
    expect(interviewer.locator(".review[data-ready]")).to_be_attached(timeout=WAIT_MS)
    before = model_now(journey)
    interviewer.get_by_role("button", name="+6 h").click()
    expect(interviewer.locator("#forward-line")).to_contain_text("simulated time now")
    until(lambda: model_now(journey) >= before + dt.timedelta(hours=6), "the clock six hours on")
    checked_at = model_now(journey)

    # The candidate checks the same customers again.
    served = _served(journey, customers)
    assert len(served) == len(customers)
    mine = (
        "SELECT count(*) FROM serving.predictions WHERE client = 'workspace' "
        f"AND request_ts >= TIMESTAMP '{checked_at.isoformat()}'"
    )
    until(lambda: journey.scalar(mine) >= len(customers), "the checks in the telemetry")

    # Feature health: the served feature's latest point is back near its level before the
    # fault. Model outputs: the checks' mean score, far below that level before the fix, is
    # back toward it after.
    bucket = dt.timedelta(hours=3)  # the dashboards' whole range, as they open
    prefault, faulty, points = _levels(
        candidate, journey.url, "feature-health", "served-feature-mean", f"feature={FEATURE}"
    )
    at, latest = points[-1]
    assert at > checked_at - bucket
    assert abs(latest - prefault) < abs(faulty - prefault) / 2, (prefault, faulty, latest)
    prefault, faulty, points = _levels(
        candidate, journey.url, "model-outputs", "mean-score-by-version", "source=online"
    )
    at, latest = points[-1]
    assert at > checked_at - bucket
    (unfixed,) = [y for x, y in points if x <= started < x + bucket]
    # Served the wrong fill they looked far safer than customers did before the fault; with the
    # fill set back, their scores come back toward that level (measured: about half the way).
    assert abs(latest - prefault) < abs(unfixed - prefault) * 0.75, (prefault, unfixed, latest)

    # The review: the actions with their verdict, and the recovery chart of the symptom.
    for feature in refreshed:
        rows = interviewer.locator(f'#actions-table tr[data-action="{SET_FILL}"]', has_text=feature)
        expect(rows.first.locator("[data-verdict]")).to_have_text("mitigates", timeout=WAIT_MS)
        expect(rows).to_have_count(1)
    chart = interviewer.locator('[data-recovery="feature-nulls-wrong-mean"]')
    served_plot = chart.locator(f'[data-series="served_{FEATURE}"].js-plotly-plot')
    expect(served_plot).to_be_attached(timeout=WAIT_MS)
    expect(chart.locator('[data-levels] [data-level="after"]').first).not_to_have_text("—")
    marked = interviewer.evaluate(
        """(el) => el.layout.annotations.map((a) => a.text)""",
        served_plot.element_handle(),
    )
    assert any(SET_FILL in m for m in marked)

    review = acting_review(journey)
    (recovery,) = review["actions_recovery"]
    assert recovery["fault_id"] == "feature-nulls-wrong-mean"
    assert recovery["own_rows"] >= len(customers)
    assert "mitigates" in {m["verdict"] for m in recovery["marks"] if m["action"] == SET_FILL}
    by_id = {s["id"]: s for s in recovery["series"]}
    for s in by_id.values():
        assert None not in (s["baseline"], s["before"], s["after"]), s
    s = by_id[f"served_{FEATURE}"]
    assert abs(s["after"] - s["baseline"]) < abs(s["before"] - s["baseline"]) / 2, s
    assert s["recovered"] > 0.5, s  # what the page says in words
    said = chart.locator(f'[data-levels="served_{FEATURE}"] [data-recovered]')
    expect(said).to_contain_text("of the way to the level before the fault")
    assert not any(v in candidate.content() for v in ("mitigates", "harmful", "actions_recovery"))
    assert not errors
