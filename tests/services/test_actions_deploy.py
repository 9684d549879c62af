"""The ops console's deployment actions on a running stack: what the model server serves follows
a moved champion alias, a pinned version and a rollback from each one's effective time, measured
against the same-seed control world.

The leakage world's retrain (version 2) learned from a feature that leaks the label; served live,
it scores the same customers far from where the control world's model does (each call a little
differently: the leaky input is read at serving time). Going back to version 1 (trained before the
leak) moves the live scores back to control; a change that does not touch the served model leaves
them where they were.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import httpx
import polars as pl
import pytest

from sandbox.actions.catalog import MOVE_ALIAS, PIN_VERSION, ROLLBACK
from sandbox.layout import WorldPaths
from sandbox.pipeline import deploy, registry
from sandbox.testing import Worlds
from sandbox.world.build import BuildSummary
from tests.http_client import HTTP
from tests.services.acting import act, acting_stack, forward, model_now, predictions
from tests.services.running import Stack
from tests.services.test_actions_live import _snapshot
from tests.waiting import until

CUSTOMERS = 1000  # one batch
MODEL = registry.CHURN_MODEL


@pytest.fixture(scope="module")
def deploying(worlds: Worlds, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The leakage world's stack."""
    with acting_stack(worlds.get("leakage"), tmp_path_factory) as stack:
        yield stack


def _metadata(stack: Stack) -> dict:
    reply = HTTP.get(stack.url + "/services/model/metadata", headers=stack.candidate, timeout=10)
    assert reply.status_code == 200, reply.text
    return reply.json()


def _served(stack: Stack, customers: list[int]) -> pl.DataFrame:
    rows = [r for r in predictions(stack, customers) if r["status"] == "ok"]
    return pl.DataFrame(
        {
            "customer_id": [r["customer_id"] for r in rows],
            "score": [r["score"] for r in rows],
            "model_version": [r["model_version"] for r in rows],
            "threshold": [r["threshold"] for r in rows],
        }
    )


def _change_logged(stack: Stack, change_id: str, lines: int) -> list | None:
    """The change's log lines once there are `lines` of them."""
    rows = stack.sql(
        "SELECT event, service, attrs FROM telemetry.logs WHERE event LIKE 'change_%' "
        f"AND attrs LIKE '%{change_id}%' ORDER BY ts"
    )["rows"]
    return rows if len(rows) == lines else None


def test_deployment_actions_move_the_live_scores_toward_the_control_world(
    deploying: Stack, control_world: BuildSummary
) -> None:
    paths, control = WorldPaths(deploying.world), WorldPaths(control_world.root)
    now = model_now(deploying)
    record = deploy.read_model_deployment(paths.deploy)
    assert record.model_version == "2" and record.model_uri.endswith("@champion")
    customers = sorted(_snapshot(paths, now)["customer_id"].to_list())[:CUSTOMERS]

    # Where the live scores should go back to: the control world's model on the control world's
    # features for the same customers at the same time.
    control_record = deploy.read_model_deployment(control.deploy)
    model = registry.load_model(control.mlflow, control_record.model_uri)
    truth = _snapshot(control, now).filter(pl.col("customer_id").is_in(customers))
    truth = truth.select(
        "customer_id",
        pl.Series(
            "control_score",
            model.predict_proba(truth.select(control_record.features).to_numpy())[:, 1],
        ),
    )

    def gap(served: pl.DataFrame) -> float:
        """How far the served scores are from control's, per customer on average."""
        joined = served.join(truth, on="customer_id")
        assert joined.height > CUSTOMERS * 0.9
        return float((joined["score"] - joined["control_score"]).abs().mean())  # type: ignore[arg-type]

    before = _served(deploying, customers)
    assert before["model_version"].unique().to_list() == ["2"]
    fault_gap = gap(before)
    assert fault_gap > 0

    # An unknown version is refused, naming the field, and nothing is applied.
    refused = HTTP.post(
        deploying.url + "/api/actions",
        json={"action": PIN_VERSION, "params": {"version": "99"}},
        headers=deploying.candidate,
        timeout=10,
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"][0]["loc"] == ["body", "params", "version"]
    assert "no churn-model version 99" in refused.json()["detail"][0]["msg"]
    assert not (paths.run / "actions.json").exists()

    # A change that does not touch what is served: another alias moves, the symptom stays.
    act(deploying, MOVE_ALIAS, {"alias": "shadow", "version": "1"})
    forward(deploying, 0.1)
    unmoved = _served(deploying, customers)
    assert unmoved["model_version"].unique().to_list() == ["2"]
    assert gap(unmoved) > fault_gap / 2, (gap(unmoved), fault_gap)
    meta = _metadata(deploying)
    assert meta["model_version"] == "2" and meta["aliases"] == {"champion": "2", "shadow": "1"}

    # Champion moved back to version 1: the server follows it once the change is in effect.
    moved = act(deploying, MOVE_ALIAS, {"alias": "champion", "version": "1"})
    assert _served(deploying, customers)["model_version"].unique().to_list() == ["2"]
    forward(deploying, 0.1)
    after = _served(deploying, customers)
    assert after["model_version"].unique().to_list() == ["1"]
    mitigated_gap = gap(after)
    assert mitigated_gap <= fault_gap / 2, (mitigated_gap, fault_gap)
    meta = _metadata(deploying)
    assert meta["model_version"] == "1" and meta["aliases"]["champion"] == "1"
    assert meta["model_uri"] == f"models:/{MODEL}@champion"
    assert meta["deployed_at"] == moved["effective_at"]
    logged = until(lambda: _change_logged(deploying, moved["id"], 2), "the change in the logs")
    assert [(event, service) for event, service, _ in logged] == [
        ("change_requested", "model-server"),
        ("change_applied", "model-server"),
    ]
    assert '"from_version": "2"' in logged[1][2] and '"to_version": "1"' in logged[1][2]
    # The live rows record the version that served them.
    since = dt.datetime.fromisoformat(moved["effective_at"])
    versions = (
        "SELECT DISTINCT model_version FROM serving.predictions "
        f"WHERE source = 'online' AND request_ts >= TIMESTAMP '{since.isoformat()}'"
    )
    until(lambda: deploying.sql(versions)["rows"] == [["1"]], "live rows served by version 1")

    # Pinned to the leaky version again the symptom returns; a rollback goes back to version 1.
    act(deploying, PIN_VERSION, {"version": "2"})
    forward(deploying, 0.25)
    pinned = _served(deploying, customers)
    assert pinned["model_version"].unique().to_list() == ["2"]
    assert gap(pinned) > fault_gap / 2, (gap(pinned), fault_gap)
    assert _metadata(deploying)["model_uri"] == f"models:/{MODEL}/2"
    act(deploying, ROLLBACK, {"service": "model-server"})
    forward(deploying, 0.34)
    rolled = _served(deploying, customers)
    assert rolled["model_version"].unique().to_list() == ["1"]
    assert rolled["score"].to_list() == after["score"].to_list()
    assert gap(rolled) <= fault_gap / 2
    # Version 1 comes back with the threshold it was served with.
    assert rolled["threshold"].unique().to_list() != before["threshold"].unique().to_list()


def _registered(stack: Stack) -> dict | None:
    """The churn model through the gateway; None while MLflow starts on its first visit."""
    try:
        reply = HTTP.get(
            f"{stack.url}/services/mlflow/ajax-api/2.0/mlflow/registered-models/get",
            params={"name": MODEL},
            headers=stack.candidate,
            timeout=30,
        )
    except httpx.TimeoutException:
        return None
    return reply.json() if reply.status_code == 200 else None


def test_the_moved_alias_shows_in_the_registry_and_its_file_is_untouched(deploying: Stack) -> None:
    """After the first test: champion was moved to version 1 and shadow added."""
    paths = WorldPaths(deploying.world)
    # The registry shows the moved alias where the candidate reads it; its file is untouched.
    reply = until(
        lambda: _registered(deploying),
        "the registry through the gateway",
        timeout=90,
        every=1.0,
    )
    aliases = {a["alias"]: a["version"] for a in reply["registered_model"]["aliases"]}
    assert aliases == {"champion": "1", "shadow": "1"}
    champion = HTTP.get(
        f"{deploying.url}/services/mlflow/ajax-api/2.0/mlflow/registered-models/alias",
        params={"name": MODEL, "alias": "champion"},
        headers=deploying.candidate,
        timeout=30,
    )
    assert champion.status_code == 200, champion.text
    assert champion.json()["model_version"]["version"] == "1"
    assert registry.model_version(paths.mlflow, f"models:/{MODEL}@champion")["version"] == "2"
