"""The deployments, checked offline: the Kubernetes objects as the real `kubectl kustomize`
renders them (strictly against the schemas), the compose files' references, hadolint on the
Dockerfiles. Each is checked against the registry of servers. deploy/check runs them for real."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from archivetag.cli import build_parser, serve_option_groups
from archivetag.probe import PROBE_OPTIONS, target_of
from archivetag.runtime import registry

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.37.0"
MODEL_NAMES = list(registry.MODEL_NAMES)


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    """`kubectl kustomize deploy/k8s`: what `kubectl apply -k` would send to the cluster."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not installed: the Kubernetes manifests are checked as `kubectl kustomize` renders "
                    "them (apt-get install kubectl, or put a kubectl with kustomize on PATH)")
    result = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def by_kind(rendered: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in rendered if d["kind"] == kind}


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def known_env_vars() -> set[str]:
    names = {o.env for s in registry.SERVER_NAMES for g in serve_option_groups(s) for o in g.options}
    return names | {o.env for o in PROBE_OPTIONS.options}


def probe_target(env: dict[str, str]):
    """What the image's HEALTHCHECK (`archivetag probe`) checks with this container environment."""
    parser = argparse.ArgumentParser()
    from archivetag.runtime.settings import add_option_groups

    add_option_groups(parser, [PROBE_OPTIONS], environ=env)
    return target_of(parser.parse_args([]), environ=env)


# -- Kubernetes -----------------------------------------------------------------------------
def test_the_rendering_is_valid_against_the_kubernetes_schemas_and_in_one_namespace(rendered):
    kinds = sorted(d["kind"] for d in rendered)
    assert kinds.count("Deployment") == len(registry.SERVERS) + 1  # and the result cache's Redis
    for doc in rendered:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert {d["metadata"].get("namespace") for d in rendered if d["kind"] != "Namespace"} == {"archivetag"}
    assert "ModelService" not in kinds  # the component's values are local config, never applied


@pytest.mark.parametrize("spec", registry.MODELS, ids=lambda s: s.name)
def test_each_model_deployment_serves_its_registry_entry_with_grpc_probes_and_a_gpu(rendered, spec):
    deployment = by_kind(rendered, "Deployment")[spec.name]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["serve", spec.name]
    assert build_parser().parse_args(container["args"]).server == spec.name
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": spec.port, "metrics": spec.metrics_port}
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(spec.metrics_port)
    assert container["livenessProbe"]["grpc"] == {"port": spec.port}  # "" = the process is alive
    assert container["readinessProbe"]["grpc"] == {"port": spec.port, "service": spec.health_service}
    startup = container["startupProbe"]
    assert startup["grpc"] == {"port": spec.port, "service": spec.health_service}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # long enough to load a model
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = env_of(container)
    target = probe_target(env)
    assert (target.address, target.service) == (f"127.0.0.1:{spec.port}", spec.health_service)
    assert pod["terminationGracePeriodSeconds"] > float(env["ARCHIVETAG_GRACE_SECONDS"])
    assert float(env["ARCHIVETAG_MAX_CONNECTION_AGE_SECONDS"]) > 0  # clients re-resolve and find new pods
    assert set(env) - {"HOME"} <= known_env_vars()
    claim = next(v for v in pod["volumes"] if v["name"] == "models")["persistentVolumeClaim"]["claimName"]
    assert claim in by_kind(rendered, "PersistentVolumeClaim")


@pytest.mark.parametrize("spec", registry.MODELS, ids=lambda s: s.name)
def test_each_model_has_a_headless_service_an_autoscaler_and_a_disruption_budget_on_its_pods(rendered, spec):
    pod_labels = by_kind(rendered, "Deployment")[spec.name]["spec"]["template"]["metadata"]["labels"]
    service = by_kind(rendered, "Service")[spec.name]
    assert service["spec"]["clusterIP"] == "None"
    assert [p["port"] for p in service["spec"]["ports"]] == [spec.port]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert by_kind(rendered, "HorizontalPodAutoscaler")[spec.name]["spec"]["scaleTargetRef"]["name"] == spec.name
    assert by_kind(rendered, "PodDisruptionBudget")[spec.name]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_every_deployment_runs_the_image_named_once_in_the_kustomization(rendered):
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    (image,) = kustomization["images"]
    # Redis too: the image carries Debian's redis-server (redis.yaml).
    images = {c["image"] for d in by_kind(rendered, "Deployment").values() for c in d["spec"]["template"]["spec"]["containers"]}
    assert images == {f"{image['newName']}:{image['newTag']}"}
    written = {line.split("image:")[1].strip() for path in K8S.rglob("*.yaml") for line in path.read_text().splitlines()
               if line.strip().startswith("image:")}
    assert written == {image["name"]}  # every manifest names the placeholder the transformer replaces


def test_the_orchestrator_finds_each_model_service_through_its_headless_service(rendered):
    deployment = by_kind(rendered, "Deployment")["orchestrator"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    assert set(env) - {"HOME"} <= known_env_vars()
    services = by_kind(rendered, "Service")
    for spec in registry.MODELS:
        host, port = env[f"ARCHIVETAG_{spec.name.upper()}_TARGET"].split(":")
        assert host in services
        assert int(port) == spec.port
    secret = deployment["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"]
    assert secret in by_kind(rendered, "Secret")
    assert env["ARCHIVETAG_API_TOKENS_FILE"].startswith(container["volumeMounts"][0]["mountPath"])
    assert container["readinessProbe"]["grpc"] == {"port": registry.ORCHESTRATOR.port,
                                                   "service": registry.ORCHESTRATOR.health_service}
    target = probe_target(env)
    assert (target.address, target.service) == (f"127.0.0.1:{registry.ORCHESTRATOR.port}", registry.ORCHESTRATOR.health_service)


def test_only_the_orchestrator_may_reach_the_model_services(rendered):
    policy = by_kind(rendered, "NetworkPolicy")["model-services-only-from-orchestrator"]
    deployments = by_kind(rendered, "Deployment")
    pod_labels = {n: d["spec"]["template"]["metadata"]["labels"] for n, d in deployments.items()}
    selected = policy["spec"]["podSelector"]["matchLabels"]
    assert {n for n, labels in pod_labels.items() if selected.items() <= labels.items()} == set(MODEL_NAMES)
    grpc_rule = next(r for r in policy["spec"]["ingress"] if {p["port"] for p in r["ports"]} == {s.port for s in registry.MODELS})
    (source,) = grpc_rule["from"]
    allowed = source["podSelector"]["matchLabels"]
    assert {n for n, labels in pod_labels.items() if allowed.items() <= labels.items()} == {"orchestrator"}
    metrics_rule = next(r for r in policy["spec"]["ingress"] if r is not grpc_rule)
    assert {p["port"] for p in metrics_rule["ports"]} == {s.metrics_port for s in registry.MODELS}


def test_the_orchestrator_replicas_share_one_bounded_redis_only_they_reach(rendered):
    (container,) = by_kind(rendered, "Deployment")["orchestrator"]["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    assert env["ARCHIVETAG_CACHE"] == "redis"
    host, port = env["ARCHIVETAG_CACHE_REDIS_URL"].removeprefix("redis://").split("/")[0].split(":")
    service = by_kind(rendered, "Service")[host]
    assert service["spec"]["ports"][0]["port"] == int(port)
    redis = by_kind(rendered, "Deployment")["redis"]
    assert redis["spec"]["replicas"] == 1
    (server,) = redis["spec"]["template"]["spec"]["containers"]
    assert server["command"] == ["redis-server"]
    args = dict(zip(server["args"][::2], server["args"][1::2]))
    assert args["--maxmemory-policy"] == "allkeys-lru"
    assert args["--maxmemory"].endswith(("mb", "gb"))
    policy = by_kind(rendered, "NetworkPolicy")["redis-only-from-orchestrator"]
    assert service["spec"]["selector"].items() <= policy["spec"]["podSelector"]["matchLabels"].items()
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "orchestrator"}}}]


def test_each_models_kustomize_values_are_its_registry_entry():
    for spec in registry.MODELS:
        (values,) = load_docs(K8S / spec.name / "service.yaml")
        assert values["metadata"]["name"] == spec.name
        assert values["spec"]["port"] == spec.port
        assert values["spec"]["metricsPort"] == spec.metrics_port
        assert values["metadata"]["annotations"]["archivetag/metrics-port"] == str(spec.metrics_port)
        assert values["spec"]["healthName"] == spec.health_service
    folders = {p.parent.name for p in K8S.glob("*/service.yaml")}
    assert folders == set(MODEL_NAMES)


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
        if service.get("entrypoint") != ["redis-server"]:  # the result cache runs the image's redis-server
            assert build_parser().parse_args(service["command"]).func
        env = {k for k in service.get("environment", {}) if k.startswith("ARCHIVETAG_")}
        assert env <= known_env_vars(), (name, env - known_env_vars())
    default_tokens = COMPOSE["secrets"]["api_tokens"]["file"].split(":-")[1].rstrip("}")
    assert (DEPLOY / default_tokens).is_file()


def test_compose_publishes_only_the_orchestrator_and_each_health_check_probes_its_own_server():
    services = COMPOSE["services"]
    assert [n for n, s in services.items() if s.get("ports")] == ["orchestrator"]
    for spec in registry.SERVERS:
        service = services[spec.name]
        assert service["command"] == ["serve", spec.name]
        assert "container_name" not in service  # `--scale` needs generated names
        assert service["healthcheck"]["test"] == ["CMD", "archivetag", "probe"]  # the image's own
        target = probe_target({k: str(v) for k, v in service["environment"].items()})
        assert (target.address, target.service) == (f"127.0.0.1:{spec.port}", spec.health_service)
    for spec in registry.MODELS:
        assert services[spec.name]["volumes"] == ["models:/models:ro"]
    orchestrator = services["orchestrator"]
    assert orchestrator["depends_on"]["rampp"]["condition"] == "service_healthy"
    for spec in registry.MODELS:
        assert orchestrator["environment"][f"ARCHIVETAG_{spec.name.upper()}_TARGET"] == f"{spec.name}:{spec.port}"


def test_compose_starts_a_bounded_redis_that_the_orchestrator_waits_for_and_uses():
    services = COMPOSE["services"]
    redis = services["redis"]
    assert redis["entrypoint"] == ["redis-server"]
    args = dict(zip(redis["command"][::2], redis["command"][1::2]))
    assert args["--maxmemory-policy"] == "allkeys-lru"
    assert "--maxmemory" in args
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert not redis.get("ports")  # reached inside the compose network only
    orchestrator = services["orchestrator"]
    assert orchestrator["environment"]["ARCHIVETAG_CACHE"] == "redis"
    assert orchestrator["environment"]["ARCHIVETAG_CACHE_REDIS_URL"] == "redis://redis:6379/0"
    assert orchestrator["depends_on"]["redis"]["condition"] == "service_healthy"


def test_the_gpu_overlay_gives_every_model_service_the_gpu_and_the_cuda_image():
    gpu = yaml.safe_load((DEPLOY / "compose.gpu.yaml").read_text())["services"]
    assert set(gpu) <= set(COMPOSE["services"])
    for spec in registry.MODELS:
        (device,) = gpu[spec.name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"]
    for name, service in gpu.items():
        assert "cuda" in service["image"]
        if "build" in service:
            assert service["build"]["dockerfile"] == "deploy/Dockerfile.cuda"
    for spec in registry.MODELS:
        assert "deploy" not in COMPOSE["services"][spec.name]  # the CPU file runs without a GPU runtime


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
    # One HEALTHCHECK for every service: the server that ARCHIVETAG_SERVER names (default: the CMD's).
    assert 'CMD ["archivetag", "probe"]' in text
    assert "ARCHIVETAG_SERVER=orchestrator" in text
    assert 'CMD ["serve", "orchestrator"]' in text
    for argument in ("ARG BASE_IMAGE=python:", "ARG TORCH_INDEX_URL="):
        assert argument in text
