"""The deployments, checked offline: the Kubernetes objects as the real `kubectl kustomize`
renders them (strictly against the schemas), the compose files' references, hadolint on the
Dockerfiles. Each is checked against the registry of servers; the per-model parts are generated
from it (deploy/generate.py), and a stale generated file fails here. deploy/check runs them for real."""

from __future__ import annotations

import argparse
import json
import os
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
GENERATE = DEPLOY / "generate.py"
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
    assert container["resources"]["limits"].get("nvidia.com/gpu") == (1 if spec.deployment.gpu else None)
    assert container["image"].split("/")[-1].split(":")[0] == f"archivetag-{spec.name}"  # its own image
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


def test_every_deployment_runs_its_servers_own_image_named_once_in_the_kustomization(rendered):
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    images = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in kustomization["images"]}
    assert set(images) == {f"archivetag-{s.name}" for s in registry.SERVERS}
    deployments = by_kind(rendered, "Deployment")
    for name, deployment in deployments.items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        # Redis too: the orchestrator's image carries Debian's redis-server (redis.yaml).
        server = "orchestrator" if name == "redis" else name
        assert container["image"] == images[f"archivetag-{server}"], name
    written = {line.split("image:")[1].split("#")[0].strip() for path in K8S.rglob("*.yaml")
               for line in path.read_text().splitlines() if line.strip().startswith("image:")}
    # Every manifest names a placeholder the transformer replaces (the component's own is
    # replaced by each ModelService's spec.image first).
    assert written - {"archivetag-model-service"} <= set(images)


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
        # The result cache runs the orchestrator image's redis-server; Prometheus is its own image's entrypoint.
        if service.get("entrypoint") != ["redis-server"] and name != "prometheus":
            assert build_parser().parse_args(service["command"]).func
        env = {k for k in service.get("environment", {}) if k.startswith("ARCHIVETAG_")}
        assert env <= known_env_vars(), (name, env - known_env_vars())
    default_tokens = COMPOSE["secrets"]["api_tokens"]["file"].split(":-")[1].rstrip("}")
    assert (DEPLOY / default_tokens).is_file()


def test_compose_publishes_only_the_orchestrator_and_each_health_check_probes_its_own_server():
    services = COMPOSE["services"]
    published = [n for n, s in services.items() if s.get("ports")]
    assert published == ["orchestrator", "prometheus"]  # Prometheus only in the "observability" profile
    assert services["prometheus"]["profiles"] == ["observability"]
    for spec in registry.SERVERS:
        service = services[spec.name]
        assert service["command"] == ["serve", spec.name]
        assert "container_name" not in service  # `--scale` needs generated names
        assert service["healthcheck"]["test"] == ["CMD", "archivetag", "probe"]  # the image's own
        target = probe_target({k: str(v) for k, v in service["environment"].items()})
        assert (target.address, target.service) == (f"127.0.0.1:{spec.port}", spec.health_service)
    for spec in registry.SERVERS:
        assert services[spec.name]["image"].startswith("${ARCHIVETAG_IMAGE_REGISTRY:-}" + f"archivetag-{spec.name}:")
        assert services[spec.name]["build"]["target"] == spec.name
    for spec in registry.MODELS:
        assert services[spec.name]["volumes"] == ["models:/models:ro"]
    orchestrator = services["orchestrator"]
    primary, *fallbacks = registry.TAGGER_NAMES
    # The primary tagger may still be loading (the orchestrator fails over); the others must be ready.
    assert orchestrator["depends_on"][primary]["condition"] == "service_started"
    for name in registry.MODEL_NAMES:
        if name != primary:
            assert orchestrator["depends_on"][name]["condition"] == "service_healthy"
    assert services["redis"]["image"] == orchestrator["image"]
    for tool in ("models-pull", "models-smoke"):
        assert "archivetag-tools:" in services[tool]["image"] and services[tool]["build"]["target"] == "tools"
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
        if not spec.deployment.gpu:
            assert "deploy" not in gpu.get(spec.name, {})
            continue
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


def dockerfile_stages(dockerfile: Path) -> dict[str, str]:
    """Each stage of a multi-stage Dockerfile and the stage (or image) it starts from."""
    stages = {}
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words[:1] == ["FROM"] and len(words) == 4 and words[2].upper() == "AS":
            stages[words[3]] = words[1]
    return stages


@pytest.mark.parametrize("dockerfile", sorted(DEPLOY.glob("Dockerfile*")), ids=lambda p: p.name)
def test_each_server_has_its_own_target_and_only_those_that_need_torch_get_it(dockerfile):
    stages = dockerfile_stages(dockerfile)

    def ancestors(stage: str) -> list[str]:
        chain = [stage]
        while chain[-1] in stages:
            chain.append(stages[chain[-1]])
        return chain

    for spec in registry.SERVERS:
        assert spec.name in stages, f"no target {spec.name} in {dockerfile.name}"
        assert ("torch" in ancestors(spec.name)) == spec.needs_torch, (spec.name, ancestors(spec.name))
    assert "torch" in ancestors("tools")
    assert list(stages)[-1] == "tools"  # the default target: every server and the `models` tools
    text = dockerfile.read_text()
    tools = text[text.index("AS tools"):]
    for spec in registry.SERVERS:
        assert f"ENV ARCHIVETAG_SERVER={spec.name}\n" in text
        assert f'CMD ["serve", "{spec.name}"]' in text
        assert spec.name in tools  # its distribution folder is installed in the tools image
    assert "pip install -e" not in text and "--editable" not in text


# -- generated ----------------------------------------------------------------------------
def test_the_generated_deployment_files_are_up_to_date():
    result = subprocess.run([sys.executable, str(GENERATE), "--check"], capture_output=True, text=True, timeout=120,
                            cwd=REPO)
    assert result.returncode == 0, f"stale generated files; run `python deploy/generate.py`:\n{result.stderr}"


def test_servers_json_is_the_registry_table():
    table = json.loads((DEPLOY / "servers.json").read_text())
    rows = {row["name"]: row for row in table["servers"]}
    assert list(rows) == list(registry.SERVER_NAMES)
    for spec in registry.SERVERS:
        row = rows[spec.name]
        assert (row["port"], row["metrics_port"], row["health_service"], row["role"]) == (
            spec.port, spec.metrics_port, spec.health_service, spec.role)
        assert row["image"] == f"archivetag-{spec.name}"
    assert table["taggers"] == list(registry.TAGGER_NAMES)
    assert table["tools"]["image"] == "archivetag-tools"


FOURTH_SPEC = '''
from archivetag.runtime.specs import TAGGER, Deployment, ServerSpec

SPEC = ServerSpec(
    name="fourth",
    title="Fourth",
    capability=TAGGER,
    port=50069,
    metrics_port=9169,
    app="archivetag_fourth.backend:create_backend",
    distribution="archivetag-fourth",
    needs_torch=False,
    priority=50,
    deployment=Deployment(start_seconds=120, memory_request="1Gi", memory_limit="3Gi", gpu=False),
)
'''


def test_a_fourth_models_deployment_comes_from_its_spec(tmp_path):
    """A test-only tagger, installed beside the others (a package and its entry point on the path):
    the generator gives it a compose service, an orchestrator target, a Kubernetes folder that
    renders, network-policy ports, an image target and a servers.json row, with no file naming it."""
    site = tmp_path / "site"
    (site / "archivetag_fourth").mkdir(parents=True)
    (site / "archivetag_fourth" / "__init__.py").write_text("")
    (site / "archivetag_fourth" / "spec.py").write_text(FOURTH_SPEC)
    info = site / "archivetag_fourth-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: archivetag-fourth\nVersion: 0.1.0\n"
                                   "Requires-Dist: archivetag==0.1.0\n")
    (info / "entry_points.txt").write_text("[archivetag.servers]\nfourth = archivetag_fourth.spec:SPEC\n")
    out = tmp_path / "deploy"
    shutil.copytree(DEPLOY, out, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)}
    result = subprocess.run([sys.executable, str(GENERATE), "--out", str(out)], capture_output=True, text=True,
                            timeout=120, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr
    # The repository's own files are untouched, and now stale for that registry.
    check = subprocess.run([sys.executable, str(GENERATE), "--check"], capture_output=True, text=True, timeout=120,
                           env=env, cwd=REPO)
    assert check.returncode == 1 and "deploy/compose.yaml" in check.stderr

    compose = yaml.safe_load((out / "compose.yaml").read_text())["services"]
    assert compose["fourth"]["command"] == ["serve", "fourth"]
    assert compose["fourth"]["expose"] == ["50069"]
    assert compose["fourth"]["environment"]["ARCHIVETAG_SERVER"] == "fourth"
    assert compose["fourth"]["healthcheck"]["start_period"] == "120s"
    assert compose["fourth"]["build"]["target"] == "fourth"
    assert "archivetag-fourth:" in compose["fourth"]["image"]
    assert compose["orchestrator"]["environment"]["ARCHIVETAG_FOURTH_TARGET"] == "fourth:50069"
    assert compose["orchestrator"]["depends_on"]["fourth"]["condition"] == "service_healthy"
    gpu = yaml.safe_load((out / "compose.gpu.yaml").read_text())["services"]
    assert "deploy" not in gpu["fourth"] and "cuda" in gpu["fourth"]["image"]  # gpu=False: no GPU

    (values,) = load_docs(out / "k8s" / "fourth" / "service.yaml")
    assert values["spec"]["port"] == 50069 and values["spec"]["startupFailureThreshold"] == 12
    assert values["spec"]["memoryLimit"] == "3Gi"
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not installed")
    rendered = subprocess.run([kubectl, "kustomize", str(out / "k8s")], capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    (container,) = by_kind(docs, "Deployment")["fourth"]["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["serve", "fourth"]
    assert container["image"] == "ghcr.io/your-org/archivetag-fourth:0.1.0-cuda"
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert container["resources"]["limits"]["memory"] == "3Gi"
    assert by_kind(docs, "Service")["fourth"]["spec"]["ports"][0]["port"] == 50069
    (orchestrator,) = by_kind(docs, "Deployment")["orchestrator"]["spec"]["template"]["spec"]["containers"]
    assert env_of(orchestrator)["ARCHIVETAG_FOURTH_TARGET"] == "fourth:50069"
    policy = by_kind(docs, "NetworkPolicy")["model-services-only-from-orchestrator"]
    ports = [{p["port"] for p in rule["ports"]} for rule in policy["spec"]["ingress"]]
    assert 50069 in ports[0] and 9169 in ports[1]

    stages = dockerfile_stages(out / "Dockerfile.cpu")
    assert stages["fourth"] == "core"  # no torch
    rows = {r["name"]: r for r in json.loads((out / "servers.json").read_text())["servers"]}
    assert rows["fourth"]["port"] == 50069 and rows["fourth"]["image"] == "archivetag-fourth"
