"""The scenario builder through the gateway: the catalog, validation that names the field, and a
real build of a re-seeded variant of the running world's scenario, followed to the end."""

from __future__ import annotations

import copy
import json
import shutil
import time

from fastapi.testclient import TestClient

from sandbox.faults import registry
from sandbox.layout import WorldPaths, read_manifest
from sandbox.services import stack
from tests.services.conftest import MakeSession

VARIANT_SCALE = 0.04  # 1,000 customers: the smallest world that trains a model comfortably
BUILD_TIMEOUT_S = 600


def _operator(paths: WorldPaths) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.admin_token(paths)}"}


def test_the_builder_is_the_operators(
    client: TestClient, paths: WorldPaths, make_session: MakeSession
) -> None:
    links = make_session()
    for token in (links["candidate_token"], links["interviewer_token"]):
        who = {"Authorization": f"Bearer {token}"}
        assert client.get("/api/catalog", headers=who).status_code == 403
        reply = client.post("/api/builder/builds", json={"name": "x", "toml": ""}, headers=who)
        assert reply.status_code == 403
    catalog = client.get("/api/catalog", headers=_operator(paths)).json()
    assert {f["id"] for f in catalog["faults"]} == set(registry.catalog())
    assert catalog["running"]["faults"][0]["id"] == "feature-nulls-wrong-mean"


def test_validation_names_the_field(client: TestClient, paths: WorldPaths) -> None:
    running = client.get("/api/catalog", headers=_operator(paths)).json()["running"]
    good = client.post(
        "/api/builder/validate", json={"scenario": running}, headers=_operator(paths)
    )
    assert good.status_code == 200 and good.json()["brief"]["title"] == running["brief"]["title"]
    assert "[[faults]]" in good.json()["toml"]

    wrong = copy.deepcopy(running)
    wrong["faults"][0]["null_share"] = 7
    reply = client.post("/api/builder/validate", json={"scenario": wrong}, headers=_operator(paths))
    assert reply.status_code == 422 and "faults[0].null_share" in str(reply.json()["detail"])
    unknown = copy.deepcopy(running)
    unknown["faults"].append({"id": "no-such-fault"})
    reply = client.post(
        "/api/builder/validate", json={"scenario": unknown}, headers=_operator(paths)
    )
    assert reply.status_code == 422 and "faults[1]" in str(reply.json()["detail"])
    broken = client.post("/api/builder/validate", json={"toml": "[world"}, headers=_operator(paths))
    assert broken.status_code == 422 and "not valid TOML" in str(broken.json()["detail"])
    empty = client.post("/api/builder/validate", json={}, headers=_operator(paths))
    assert empty.status_code == 422


def test_a_reseeded_variant_builds_beside_the_running_world(
    client: TestClient, paths: WorldPaths
) -> None:
    running = client.get("/api/catalog", headers=_operator(paths)).json()["running"]
    variant = copy.deepcopy(running)
    variant["world"].update(seed=running["world"]["seed"] + 1000, scale=VARIANT_SCALE)
    out = paths.root.parent / "variant-test"
    shutil.rmtree(out, ignore_errors=True)
    try:
        bad_name = client.post(
            "/api/builder/builds",
            json={"scenario": variant, "name": "../escape"},
            headers=_operator(paths),
        )
        assert bad_name.status_code == 422 and "name" in str(bad_name.json()["detail"])
        started = client.post(
            "/api/builder/builds",
            json={"scenario": variant, "name": out.name},
            headers=_operator(paths),
        ).json()
        assert started["status"] == "building" and started["out"] == str(out)
        deadline = time.monotonic() + BUILD_TIMEOUT_S
        while True:
            status = client.get(
                f"/api/builder/builds/{started['id']}", headers=_operator(paths)
            ).json()
            if status["status"] != "building" or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert status["status"] == "built", status["log"]
        assert "simulate" in status["stages"] and status["up_command"] == f"sandbox up {out}"
        manifest = read_manifest(out)
        assert manifest["seed"] == variant["world"]["seed"] and manifest["scale"] == VARIANT_SCALE
        original = [f["fault_id"] for f in json.loads(paths.answer_key.read_text())["faults"]]
        assert [f["fault_id"] for f in status["answer_key"]["faults"]] == original
        again = client.post(
            "/api/builder/builds",
            json={"scenario": variant, "name": out.name},
            headers=_operator(paths),
        )
        assert again.status_code == 409 and "already exists" in again.json()["detail"]
    finally:
        shutil.rmtree(out, ignore_errors=True)
