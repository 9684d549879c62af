"""`sandbox deploy k8s OUT`: the stack as Kubernetes manifests, one namespace per candidate, with
the process split of compose/compose.yaml (both come from `processes.processes`).

What is written: the Namespace; a PersistentVolumeClaim for the world; a Job running
`compose-init` on it; per process a Deployment (readiness probe on its health path, memory
request from `processes.MEMORY_MB`) and a Service of its name, which is the address the other
processes use, as in compose; NetworkPolicies letting only the gateway be reached from outside
the namespace. Prometheus' config is a ConfigMap. Grafana stays compose-only."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, field_validator

from sandbox.services.deploy.processes import (
    DEFAULT_PUBLIC_URL,
    GATEWAY,
    IMAGE,
    INIT,
    INIT_MEMORY_MB,
    PROMETHEUS_CONFIG,
    PROMETHEUS_DATA,
    READY_FILE,
    WORLD,
    Process,
    init_command,
    processes,
    prometheus_config,
)

Manifest = dict[str, Any]
PART_OF = "ml-incident-sandbox"
NAME_LABEL = "app.kubernetes.io/name"
SANDBOX_UID = 10001  # compose/Dockerfile's `sandbox` user: owns what it writes in the world
PROMETHEUS_UID = 65534  # the Prometheus image's `nobody`
# A pod starts its process once the init Job has prepared the world and what it needs answers:
# Kubernetes has no `depends_on`, and a process started early would only crash and back off.
WAIT = (
    "import os, sys, time, urllib.request\n"
    "def up(url):\n"
    "    try:\n"
    "        urllib.request.urlopen(url, timeout=3)\n"
    "        return True\n"
    "    except Exception:\n"
    "        return False\n"
    "while not (os.path.exists(sys.argv[1]) and all(up(u) for u in sys.argv[2:])):\n"
    "    time.sleep(2)\n"
)


class Options(BaseModel):
    """What differs between two candidates' deployments."""

    namespace: str = Field(default="sandbox", max_length=63)
    public_url: str = DEFAULT_PUBLIC_URL  # where people open the gateway (session links)
    speed: float = Field(default=48.0, gt=0)
    scale: float = Field(default=1.0, gt=0)
    world_size: str = "10Gi"
    # One node shares a ReadWriteOnce volume among its pods; across nodes it must be ReadWriteMany.
    access_mode: str = "ReadWriteOnce"
    storage_class: str | None = None
    image: str = IMAGE  # compose/Dockerfile's image, as the cluster pulls it

    @field_validator("namespace")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", value):
            raise ValueError("lowercase letters, digits and '-', starting and ending alphanumeric")
        return value

    @field_validator("access_mode")
    @classmethod
    def _mode(cls, value: str) -> str:
        if value not in ("ReadWriteOnce", "ReadWriteMany"):
            raise ValueError("ReadWriteOnce or ReadWriteMany")
        return value


def manifests(options: Options) -> dict[str, list[Manifest]]:
    """File name -> the manifests in it, in the order `kubectl apply -f OUT/` applies them."""
    procs = processes(options.public_url)
    files: dict[str, list[Manifest]] = {
        "00-namespace.yaml": [_namespace(options)],
        "10-world.yaml": [_world_claim(options), _init_job(options)],
    }
    for i, proc in enumerate(procs):
        docs = [_deployment(proc, procs, options), _service(proc, options)]
        if proc.name == "prometheus":
            docs.insert(0, _prometheus_config(procs, options))
        files[f"{20 + i}-{proc.name}.yaml"] = docs
    files["90-network-policies.yaml"] = _network_policies(procs, options)
    return files


def write(out: Path, options: Options) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, docs in manifests(options).items():
        path = out / name
        path.write_text(yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False))
        written.append(path)
    return written


class _Dumper(yaml.SafeDumper):
    """Scripts and embedded files as literal blocks, readable in the manifest."""


def _literal_blocks(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _literal_blocks)


def _meta(name: str, options: Options, component: str | None = None) -> Manifest:
    labels = {
        NAME_LABEL: component or name,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/instance": options.namespace,
    }
    return {"name": name, "namespace": options.namespace, "labels": labels}


def _namespace(options: Options) -> Manifest:
    meta = _meta(options.namespace, options, "namespace")
    del meta["namespace"]
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def _world_claim(options: Options) -> Manifest:
    spec: Manifest = {
        "accessModes": [options.access_mode],
        "resources": {"requests": {"storage": options.world_size}},
    }
    if options.storage_class:
        spec["storageClassName"] = options.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(INIT, options),
        "spec": spec,
    }


def _world_volume(read_only: bool = False) -> Manifest:
    return {"name": INIT, "persistentVolumeClaim": {"claimName": INIT, "readOnly": read_only}}


def _world_mount(read_only: bool = False) -> Manifest:
    return {"name": INIT, "mountPath": WORLD, "readOnly": read_only}


def _sandbox_security() -> Manifest:
    # The volume is handed to the image's user once, not walked through at every pod start.
    return {
        "runAsNonRoot": True,
        "runAsUser": SANDBOX_UID,
        "fsGroup": SANDBOX_UID,
        "fsGroupChangePolicy": "OnRootMismatch",
    }


def _number(value: float) -> str:
    """48.0 as 48, as compose passes it; anything else exactly."""
    return str(int(value)) if value.is_integer() else repr(value)


def _init_job(options: Options) -> Manifest:
    container = {
        "name": INIT,
        "image": options.image,
        "imagePullPolicy": "IfNotPresent",
        "command": list(init_command(_number(options.speed), _number(options.scale))),
        "resources": {"requests": {"memory": f"{INIT_MEMORY_MB}Mi"}},
        "volumeMounts": [_world_mount()],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(INIT, options),
        "spec": {
            "backoffLimit": 2,
            "template": {
                "metadata": {"labels": _meta(INIT, options)["labels"]},
                "spec": {
                    "restartPolicy": "OnFailure",
                    "securityContext": _sandbox_security(),
                    "containers": [container],
                    "volumes": [_world_volume()],
                },
            },
        },
    }


def _wait_container(proc: Process, procs: list[Process], options: Options) -> Manifest:
    by_name = {p.name: p for p in procs}
    urls = [f"http://{n}:{by_name[n].port}{by_name[n].health}" for n in proc.needs]
    return {
        "name": "wait",
        "image": options.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-c", WAIT, f"{WORLD}/run/{READY_FILE}", *urls],
        "volumeMounts": [_world_mount(read_only=True)],
    }


def _deployment(proc: Process, procs: list[Process], options: Options) -> Manifest:
    container: Manifest = {
        "name": proc.name,
        "image": options.image if proc.image == IMAGE else proc.image,
        "imagePullPolicy": "IfNotPresent",
        "command": list(proc.command),
        "ports": [{"name": "http", "containerPort": proc.port}],
        "readinessProbe": {
            "httpGet": {"path": proc.health, "port": proc.port},
            "periodSeconds": 5,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        # A request, no limit: the gateway's console workers grow it for a query and are held
        # by their own limit (SANDBOX_CONSOLE_MEMORY_MB); a pod limit would kill the gateway.
        "resources": {"requests": {"memory": f"{proc.memory_mb}Mi"}},
        "volumeMounts": [_world_mount(read_only=proc.name == "prometheus")],
    }
    if proc.env:
        container["env"] = [{"name": k, "value": v} for k, v in proc.env.items()]
    volumes = [_world_volume(read_only=proc.name == "prometheus")]
    security = _sandbox_security()
    if proc.name == "prometheus":
        container["volumeMounts"] += [
            {"name": "config", "mountPath": PROMETHEUS_CONFIG, "subPath": "prometheus.yml"},
            # Rebuilt from the world's history when the pod moves; the history stays in the world.
            {"name": "data", "mountPath": PROMETHEUS_DATA},
        ]
        volumes += [
            {"name": "config", "configMap": {"name": "prometheus-config"}},
            {"name": "data", "emptyDir": {}},
        ]
        # Only reads the world (its files are world-readable); no fsGroup to re-own it with.
        security = {"runAsNonRoot": True, "runAsUser": PROMETHEUS_UID}
    labels = _meta(proc.name, options)["labels"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(proc.name, options),
        "spec": {
            "replicas": 1,
            # Never two of a process at once: each owns its files in the world.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {NAME_LABEL: proc.name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "securityContext": security,
                    "initContainers": [_wait_container(proc, procs, options)],
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def _service(proc: Process, options: Options) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(proc.name, options),
        "spec": {
            "selector": {NAME_LABEL: proc.name},
            "ports": [{"name": "http", "port": proc.port, "targetPort": proc.port}],
        },
    }


def _prometheus_config(procs: list[Process], options: Options) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta("prometheus-config", options, "prometheus"),
        "data": {"prometheus.yml": yaml.safe_dump(prometheus_config(procs), sort_keys=False)},
    }


def _network_policies(procs: list[Process], options: Options) -> list[Manifest]:
    """Pods take traffic from their own namespace only; the gateway also from anywhere."""
    gateway_port = next(p.port for p in procs if p.name == GATEWAY)

    def policy(name: str, pods: Manifest, ingress: list[Manifest]) -> Manifest:
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta(name, options, "network-policy"),
            "spec": {"podSelector": pods, "policyTypes": ["Ingress"], "ingress": ingress},
        }

    return [
        policy("same-namespace-only", {}, [{"from": [{"podSelector": {}}]}]),
        policy(
            "gateway-from-anywhere",
            {"matchLabels": {NAME_LABEL: GATEWAY}},
            [{"ports": [{"protocol": "TCP", "port": gateway_port}]}],
        ),
    ]
