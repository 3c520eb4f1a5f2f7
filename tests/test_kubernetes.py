"""The Kubernetes and KServe manifests: valid for Kubernetes 1.30, and consistent with the server.

Schemas come from kubernetes-validate, which bundles the JSON schemas of each Kubernetes release and
runs offline. It has none for KServe's InferenceService (a CRD): by design that file is not validated
whole. Its pod spec is validated as a core/v1 Pod instead, and the rest is checked field by field.
The structural checks read the TORCHWIRE_* variables through the server's own Settings, so a renamed
or mistyped setting fails here.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from torchwire.server import settings as settings_module
from torchwire.server.rpc.health import LIVENESS, READINESS
from torchwire.server.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
KSERVE = ROOT / "deploy" / "kserve" / "inferenceservice.yaml"
MANIFESTS = sorted(p for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")
KUBERNETES_VERSION = "1.30.0"
MINOR = ".".join(KUBERNETES_VERSION.split(".")[:2])
VALIDATE = Path(sys.executable).parent / "kubernetes-validate"

# InferenceService predictor fields that are KServe's own (ComponentExtensionSpec); every other field
# of the predictor is a Kubernetes PodSpec field.
KSERVE_COMPONENT_FIELDS = {
    "minReplicas",
    "maxReplicas",
    "scaleTarget",
    "scaleMetric",
    "containerConcurrency",
    "timeout",
    "canaryTrafficPercent",
    "logger",
    "batcher",
    "labels",
    "annotations",
    "deploymentStrategy",
}

Doc = dict[str, Any]


def load(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def one(path: Path) -> Doc:
    docs = load(path)
    assert len(docs) == 1, f"{path.name}: expected one resource, found {len(docs)}"
    return docs[0]


def manifest(name: str) -> Doc:
    return one(KUBERNETES / name)


def validate(path: Path | str, stdin: str | None = None) -> str:
    """kubernetes-validate --strict for KUBERNETES_VERSION (path "-" reads stdin); checks the exit code."""
    result = subprocess.run(
        [str(VALIDATE), "--strict", "-k", KUBERNETES_VERSION, str(path)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def assert_passed(output: str, docs: list[Doc]) -> None:
    # A kind without a bundled schema only gets a WARN and exit 0: insist on a pass for each resource.
    for doc in docs:
        name = f"{doc['kind'].lower()}/{doc['metadata']['name']}"
        assert f"passed for resource {name} against version {MINOR}" in output, output
    assert "WARN" not in output and "ERROR" not in output, output


def dockerfile_uid() -> int:
    match = re.search(r"^USER\s+(\d+)\s*$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert match, "the Dockerfile has no numeric USER"
    return int(match.group(1))


def env_of(container: Doc) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def server_settings(container: Doc) -> Settings:
    """The container's TORCHWIRE_* variables through the server's own parsing and checks."""
    env = {k: v for k, v in env_of(container).items() if k.startswith(settings_module.ENV_PREFIX)}
    known = {settings_module.ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}
    assert set(env) <= known, f"not server settings: {sorted(set(env) - known)}"
    # The repository folder exists only in the container; Settings checks that it is a folder.
    assert env.pop("TORCHWIRE_MODEL_REPOSITORY", None), "TORCHWIRE_MODEL_REPOSITORY is not set"
    return settings_module.from_sources(None, env)


def cpu_cores(quantity: str | float) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def check_server_pod(pod: Doc, container: Doc, *, pvc_name: str) -> None:
    """What the Deployment and the KServe predictor must both get right."""
    settings = server_settings(container)
    env = env_of(container)

    # Probes: native gRPC against the serving port, with the health service names the server sets.
    assert settings.port in [p["containerPort"] for p in container["ports"]]
    for probe, service in (
        ("startupProbe", LIVENESS),
        ("livenessProbe", LIVENESS),
        ("readinessProbe", READINESS),
    ):
        assert container[probe]["grpc"] == {"port": settings.port, "service": service}, probe
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30, "too little time to start"

    # Drain: SIGKILL must not come before the drain delay and the shutdown grace have both run out.
    assert settings.drain_delay_s > 0 and settings.max_connection_age_s > 0
    assert pod["terminationGracePeriodSeconds"] > settings.drain_delay_s + settings.shutdown_grace

    # Intra-op threads: set (the default would count every core of the node), within the CPU limit.
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert 1 <= settings.torch_threads <= cpu_cores(limits["cpu"])
    assert cpu_cores(requests["cpu"]) == cpu_cores(limits["cpu"])

    # The image's user, non-root, read-only, no privileges.
    uid = dockerfile_uid()
    pod_security, security = pod["securityContext"], container["securityContext"]
    assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] == uid
    assert security.get("runAsUser", uid) == uid
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod_security["seccompProfile"]["type"] == "RuntimeDefault"

    # Models from the PVC, read-only at TORCHWIRE_MODEL_REPOSITORY; a writable emptyDir at /tmp.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    models = mounts[env["TORCHWIRE_MODEL_REPOSITORY"]]
    assert models.get("readOnly") is True
    assert volumes[models["name"]]["persistentVolumeClaim"] == {"claimName": pvc_name, "readOnly": True}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]


# --- schemas ---------------------------------------------------------------------------------------


def test_every_expected_manifest_is_there() -> None:
    assert {p.name for p in MANIFESTS} == {
        "deployment.yaml",
        "service.yaml",
        "service-headless.yaml",
        "hpa.yaml",
        "pdb.yaml",
        "pvc.yaml",
    }


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_matches_the_kubernetes_schema(path: Path) -> None:
    assert_passed(validate(path), load(path))


def test_strict_validation_rejects_an_unknown_field(tmp_path: Path) -> None:
    """Guards the check above: a misspelt probe field must fail, not pass silently."""
    bad = tmp_path / "bad.yaml"
    bad.write_text((KUBERNETES / "deployment.yaml").read_text().replace("service: readiness", "servce: x"))
    result = subprocess.run(
        [str(VALIDATE), "--strict", "-k", KUBERNETES_VERSION, str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "'servce' was unexpected" in result.stdout, result.stdout


def test_kserve_pod_spec_matches_the_kubernetes_schema(tmp_path: Path) -> None:
    isvc = one(KSERVE)
    output = validate(KSERVE)
    # No bundled schema for the CRD (a WARN, exit 0). Should one appear, it must pass.
    assert (
        "Couldn't find schema for kind InferenceService" in output
        or "passed for resource inferenceservice/torchwire" in output
    ), output
    predictor = isvc["spec"]["predictor"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "torchwire"},
        "spec": {k: v for k, v in predictor.items() if k not in KSERVE_COMPONENT_FIELDS},
    }
    path = tmp_path / "predictor-pod.yaml"
    path.write_text(yaml.safe_dump(pod))
    assert_passed(validate(path), [pod])


# --- the Deployment and its neighbours --------------------------------------------------------------


def deployment() -> tuple[Doc, Doc, Doc]:
    dep = manifest("deployment.yaml")
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return dep, pod, container


def test_deployment_runs_the_server_as_the_settings_say() -> None:
    dep, pod, container = deployment()
    assert dep["spec"]["replicas"] == 3
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    check_server_pod(pod, container, pvc_name=manifest("pvc.yaml")["metadata"]["name"])

    # Spread over nodes, counting this Deployment's pods.
    hostname = [c for c in pod["topologySpreadConstraints"] if c["topologyKey"] == "kubernetes.io/hostname"]
    assert hostname and hostname[0]["labelSelector"]["matchLabels"].items() <= pod_labels.items()

    # Prometheus scrapes the named metrics port.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    assert ports["grpc"] == server_settings(container).port


@pytest.mark.parametrize("name", ["service.yaml", "service-headless.yaml"])
def test_services_reach_the_grpc_port(name: str) -> None:
    dep, _, container = deployment()
    service = manifest(name)
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port["name"] == "grpc" and port["port"] == 8001
    assert container_ports[port["targetPort"]] == server_settings(container).port
    assert port["appProtocol"] in {"grpc", "kubernetes.io/h2c"}


def test_headless_service_has_no_cluster_ip() -> None:
    headless = manifest("service-headless.yaml")
    assert headless["metadata"]["name"] == "torchwire-headless"
    assert headless["spec"]["clusterIP"] == "None"
    assert not headless["spec"].get("publishNotReadyAddresses", False)
    assert manifest("service.yaml")["spec"].get("type", "ClusterIP") == "ClusterIP"


def test_hpa_scales_the_deployment_on_cpu() -> None:
    dep = manifest("deployment.yaml")
    hpa = manifest("hpa.yaml")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "torchwire"}
    assert dep["metadata"]["name"] == "torchwire"
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 10)
    assert dep["spec"]["replicas"] == hpa["minReplicas"]
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60


def test_pdb_covers_the_pods_and_allows_one_disruption() -> None:
    dep = manifest("deployment.yaml")
    pdb = manifest("pdb.yaml")["spec"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
    min_replicas = manifest("hpa.yaml")["spec"]["minReplicas"]
    assert pdb.get("maxUnavailable") == 1 or 0 < pdb.get("minAvailable", 0) < min_replicas


def test_pvc_is_read_only_many() -> None:
    pvc = manifest("pvc.yaml")
    assert pvc["metadata"]["name"] == "torchwire-models"
    assert pvc["spec"]["accessModes"] == ["ReadOnlyMany"]


# --- kustomize --------------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest_and_tags_the_image() -> None:
    kustomization = one(KUBERNETES / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == [p.name for p in MANIFESTS]
    assert all((KUBERNETES / r).is_file() for r in kustomization["resources"])
    (image,) = [i for i in kustomization["images"] if i["name"] == "torchwire"]
    _, _, container = deployment()
    assert container["image"] == f"torchwire:{image['newTag']}"
    assert kustomization["labels"][0]["pairs"]


def test_kubectl_kustomize_builds_valid_manifests() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the kustomization's resources are checked above")
    result = subprocess.run(
        [kubectl, "kustomize", str(KUBERNETES)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    built = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert sorted(d["kind"] for d in built) == sorted(one(p)["kind"] for p in MANIFESTS)
    kustomization = one(KUBERNETES / "kustomization.yaml")
    common = kustomization["labels"][0]["pairs"]
    for doc in built:
        assert common.items() <= doc["metadata"]["labels"].items(), doc["kind"]
    (dep,) = [d for d in built if d["kind"] == "Deployment"]
    assert common.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    # Selectors are immutable: the common labels stay out of them.
    assert dep["spec"]["selector"] == manifest("deployment.yaml")["spec"]["selector"]
    assert_passed(validate("-", stdin=result.stdout), built)


# --- KServe -----------------------------------------------------------------------------------------


def test_kserve_serves_torchwire_as_a_custom_v2_grpc_predictor() -> None:
    isvc = one(KSERVE)
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] in {"Standard", "RawDeployment"}
    predictor = isvc["spec"]["predictor"]
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"
    # One port, named h2c: KServe exposes the first port, and h2c marks it as HTTP/2 (gRPC).
    assert container["ports"] == [
        {"name": "h2c", "containerPort": server_settings(container).port, "protocol": "TCP"}
    ]
    assert env_of(container)["PROTOCOL"] == "v2"
    check_server_pod(predictor, container, pvc_name=manifest("pvc.yaml")["metadata"]["name"])
    hpa = manifest("hpa.yaml")["spec"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (hpa["minReplicas"], hpa["maxReplicas"])
    assert predictor["scaleMetric"] == "cpu"
    _, _, dep_container = deployment()
    assert container["image"] == dep_container["image"]
