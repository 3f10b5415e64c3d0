"""The deployments, checked offline: Kubernetes schemas (rendered kustomize-style and as plain
files), the compose file's references, hadolint on the Dockerfiles."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from archivetag.cli import build_parser, serve_option_groups
from archivetag.runtime.registry import SERVER_NAMES as SERVERS, SERVERS as SERVER_SPECS
from archivetag.probe import PROBE_OPTIONS

HEALTH_NAMES = {spec.name: spec.health_service for spec in SERVER_SPECS}
REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.37.0"
CLUSTER_SCOPED = {"Namespace"}
PORTS = {"orchestrator": 50051, "florence": 50052, "rampp": 50053, "siglip": 50054}


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomize_render(folder: Path) -> list[dict]:
    """What `kustomize build` does with the features our kustomization uses."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    known = {"apiVersion", "kind", "namespace", "labels", "resources", "images"}
    assert set(kustomization) <= known, f"renderer does not know {set(kustomization) - known}"
    images = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in kustomization.get("images", [])}
    rendered = []
    for resource in kustomization["resources"]:
        for doc in load_docs(folder / resource):
            doc = copy.deepcopy(doc)
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = kustomization["namespace"]
            for label_set in kustomization.get("labels", []):
                doc["metadata"].setdefault("labels", {}).update(label_set["pairs"])
            pod_spec = doc.get("spec", {}).get("template", {}).get("spec", {})
            for container in pod_spec.get("containers", []):
                container["image"] = images.get(container["image"], container["image"])
            rendered.append(doc)
    return rendered


RENDERED = kustomize_render(K8S)


def by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in RENDERED if d["kind"] == kind}


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def known_env_vars() -> set[str]:
    names = {o.env for s in SERVERS for g in serve_option_groups(s) for o in g.options}
    return names | {o.env for o in PROBE_OPTIONS.options}


@pytest.mark.parametrize("path", sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"), ids=lambda p: p.name)
def test_each_plain_manifest_is_valid_against_the_kubernetes_schemas(path):
    for doc in load_docs(path):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_kustomize_rendering_is_valid_and_every_resource_file_exists():
    assert len(RENDERED) >= 15
    for doc in RENDERED:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert all(d["metadata"].get("namespace") == "archivetag" for d in RENDERED if d["kind"] != "Namespace")


@pytest.mark.skipif(not shutil.which("kustomize"), reason="no kustomize binary on this machine")
def test_a_real_kustomize_build_matches_our_rendering():
    built = [d for d in yaml.safe_load_all(subprocess.run(["kustomize", "build", str(K8S)], capture_output=True,
                                                          text=True, check=True).stdout) if d]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in built) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in RENDERED)


@pytest.mark.parametrize("name", ["florence", "rampp", "siglip"])
def test_model_services_have_grpc_probes_gpus_headless_services_and_a_drain_grace(name):
    deployment = by_kind("Deployment")[name]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    port = PORTS[name]
    assert container["args"] == ["serve", name]
    assert build_parser().parse_args(container["args"]).server == name
    assert container["livenessProbe"]["grpc"] == {"port": port}  # "" = the process is alive
    assert container["readinessProbe"]["grpc"] == {"port": port, "service": HEALTH_NAMES[name]}
    startup = container["startupProbe"]
    assert startup["grpc"]["service"] == HEALTH_NAMES[name]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # long enough to load a model
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = env_of(container)
    assert pod["terminationGracePeriodSeconds"] > float(env["ARCHIVETAG_GRACE_SECONDS"])
    assert float(env["ARCHIVETAG_MAX_CONNECTION_AGE_SECONDS"]) > 0  # clients re-resolve and find new pods
    assert set(env) - {"HOME"} <= known_env_vars()
    assert container["image"].startswith("ghcr.io/")  # the kustomize image transformer applied
    service = by_kind("Service")[name]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"][0]["port"] == port
    assert by_kind("HorizontalPodAutoscaler")[name]["spec"]["scaleTargetRef"]["name"] == name
    assert by_kind("PodDisruptionBudget")[name]["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": name}
    claim = next(v for v in pod["volumes"] if v["name"] == "models")["persistentVolumeClaim"]["claimName"]
    assert claim in by_kind("PersistentVolumeClaim")


def test_the_orchestrator_finds_each_model_service_through_its_headless_service():
    deployment = by_kind("Deployment")["orchestrator"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    assert set(env) - {"HOME"} <= known_env_vars()
    for name in ("florence", "rampp", "siglip"):
        host, port = env[f"ARCHIVETAG_{name.upper()}_TARGET"].split(":")
        assert host == name
        assert int(port) == PORTS[name]
    secret = deployment["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"]
    assert secret in by_kind("Secret")
    assert env["ARCHIVETAG_API_TOKENS_FILE"].startswith(container["volumeMounts"][0]["mountPath"])
    assert container["readinessProbe"]["grpc"]["service"] == HEALTH_NAMES["orchestrator"]


def test_only_the_orchestrator_may_reach_the_model_services():
    policy = next(iter(by_kind("NetworkPolicy").values()))
    selected = policy["spec"]["podSelector"]["matchLabels"]
    models = {n for n, d in by_kind("Deployment").items() if selected.items() <= d["spec"]["template"]["metadata"]["labels"].items()}
    assert models == {"florence", "rampp", "siglip"}
    grpc_rule = next(r for r in policy["spec"]["ingress"] if {p["port"] for p in r["ports"]} == {50052, 50053, 50054})
    assert grpc_rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "orchestrator"}}}]


# -- compose ------------------------------------------------------------------------------
COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_references_only_what_exists():
    services = COMPOSE["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, (name, dependency)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source in COMPOSE["volumes"] or Path(source).is_absolute(), (name, volume)
        for secret in service.get("secrets", []):
            assert secret in COMPOSE["secrets"]
        if "build" in service:
            assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        assert build_parser().parse_args(service["command"]).func
        env = {k for k in service.get("environment", {}) if k.startswith("ARCHIVETAG_")}
        assert env <= known_env_vars(), (name, env - known_env_vars())
    default_tokens = COMPOSE["secrets"]["api_tokens"]["file"].split(":-")[1].rstrip("}")
    assert (DEPLOY / default_tokens).is_file()


def test_compose_publishes_only_the_orchestrator_and_gives_models_the_gpu():
    services = COMPOSE["services"]
    assert [n for n, s in services.items() if s.get("ports")] == ["orchestrator"]
    for name in ("florence", "rampp", "siglip"):
        service = services[name]
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
        assert "container_name" not in service  # `--scale` needs generated names
        probe = service["healthcheck"]["test"]
        assert probe[1:3] == ["archivetag", "probe"]
        assert f"127.0.0.1:{PORTS[name]}" in probe
        assert HEALTH_NAMES[name] in probe
        assert service["volumes"] == ["models:/models:ro"]
    orchestrator = services["orchestrator"]
    assert orchestrator["depends_on"]["rampp"]["condition"] == "service_healthy"
    for name in ("florence", "rampp", "siglip"):
        assert orchestrator["environment"][f"ARCHIVETAG_{name.upper()}_TARGET"] == f"{name}:{PORTS[name]}"


# -- images -------------------------------------------------------------------------------
@pytest.mark.parametrize("dockerfile", sorted(DEPLOY.glob("Dockerfile*")), ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint_and_run_as_non_root_without_models(dockerfile):
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    text = dockerfile.read_text()
    assert "USER 10001" in text
    assert "HEALTHCHECK" in text
    assert 'VOLUME ["/models"]' in text
    assert "COPY models" not in text
    assert "models pull" not in text  # never baked in
