"""docker/compose.yaml and deploy/k8s/: validated against the official schemas (the Compose
Specification's, vendored by check-jsonschema; Kubernetes' own, shipped by kubernetes-validate),
then checked against what the images and the server actually offer."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from dyhead_serve.server import create_app
from dyhead_serve.server.settings import ServerSettings
from tests.deploy.conftest import DOCKER, K8S, REPO, find_tool
from tests.deploy.dockerfile import parse_dockerfile

COMPOSE = DOCKER / "compose.yaml"
MANIFESTS = sorted(K8S.glob("*.yaml"))
CACHE_MOUNT = "/var/lib/dyhead-serve"
NON_SETTINGS = {"DYHEAD_SERVE_CACHE", "DYHEAD_ENGINE_PRECISION", "DYHEAD_ENGINE_PROFILE"}


def _routes() -> set[str]:
    return set(create_app(ServerSettings()).openapi()["paths"])


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _resources() -> dict[str, dict[str, Any]]:
    found = {}
    for path in MANIFESTS:
        for document in yaml.safe_load_all(path.read_text()):
            found[document["kind"]] = document
    return found


def _check_variables(names: list[str], where: str) -> None:
    for name in names:
        if name.startswith(("DYHEAD_SERVE_", "DYHEAD_ENGINE_")) and name not in NON_SETTINGS:
            field = name.removeprefix("DYHEAD_SERVE_").lower()
            assert field in ServerSettings.model_fields, f"{where}: {name} is no server setting"


def test_compose_file_follows_the_compose_specification():
    checker = find_tool("check-jsonschema")
    result = subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_gpu_service():
    gpu = _compose()["services"]["gpu"]
    assert "profiles" not in gpu, "the GPU service is the default one"
    assert (COMPOSE.parent / gpu["build"]["context"] / gpu["build"]["dockerfile"]).resolve() == (
        DOCKER / "Dockerfile"
    )
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert any(v.split(":")[1] == CACHE_MOUNT for v in gpu["volumes"])
    assert gpu["restart"] in ("always", "unless-stopped", "on-failure")
    assert "/readyz" in gpu["healthcheck"]["test"][-1]
    _check_variables(list(gpu["environment"]), "compose gpu")


def test_compose_cpu_profile():
    cpu = _compose()["services"]["cpu"]
    assert cpu["profiles"] == ["cpu"]
    assert (COMPOSE.parent / cpu["build"]["context"] / cpu["build"]["dockerfile"]).resolve() == (
        DOCKER / "Dockerfile.cpu"
    )
    assert "deploy" not in cpu
    assert "/readyz" in cpu["healthcheck"]["test"][-1]
    _check_variables(list(cpu["environment"]), "compose cpu")


def test_compose_passes_the_api_key_only_when_set():
    """An empty DYHEAD_SERVE_API_KEY is still a key: every request would then need the header."""
    for service in _compose()["services"].values():
        assert service["environment"].get("DYHEAD_SERVE_API_KEY", None) is None


def test_compose_ports_reach_the_port_the_images_listen_on():
    for name, dockerfile in (("gpu", "Dockerfile"), ("cpu", "Dockerfile.cpu")):
        env = " ".join(i.args for i in parse_dockerfile(DOCKER / dockerfile) if i.keyword == "ENV")
        port = re.search(r"DYHEAD_SERVE_PORT=(\d+)", env)
        grpc_port = re.search(r"DYHEAD_SERVE_GRPC_PORT=(\d+)", env)
        assert port is not None and grpc_port is not None
        http, grpc = _compose()["services"][name]["ports"]
        assert http.rsplit(":", 1)[1] == port.group(1)
        assert grpc.rsplit(":", 1)[1] == grpc_port.group(1)


def test_kubernetes_manifests_follow_the_kubernetes_schemas():
    validator = find_tool("kubernetes-validate")
    result = subprocess.run(
        [validator, "--strict", *map(str, MANIFESTS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PersistentVolumeClaim"} <= set(_resources())


def test_deployment_requests_a_gpu_and_probes_our_endpoints():
    deployment = _resources()["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    routes = _routes()
    kinds = ("livenessProbe", "readinessProbe", "startupProbe")
    probes = {kind: container[kind]["httpGet"]["path"] for kind in kinds}
    assert probes["readinessProbe"] == "/readyz" and probes["livenessProbe"] == "/healthz"
    assert set(probes.values()) <= routes
    port, grpc_port = container["ports"]
    assert port["containerPort"] == 8000
    assert grpc_port == {"name": "grpc", "containerPort": 8001, "protocol": "TCP"}
    assert all(container[kind]["httpGet"]["port"] == port["name"] for kind in kinds)
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
    _check_variables([e["name"] for e in container["env"]], "deployment")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    (volume,) = pod["volumes"]
    assert mounts[volume["name"]] == CACHE_MOUNT
    claim = _resources()["PersistentVolumeClaim"]["metadata"]["name"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim


def test_service_and_autoscaler_point_at_the_deployment():
    resources = _resources()
    deployment, service = resources["Deployment"], resources["Service"]
    hpa = resources["HorizontalPodAutoscaler"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in service["spec"]["selector"].items())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in container["ports"]}
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


@pytest.mark.parametrize("path", [COMPOSE, *MANIFESTS], ids=lambda p: str(Path(p).relative_to(REPO)))
def test_yaml_parses(path):
    assert list(yaml.safe_load_all(Path(path).read_text()))
