"""Every fault in the catalog mitigated on a running stack, as a candidate would do it, and its
live symptom measured against the same-seed control world's.

For each world of `tests/conftest.FAULT_WORLDS`, a stack whose only session has actions on. At
20:00 of the first live day (the evening peak, so the at-peak symptoms have rows) the test drives
the rows the planted faults' symptoms read: the model server's answers for a fixed sample of
customers and the retrieval service's for a fixed sample of tickets, as the candidate's own calls.
Each symptom is measured with the SQL its answer key declares (`Symptom`, what the review charts),
over those rows, through the candidate's SQL console. Then one fault's mitigating action goes in
through `POST /api/actions` with the parameters a candidate would choose from what the console
shows, the interviewer moves simulated time on `HOURS`, and the symptoms are measured again. The
control world's stack is driven the same way at the same simulated times. The gap to control
must close by the share `MITIGATIONS` states for the fault; the review must credit the action.
A world's faults are mitigated one after another on its stack, each day at 20:00. Before them an
action beside the point of every planted fault leaves each symptom where it was; after them a
harmful action (`HARMS`) leaves its fault's symptom further off than the fault did.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox import scenario
from sandbox.actions.catalog import (
    COUNT_AS_FAILED,
    MOVE_ALIAS,
    PAUSE_JOB,
    PIN_VERSION,
    QUARANTINE_RELEASE,
    REBUILD_INDEX,
    ROLLBACK,
    SET_DRIFT_WINDOW,
    SET_FILL,
    SET_THRESHOLD,
)
from sandbox.actions.deployment import deploy_history
from sandbox.faults.base import Symptom
from sandbox.faults.registry import catalog
from sandbox.layout import WorldPaths
from sandbox.pipeline import deploy
from sandbox.review.actions import HARMFUL, HELPS, NO_EFFECT, verdict_of
from sandbox.testing import Worlds, connect
from sandbox.world.build import BuildSummary
from tests.conftest import FAULT_WORLDS, scenario_for
from tests.services.acting import act, acting_stack, forward, model_now, predictions, review
from tests.services.running import Stack
from tests.waiting import until

HOURS = 24  # simulated hours from one fault's action to its measurement (and the next action)
PEAK = 20.0  # the hour of each measurement
OWN_ROWS = dt.timedelta(minutes=10)  # simulated: the driven rows of a measurement fall in it
CUSTOMERS = 2000  # at most this many customers scored at each measurement...
BATCH = 1000  # ...this many a request
TICKETS = 60  # the tickets searched at each measurement
K = 5


@dataclasses.dataclass(frozen=True)
class Mitigation:
    """A fault's mitigating action as a candidate applies it: `params` (each dict one request)
    from what the stack shows them, the symptom series judged, and the share of its gap to
    control that must close within `HOURS`."""

    action: str
    params: Callable[[Stack, str], list[dict[str, Any]]]
    series: str
    closes: float


def _fixed(*params: dict[str, Any]) -> Callable[[Stack, str], list[dict[str, Any]]]:
    return lambda stack, fault_id: list(params)


def _fills(stack: Stack, fault_id: str) -> list[dict[str, Any]]:
    """Each feature whose fill value changed, back to its training-time mean."""
    rows = stack.sql(
        "SELECT feature FROM feature_store.imputation_policy GROUP BY feature "
        "HAVING count(DISTINCT fill_value) > 1 ORDER BY feature"
    )["rows"]
    assert rows
    return [{"feature": f, "policy": "training-mean"} for (f,) in rows]


def _budgeted_threshold(stack: Stack, fault_id: str) -> list[dict[str, Any]]:
    """The threshold that flags, of the last production day's batch scores, the share the batch
    flagged in the week before the trouble began (the fault's onset)."""
    onset = _onset(stack.world, fault_id)
    batch = "SELECT * FROM serving.predictions WHERE source = 'batch'"
    share = stack.scalar(
        f"SELECT avg(decision::INTEGER) FROM ({batch}) "
        f"WHERE request_ts >= TIMESTAMP '{onset - dt.timedelta(days=7)}' "
        f"AND request_ts < TIMESTAMP '{onset}'"
    )
    last = _live_start(stack.world) - dt.timedelta(days=1)
    threshold = stack.scalar(
        f"SELECT quantile_cont(score, {1 - float(share)!r}) FROM ({batch}) "
        f"WHERE request_ts::DATE = DATE '{last.date()}'"
    )
    return [{"threshold": round(float(threshold), 6)}]


def _inflated_release(stack: Stack, fault_id: str) -> list[dict[str, Any]]:
    """The app release whose viewing rows report the most minutes per session this week."""
    device, version = stack.sql(
        "SELECT device, app_version FROM raw.viewing_activity "
        "WHERE activity_date >= (SELECT max(activity_date) - 6 FROM raw.viewing_activity) "
        "GROUP BY ALL HAVING count(*) >= 100 "
        "ORDER BY sum(minutes_watched) / sum(sessions) DESC LIMIT 1"
    )["rows"][0]
    return [{"device": device, "app_version": version}]


def _new_status(stack: Stack, fault_id: str) -> list[dict[str, Any]]:
    """The billing status first reported in the last weeks, none before."""
    (status,) = stack.sql(
        "SELECT status FROM raw.billing_events GROUP BY status "
        "HAVING min(event_ts) > (SELECT min(event_ts) + INTERVAL 14 DAY FROM raw.billing_events)"
    )["rows"][0]
    return [{"status": status}]


def _champion(stack: Stack, fault_id: str) -> list[dict[str, Any]]:
    """The version the registry's champion alias names, as the model server's metadata shows."""
    meta = httpx.get(stack.url + "/services/model/metadata", headers=stack.candidate, timeout=10)
    return [{"version": meta.json()["aliases"]["champion"]}]


MODEL_SERVER = {"service": "model-server"}
FEATURE_SERVER = {"service": "feature-server"}

# fault id -> how it is mitigated here, in the order a world's faults are taken.
MITIGATIONS: dict[str, Mitigation] = {
    "feature-nulls-wrong-mean": Mitigation(SET_FILL, _fills, "served_avg_daily_minutes_7d", 0.5),
    "label-leakage": Mitigation(ROLLBACK, _fixed(MODEL_SERVER), "mean_score", 0.5),
    "embedding-index-mismatch": Mitigation(REBUILD_INDEX, _fixed({}), "mean_top1_score", 0.5),
    "metric-series-dropped": Mitigation(
        ROLLBACK, _fixed(MODEL_SERVER), "failed_share_at_peak", 0.9
    ),
    "training-time-travel": Mitigation(ROLLBACK, _fixed(MODEL_SERVER), "mean_score", 0.5),
    "retrain-immature-labels": Mitigation(ROLLBACK, _fixed(MODEL_SERVER), "mean_score", 0.3),
    "upstream-unit-change": Mitigation(
        QUARANTINE_RELEASE, _inflated_release, "served_avg_daily_minutes_7d", 0.5
    ),
    "online-offline-skew": Mitigation(
        ROLLBACK, _fixed(FEATURE_SERVER), "served_sessions_trend", 0.5
    ),
    "served-version-mismatch": Mitigation(PIN_VERSION, _champion, "mean_score", 0.5),
    "serving-default-fallback": Mitigation(
        ROLLBACK, _fixed(MODEL_SERVER), "zero_vector_share_at_peak", 0.9
    ),
    "stale-decision-threshold": Mitigation(
        SET_THRESHOLD, _budgeted_threshold, "flagged_share", 0.5
    ),
    "rolling-drift-reference": Mitigation(
        SET_DRIFT_WINDOW, _fixed({"days": 7, "fixed": True}), "reference_mean", 0.5
    ),
    "duplicate-billing-events": Mitigation(
        SET_THRESHOLD, _budgeted_threshold, "flagged_share", 0.5
    ),
    "online-store-stale": Mitigation(
        ROLLBACK, _fixed(FEATURE_SERVER), "served_feature_age_days", 0.5
    ),
    # A threshold moves every customer's decision, not only the migrated method's: it closes
    # a part of their gap.
    "payment-status-renamed": Mitigation(
        COUNT_AS_FAILED, _new_status, "served_payment_failures_30d", 0.5
    ),
}


def _fills_further_off(replies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each fill the mitigation set (the training mean), set to three times that instead."""
    return [
        {"feature": r["params"]["feature"], "fill_value": round(3 * r["params"]["fill_value"], 4)}
        for r in replies
    ]


# fault id -> an action that makes its symptom worse than the fault left it, applied after its
# mitigation (as the gateway answered it): (action, its requests from those answers).
HARMS: dict[str, tuple[str, Callable[[list[dict[str, Any]]], list[dict[str, Any]]]]] = {
    "feature-nulls-wrong-mean": (SET_FILL, _fills_further_off),
}


def _world_faults(name: str) -> list[str]:
    """The faults a fault world plants, in the order they are mitigated."""
    order = list(MITIGATIONS)
    return sorted((f.id for f in scenario_for(name).faults), key=order.index)


def _answer_key(world: Path) -> dict[str, Any]:
    return json.loads(WorldPaths(world).answer_key.read_text())


def _live_start(world: Path) -> dt.datetime:
    calendar = scenario.load(WorldPaths(world).scenario).world.calendar()
    return calendar.midnight(calendar.last_production_day + 1)


def _onset(world: Path, fault_id: str) -> dt.datetime:
    spec = scenario.load(WorldPaths(world).scenario)
    [fault] = [f for f in spec.faults if f.id == fault_id]
    return spec.world.calendar().midnight(fault.params.onset_day)


def _rollbacks_past(world: Path, fault_id: str) -> int:
    """How many model-server rollbacks, from the world as left, go back past what `fault_id`
    deployed: its rollout of the server's code or configuration, else its model release."""
    paths = WorldPaths(world)
    spec = scenario.load(paths.scenario)
    calendar = spec.world.calendar()
    history = deploy_history(paths.duckdb, spec.fault_set.rollouts(calendar, "model-server"))
    [fault] = [f for f in spec.fault_set.faults if f.id == fault_id]
    own = [r.at for r in fault.rollouts(calendar) if r.service == "model-server"]
    if own:
        first = next(i for i, d in enumerate(history) if d.config_as_of >= min(own))
    else:
        served = deploy.read_model_deployment(paths.deploy).model_version
        first = next(i for i, d in enumerate(history) if d.version == served)
    return len(history) - first


@dataclasses.dataclass(frozen=True)
class Sample:
    customers: list[int]
    tickets: list[str]


@pytest.fixture(scope="module")
def sample(worlds: Worlds, control_world: BuildSummary) -> Sample:
    """The same customers and tickets for every stack: customers the online store holds on
    every live day in every world of the seed (the batch scored them on the first live day and
    the last), and tickets spread over the control world's."""
    calendar = scenario.load(WorldPaths(control_world.root).scenario).world.calendar()
    days = {
        "first": calendar.date(calendar.last_production_day + 1),
        "last": calendar.date(calendar.last_visible_day),
    }
    held: set[int] | None = None
    for built in [control_world, *(worlds.get(name) for name in FAULT_WORLDS)]:
        con = connect(built)
        try:
            scored = {
                c
                for (c,) in con.execute(
                    "SELECT customer_id FROM serving.predictions WHERE source = 'batch' "
                    "GROUP BY customer_id "
                    "HAVING count(*) FILTER (WHERE request_ts::DATE = $first) > 0 "
                    "AND count(*) FILTER (WHERE request_ts::DATE = $last) > 0",
                    days,
                ).fetchall()
            }
            if built is control_world:
                texts = [
                    t
                    for (t,) in con.execute(
                        "SELECT body FROM raw.support_tickets WHERE body IS NOT NULL "
                        "ORDER BY ticket_id"
                    ).fetchall()
                ]
        finally:
            con.close()
        held = scored if held is None else held & scored
    assert held
    return Sample(sorted(held)[:CUSTOMERS], texts[:: max(1, len(texts) // TICKETS)][:TICKETS])


def _drive(stack: Stack, sample: Sample, searches: bool) -> None:
    """The candidate's own calls the symptoms are measured over."""
    for start in range(0, len(sample.customers), BATCH):
        predictions(stack, sample.customers[start : start + BATCH])
    if searches:
        with httpx.Client(base_url=stack.url, headers=stack.candidate, timeout=10) as client:
            for text in sample.tickets:
                reply = client.post("/services/retrieval/search", json={"text": text, "k": K})
                assert reply.status_code == 200, reply.text


def _level(stack: Stack, symptom: Symptom, at: dt.datetime) -> float | None:
    """The symptom at `at`: over the candidate's own rows of the minutes from `at` on, or, for
    a source they add none to, over the rows of the last whole day before it."""
    when = f"({symptom.time})::TIMESTAMP"
    if symptom.own:
        start, end, own = at, at + OWN_ROWS, symptom.own
    else:
        day = dt.datetime.combine(at.date(), dt.time())
        start, end, own = day - dt.timedelta(days=1), day, "TRUE"
    rows = (
        f"FROM {symptom.source} WHERE ({symptom.where}) AND ({own}) "
        f"AND {when} >= TIMESTAMP '{start}' AND {when} < TIMESTAMP '{end}'"
    )
    # A job's rows (a nightly report) are written once the forwarded clock has passed its run.
    until(lambda: stack.scalar(f"SELECT count(*) {rows}"), f"rows of {symptom.id}")
    return stack.scalar(f"SELECT {symptom.value} {rows}")


def _measure(
    stack: Stack, sample: Sample, symptoms: list[Symptom], at: dt.datetime
) -> dict[Symptom, float | None]:
    """Every symptom at `at`, once the driven rows are all in the console."""
    searched = any(s.source == "retrieval.search_log" for s in symptoms)
    _drive(stack, sample, searched)
    own = (
        "SELECT count(*) FROM serving.predictions WHERE client = 'workspace' "
        f"AND request_ts >= TIMESTAMP '{at}'"
    )
    until(lambda: stack.scalar(own) >= len(sample.customers) * 0.9, "the scored sample")
    if searched:
        mine = (
            "SELECT count(*) FROM retrieval.search_log WHERE client = 'workspace' "
            f"AND request_ts >= TIMESTAMP '{at}'"
        )
        until(lambda: stack.scalar(mine) >= len(sample.tickets), "the searched sample")
    return {s: _level(stack, s, at) for s in symptoms}


def _services_now(stack: Stack) -> dt.datetime:
    """The simulated now as both the model server and the retrieval service have it."""
    reply = httpx.get(stack.url + "/services/retrieval/health", headers=stack.candidate, timeout=10)
    return min(model_now(stack), dt.datetime.fromisoformat(reply.json()["now"]))


def _go_to(stack: Stack, at: dt.datetime, now: dt.datetime) -> dt.datetime:
    """Forward to `at` as the interviewer, from the stack's simulated `now`."""
    return forward(stack, (at - now).total_seconds() / 3600, _services_now)


def _declared(world: Path) -> dict[str, list[Symptom]]:
    """Each planted fault's symptoms, from the world's answer key."""
    return {
        k["fault_id"]: [Symptom.model_validate(s) for s in k.get("symptoms", [])]
        for k in _answer_key(world)["faults"]
    }


def _judged(world: Path) -> list[Symptom]:
    """The symptoms the test judges the world's faults by."""
    return [
        s
        for fault_id, symptoms in _declared(world).items()
        for s in symptoms
        if s.id == MITIGATIONS[fault_id].series
    ]


Levels = dict[tuple[Symptom, dt.datetime], float | None]


def _times(world: Path, steps: int) -> list[dt.datetime]:
    """When symptoms are measured: 20:00 and 20:45 of the first live day (an action beside the
    point goes in between; the same hour of the peak), then `HOURS` on each time, one per
    fault mitigated and per harm done."""
    calendar = scenario.load(WorldPaths(world).scenario).world.calendar()
    first = calendar.last_production_day + 1
    return [
        calendar.at(first, PEAK),
        calendar.at(first, PEAK + 0.75),
        *(calendar.at(first, PEAK) + dt.timedelta(hours=HOURS * d) for d in range(1, steps + 1)),
    ]


def _steps(name: str) -> int:
    """The days a fault world's test goes on after the first: a mitigation or a harm each."""
    faults = _world_faults(name)
    return len(faults) + sum(f in HARMS for f in faults)


@pytest.fixture(scope="module")
def control_levels(
    worlds: Worlds,
    control_world: BuildSummary,
    sample: Sample,
    tmp_path_factory: pytest.TempPathFactory,
) -> Levels:
    """The control world's stack driven and measured at every time any fault world is, for
    every symptom those worlds' faults are judged by."""
    symptoms = sorted(
        {s for name in FAULT_WORLDS for s in _judged(worlds.get(name).root)}, key=lambda s: s.id
    )
    steps = max(_steps(name) for name in FAULT_WORLDS)
    measured: Levels = {}
    with acting_stack(control_world, tmp_path_factory) as stack:
        now = model_now(stack)
        for at in _times(stack.world, steps):
            now = _go_to(stack, at, now)
            measured |= {
                (s, at): level for s, level in _measure(stack, sample, symptoms, at).items()
            }
    return measured


# Actions beside the point of every fault a world plants, each with the symptoms it must leave
# alone: the first whose verdict in the world's answer key is "no effect" is applied.
# (Pausing the drift monitor also spares a stack whose symptoms no report reads the nightly runs.)
BESIDE: tuple[tuple[str, dict[str, Any]], ...] = (
    (PAUSE_JOB, {"job": "drift-monitor"}),
    (MOVE_ALIAS, {"alias": "shadow", "version": "1"}),
)


def _beside(world: Path, judged: list[Symptom]) -> tuple[str, dict[str, Any]]:
    """An action that does nothing to what the world plants (its answer key says so) and
    changes no row a judged symptom reads."""
    key = _answer_key(world)
    reads_drift = any(s.source.startswith("monitoring.") for s in judged)
    return next(
        (action, params)
        for action, params in BESIDE
        if verdict_of(action, key, params)[0] == NO_EFFECT
        and not (reads_drift and params.get("job") == "drift-monitor")
    )


def test_every_fault_has_a_mitigation_here_that_its_answer_key_credits(worlds: Worlds) -> None:
    """The catalog's faults are each planted in a fault world and mitigated below, by an action
    their answer key says mitigates or fixes them, judged by a symptom it declares."""
    planted = {f: name for name in FAULT_WORLDS for f in _world_faults(name)}
    assert set(MITIGATIONS) == set(catalog()) <= set(planted)
    for fault_id, mitigation in MITIGATIONS.items():
        [key] = [
            k
            for k in _answer_key(worlds.get(planted[fault_id]).root)["faults"]
            if k["fault_id"] == fault_id
        ]
        assert key["actions"][mitigation.action] in HELPS, fault_id
        assert mitigation.series in {s["id"] for s in key["symptoms"]}, fault_id


def _gap(levels: Levels, control: Levels, symptom: Symptom, at: dt.datetime) -> float:
    """How far the symptom is from control's at `at`."""
    level, reference = levels[(symptom, at)], control[(symptom, at)]
    assert level is not None and reference is not None, (symptom.id, at)
    return abs(level - reference)


@pytest.mark.parametrize("world", list(FAULT_WORLDS))
def test_each_fault_mitigated_on_a_running_stack_moves_its_symptom_toward_control(
    world: str,
    worlds: Worlds,
    control_levels: Levels,
    sample: Sample,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """An action beside the point leaves the first fault's symptom where it was (its gap to
    control more than twice what the fault's mitigation leaves, and under twice what it was: the leakage
    world's scores move a third of their gap between calls on their own, the leaky input being
    read live); then each fault's mitigation closes its symptom's gap by its share; then a
    harmful action leaves it further off than the fault did."""
    built = worlds.get(world)
    faults = _world_faults(world)
    declared = _declared(built.root)
    judged = {f: next(s for s in declared[f] if s.id == MITIGATIONS[f].series) for f in faults}
    symptoms = list(judged.values())
    levels: Levels = {}
    replies: dict[str, list[dict[str, Any]]] = {}  # fault id -> its mitigation's 202 answers
    rollbacks = 0
    with acting_stack(built, tmp_path_factory) as stack:
        times = _times(stack.world, _steps(world))
        now = _go_to(stack, times[0], model_now(stack))

        def measure(at: dt.datetime) -> None:
            levels.update({(s, at): v for s, v in _measure(stack, sample, symptoms, at).items()})

        measure(times[0])
        beside = act(stack, *_beside(stack.world, symptoms))
        now = _go_to(stack, times[1], now)
        measure(times[1])

        for n, fault_id in enumerate(faults):
            mitigation = MITIGATIONS[fault_id]
            requests = mitigation.params(stack, fault_id)
            if requests == [MODEL_SERVER]:  # one request per deployment to go back past
                times_back = _rollbacks_past(stack.world, fault_id) - rollbacks
                assert times_back > 0, fault_id
                rollbacks += times_back
                requests = requests * times_back
            replies[fault_id] = [act(stack, mitigation.action, p) for p in requests]
            before, after = times[n + 1], times[n + 2]
            now = _go_to(stack, after, now)
            measure(after)
            symptom = judged[fault_id]
            was = _gap(levels, control_levels, symptom, before)
            left = _gap(levels, control_levels, symptom, after)
            assert left <= was * (1 - mitigation.closes), (fault_id, symptom.id, was, left, levels)
            if n == 0:  # (a later fault's symptom may show only once the one before is mended)
                # The action beside the point did not do what the mitigation did, nor harm.
                faulty = _gap(levels, control_levels, symptom, times[0])
                beside_it = _gap(levels, control_levels, symptom, times[1])
                assert 2 * left < beside_it < 2 * faulty, (fault_id, faulty, beside_it, left)

        harms: dict[str, list[str]] = {}
        for n, fault_id in enumerate(f for f in faults if f in HARMS):
            action, requests = HARMS[fault_id]
            harms[fault_id] = [act(stack, action, p)["id"] for p in requests(replies[fault_id])]
            after = times[len(faults) + 2 + n]
            now = _go_to(stack, after, now)
            measure(after)
            symptom = judged[fault_id]
            faulty = _gap(levels, control_levels, symptom, times[1])
            harmed = _gap(levels, control_levels, symptom, after)
            assert harmed > faulty, (fault_id, symptom.id, faulty, harmed, levels)

        # The review lists them in the order applied, each judged as the symptoms moved.
        listed = [a for a in review(stack)["actions"] if a["status"] == "applied"]
        ours = [
            beside["id"],
            *(r["id"] for answers in replies.values() for r in answers),
            *(i for ids in harms.values() for i in ids),
        ]
        assert len(listed) == len(ours)
        judged_by = dict(zip(ours, listed, strict=True))
        assert judged_by[beside["id"]]["verdict"] == NO_EFFECT

        def verdicts(fault_id: str, ids: list[str]) -> set[str]:
            return {
                v["verdict"] for i in ids for v in judged_by[i]["verdicts"] if v["id"] == fault_id
            }

        for fault_id, answers in replies.items():
            helped = verdicts(fault_id, [r["id"] for r in answers])
            assert helped & set(HELPS), (fault_id, helped, listed)
        for fault_id, ids in harms.items():
            assert verdicts(fault_id, ids) == {HARMFUL}, (fault_id, listed)
