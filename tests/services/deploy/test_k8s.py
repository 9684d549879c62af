"""`sandbox deploy k8s`: the manifests against Kubernetes' own schemas (kubernetes-validate's
bundled copy, offline), and what they promise — a probed Deployment per process, the world's
volume and init Job, and only the gateway reachable from outside the namespace."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from sandbox.cli import app
from sandbox.services.deploy import k8s
from sandbox.services.deploy.processes import (
    GATEWAY,
    INIT_MEMORY_MB,
    MEMORY_MB,
    init_command,
    processes,
)

# The oldest Kubernetes release still maintained when this was written; the fields used here are
# all older than it.
KUBERNETES = "1.32"
OPTIONS = k8s.Options(namespace="candidate-ada", speed=60, scale=1)


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return [doc for file in k8s.manifests(OPTIONS).values() for doc in file]


def of_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_every_manifest_validates_against_the_kubernetes_schemas(docs: list[dict]) -> None:
    for doc in docs:
        # strict: a misspelt or misplaced field is an error, not silently dropped
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "candidate-ada", doc["metadata"]


def test_the_schema_check_catches_a_misplaced_field(docs: list[dict]) -> None:
    deployment = of_kind(docs, "Deployment")["gateway"]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["path"] = container["readinessProbe"]["httpGet"].pop("path")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_every_process_has_a_deployment_probed_on_its_health_path(docs: list[dict]) -> None:
    deployments, services = of_kind(docs, "Deployment"), of_kind(docs, "Service")
    procs = processes(OPTIONS.public_url)
    assert set(deployments) == set(services) == {p.name for p in procs}
    for proc in procs:
        pod = deployments[proc.name]["spec"]["template"]
        [container] = pod["spec"]["containers"]
        assert container["command"] == list(proc.command)
        probe = container["readinessProbe"]["httpGet"]
        assert (probe["path"], probe["port"]) == (proc.health, proc.port), proc.name
        assert container["resources"]["requests"]["memory"] == f"{MEMORY_MB[proc.name]}Mi"
        # the Service of the process's name is the address the others use, as in compose
        service = services[proc.name]["spec"]
        assert service["selector"].items() <= pod["metadata"]["labels"].items()
        assert service["ports"][0]["port"] == service["ports"][0]["targetPort"] == proc.port
        # it starts after what it needs answers on its health path
        [wait] = pod["spec"]["initContainers"]
        needed = {p.name: p for p in procs if p.name in proc.needs}
        assert wait["command"][4:] == [
            f"http://{n}:{needed[n].port}{needed[n].health}" for n in proc.needs
        ]


def test_the_world_has_a_claim_and_an_init_job_every_pod_mounts(docs: list[dict]) -> None:
    [claim] = of_kind(docs, "PersistentVolumeClaim").values()
    [job] = of_kind(docs, "Job").values()
    [builder] = job["spec"]["template"]["spec"]["containers"]
    assert builder["command"] == list(init_command("60", "1"))
    assert builder["resources"]["requests"]["memory"] == f"{INIT_MEMORY_MB}Mi"
    for pod in [
        job["spec"]["template"],
        *(d["spec"]["template"] for d in of_kind(docs, "Deployment").values()),
    ]:
        claims = [
            v["persistentVolumeClaim"]["claimName"]
            for v in pod["spec"]["volumes"]
            if "persistentVolumeClaim" in v
        ]
        assert claims == [claim["metadata"]["name"]]


def reachable_from_outside(labels: dict[str, str], policies: list[dict]) -> bool:
    """NetworkPolicy semantics for ingress from a pod of another namespace: allowed if no policy
    selects the pod, or if a selecting policy has a rule with no `from`, or a peer that is not
    limited to this namespace (a namespaceSelector or an ipBlock)."""
    selecting = [
        p["spec"]
        for p in policies
        if p["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items()
        and "Ingress" in p["spec"]["policyTypes"]
    ]
    if not selecting:
        return True
    for spec in selecting:
        for rule in spec.get("ingress", []):
            peers = rule.get("from")
            if not peers or any("namespaceSelector" in p or "ipBlock" in p for p in peers):
                return True
    return False


def test_only_the_gateway_is_reachable_from_outside_the_namespace(docs: list[dict]) -> None:
    policies = list(of_kind(docs, "NetworkPolicy").values())
    pods = {
        n: d["spec"]["template"]["metadata"]["labels"]
        for n, d in of_kind(docs, "Deployment").items()
    }
    pods["world"] = of_kind(docs, "Job")["world"]["spec"]["template"]["metadata"]["labels"]
    open_to_all = {
        name for name, labels in pods.items() if reachable_from_outside(labels, policies)
    }
    assert open_to_all == {GATEWAY}
    # and nothing is shut off from the rest of its stack
    same_namespace = [
        p["spec"]["podSelector"]
        for p in policies
        if any(rule.get("from") == [{"podSelector": {}}] for rule in p["spec"]["ingress"])
    ]
    for labels in pods.values():
        assert any(s.get("matchLabels", {}).items() <= labels.items() for s in same_namespace)
    gateway = next(p for p in processes() if p.name == GATEWAY)
    outside = [p for p in policies if p["spec"]["podSelector"].get("matchLabels")]
    assert [r["ports"] for p in outside for r in p["spec"]["ingress"]] == [
        [{"protocol": "TCP", "port": gateway.port}]
    ]


def test_the_command_writes_one_namespace_per_candidate(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["deploy", "k8s", str(tmp_path / "ada"), "--namespace", "ada"])
    assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "ada").glob("*.yaml"))
    assert files[0].name == "00-namespace.yaml"  # applied first by `kubectl apply -f DIR`
    written = [d for f in files for d in yaml.safe_load_all(f.read_text())]
    assert written == [
        d for file in k8s.manifests(k8s.Options(namespace="ada")).values() for d in file
    ]
    refused = runner.invoke(
        app, ["deploy", "k8s", str(tmp_path / "bad"), "--namespace", "Ada Lovelace"]
    )
    assert refused.exit_code == 2
    assert "--namespace" in refused.output
    assert not (tmp_path / "bad").exists()
