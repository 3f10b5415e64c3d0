"""`archivetag models pull` end to end, offline: a local hub on loopback serves the upstream
repositories (same ids and files, tiny random weights of the real architectures), and the pull
is pointed at it as a user points it at a mirror (HF_ENDPOINT, --rampp-tag-list-url)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from archivetag.pull import STAGING
from tests.support.pulled_repos import FLORENCE_REPOS, PINNED, RAMPP_REPO, SIGLIP_REPO
from archivetag.runtime.model_card import CARD_FILE, ModelCard
from archivetag.runtime.registry import MODELS, server
from archivetag.v1 import tagging_pb2, tagging_pb2_grpc
from tests.support.image_corpus import encode, photo
from tests.support.local_hub import LocalHub
from tests.support.servers import free_port, health_status
from tests.support.waiting import wait_for
from tests.support.upstream_repos import NOT_LOADED, commit_of, serve_upstream, write_upstream

ARCHIVETAG = [sys.executable, "-m", "archivetag.cli"]
REPOS = {"rampp": RAMPP_REPO, "florence": FLORENCE_REPOS["base"], "siglip": SIGLIP_REPO}
FLORENCE_WEIGHTS = f"{FLORENCE_REPOS['base']}/model.safetensors"


@pytest.fixture(scope="session")
def upstream(tmp_path_factory) -> dict[str, Path]:
    return write_upstream(tmp_path_factory.mktemp("upstream"))


@pytest.fixture
def hub(upstream, tmp_path):
    """A fresh hub (byte counters at zero) over a copy of the repositories, which a test may alter."""
    copy = tmp_path / "hub-files"
    folders = {repo: Path(shutil.copytree(folder, copy / repo)) for repo, folder in upstream.items()}
    with LocalHub() as local:
        local.tag_list_url = serve_upstream(local, folders)
        local.folders = folders
        yield local


def pull_argv(models: Path, hub: LocalHub, *args: str) -> list[str]:
    return [*ARCHIVETAG, "models", "pull", "--models", str(models), "--rampp-tag-list-url", hub.tag_list_url,
            "--keep-free-mb", "1", *args]


def pull_env(hub: LocalHub, home: Path) -> dict[str, str]:
    return {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1",
            "PYTHONUNBUFFERED": "1"}


def run_pull(models: Path, hub: LocalHub, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(pull_argv(models, hub, *args), env=pull_env(hub, models.parent / "hf-home"),
                          capture_output=True, text=True, timeout=timeout)


def resolve_requests(hub: LocalHub) -> list[str]:
    return [path for method, path in hub.requests if "/resolve/" in path and method == "GET"]


# -- a full pull, then the stack on it --------------------------------------------------------
@pytest.fixture(scope="module")
def pulled(upstream, tmp_path_factory):
    """One pull of all three models from the local hub (the hub stays up for the assertions)."""
    models = tmp_path_factory.mktemp("pulled") / "models"
    with LocalHub() as local:
        local.tag_list_url = serve_upstream(local, upstream)
        result = run_pull(models, local)
        yield {"models": models, "result": result, "hub": local, "upstream": upstream}


def test_pull_installs_all_three_at_their_pinned_commits_with_a_card(pulled):
    result, models = pulled["result"], pulled["models"]
    assert result.returncode == 0, result.stderr
    for name, repo in REPOS.items():
        card = ModelCard.read(models / name)
        assert card is not None, f"{name} has no {CARD_FILE}"
        assert card.family == name
        assert card.name == repo
        assert card.revision == commit_of(repo)
        assert card.smoke is False
        assert card.source == f"{pulled['hub'].url}/{repo}"
        on_disk = {p.relative_to(models / name).as_posix() for p in (models / name).rglob("*")
                   if p.is_file() and p.name != CARD_FILE}
        assert set(card.files) == on_disk  # every installed file is listed with its checksum
    assert card.revision == PINNED[SIGLIP_REPO]
    assert ModelCard.read(models / "rampp").revision == PINNED[RAMPP_REPO]
    assert not (models / STAGING).exists()  # nothing left behind once all are installed


def test_pull_states_the_total_first_and_ends_with_a_table(pulled):
    result = pulled["result"]
    total = next(line for line in result.stderr.splitlines() if line.strip().startswith("total "))
    assert "to download" in total
    assert result.stderr.index(total) < result.stderr.index("rampp: ram_plus_swin_large_14m.pth")  # before bytes
    rows = result.stdout.strip().splitlines()
    assert rows[0].split() == ["model", "repository", "revision", "size", "downloaded", "time", "result"]
    for name, repo in REPOS.items():
        row = next(r for r in rows if r.startswith(name))
        assert repo in row, row
        assert commit_of(repo)[:12] in row, row
        assert row.endswith("installed"), row


def test_pull_downloads_only_the_files_the_services_load(pulled):
    got = resolve_requests(pulled["hub"])
    for repo, names in NOT_LOADED.items():
        for name in names:
            assert not [path for path in got if path.endswith(f"{repo}/resolve/{commit_of(repo)}/{name}")], name
    pth = f"/{RAMPP_REPO}/resolve/{PINNED[RAMPP_REPO]}/ram_plus_swin_large_14m.pth"
    assert got.count(pth) == 1


@pytest.fixture(scope="module")
def stack(pulled):
    """`archivetag up` on the pulled models, on free ports."""
    logs = pulled["models"].parent / "up"
    logs.mkdir()
    ports = {spec.name: free_port() for spec in (*MODELS, server("orchestrator"))}
    argv = [*ARCHIVETAG, "up", "--models", str(pulled["models"]), "--log-dir", str(logs), "--no-metrics",
            *[arg for name, port in ports.items() for arg in (f"--{name}-port", str(port))]]
    out = logs / "up.out"
    with open(out, "w") as output:
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            specs = [*MODELS, server("orchestrator")]
            wait_for(lambda: process.poll() is not None or all(
                health_status(f"127.0.0.1:{ports[s.name]}", s.health_service) == "SERVING" for s in specs), timeout=300, describe=f"the pulled stack did not come up (log: {out})")
            assert process.poll() is None, out.read_text()[-3000:]
            yield {"ports": ports}
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(60)


def test_up_serves_the_pulled_models_and_every_identity_carries_its_commit(stack, pulled):
    for spec in MODELS:
        with grpc.insecure_channel(f"127.0.0.1:{stack['ports'][spec.name]}") as channel:
            info = getattr(spec.stub(channel), "GetModelInfo")(spec.model_info_request(), timeout=30)
        assert info.model.revision == commit_of(REPOS[spec.name]), spec.name
        assert info.model.name == REPOS[spec.name]
        assert info.model.smoke is False

    request = tagging_pb2.TagImageRequest()
    request.image.data = encode(photo(), "JPEG")
    with grpc.insecure_channel(f"127.0.0.1:{stack['ports']['orchestrator']}") as channel:
        answer = tagging_pb2_grpc.TaggingServiceStub(channel).TagImage(request, timeout=120)
    assert answer.tagger in {"florence", "rampp"}
    assert answer.view_type.name
    revisions = {m.family: m.revision for m in answer.models}
    assert revisions[answer.tagger] == commit_of(REPOS[answer.tagger])
    assert revisions["siglip"] == PINNED[SIGLIP_REPO]


# -- interrupted, corrupt, no room ------------------------------------------------------------
def test_a_killed_pull_resumes_without_downloading_again_what_it_had(hub, tmp_path):
    models = tmp_path / "models"
    size = (hub.folders[FLORENCE_REPOS["base"]] / "model.safetensors").stat().st_size
    hub.stall(FLORENCE_WEIGHTS, after_bytes=size // 2)
    staging = models / STAGING / "florence" / commit_of(FLORENCE_REPOS["base"])
    part = staging / "model.safetensors.part"
    first = subprocess.Popen(pull_argv(models, hub, "--only", "florence"), env=pull_env(hub, tmp_path / "hf-home"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (part.is_file() and part.stat().st_size >= size // 4) or first.poll() is not None,
                 timeout=300, describe="the first pull wrote nothing of the weights")
        assert first.poll() is None, first.stderr.read()
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
        hub.release()
    kept = part.stat().st_size
    assert 0 < kept < size
    assert not (models / "florence").exists()  # nothing half-installed where the service looks
    config_fetches = resolve_requests(hub).count(f"/{FLORENCE_REPOS['base']}/resolve/"
                                                 f"{commit_of(FLORENCE_REPOS['base'])}/config.json")
    responses_before = len(hub.responses_for(FLORENCE_WEIGHTS))

    second = run_pull(models, hub, "--only", "florence")
    assert second.returncode == 0, second.stderr
    (resumed,) = hub.responses_for(FLORENCE_WEIGHTS)[responses_before:]
    assert resumed.start == kept  # asked for the rest only
    assert resumed.sent == size - kept
    assert resolve_requests(hub).count(f"/{FLORENCE_REPOS['base']}/resolve/"
                                       f"{commit_of(FLORENCE_REPOS['base'])}/config.json") == config_fetches
    assert "already here" in second.stderr
    card = ModelCard.read(models / "florence")
    expected = hashlib.sha256((hub.folders[FLORENCE_REPOS["base"]] / "model.safetensors").read_bytes()).hexdigest()
    assert card.files["model.safetensors"] == expected  # the resumed file is the hub's file


@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
def test_a_file_altered_on_the_server_is_refused_and_nothing_is_installed(hub, tmp_path, damage):
    weights = hub.folders[RAMPP_REPO] / "ram_plus_swin_large_14m.pth"
    data = bytearray(weights.read_bytes())
    if damage == "truncated":
        del data[len(data) // 2:]
    else:
        data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))  # after the hub recorded the commit's checksums
    models = tmp_path / "models"

    result = run_pull(models, hub, "--only", "rampp")
    assert result.returncode == 1
    assert "ram_plus_swin_large_14m.pth" in result.stderr
    assert "corrupt" in result.stderr
    assert ("SHA-256" if damage == "flipped byte" else "bytes") in result.stderr
    assert not (models / "rampp").exists()
    assert not list((models / STAGING).rglob("*.pth*"))  # the bad file is not kept for a resume
    assert "NOT INSTALLED" in result.stdout


def test_a_pull_without_room_stops_before_downloading(hub, tmp_path):
    models = tmp_path / "models"
    result = run_pull(models, hub, "--keep-free-mb", str(1 << 40))  # a margin no disk has
    assert result.returncode == 1
    assert "not enough free space" in result.stderr
    assert "nothing was downloaded" in result.stderr
    assert resolve_requests(hub) == []
    assert not any(p.is_file() for p in models.rglob("*"))


def test_an_unknown_revision_is_refused_with_the_repository_named(hub, tmp_path):
    result = run_pull(tmp_path / "models", hub, "--only", "siglip", "--revision", "siglip=" + "0" * 40)
    assert result.returncode == 1
    assert SIGLIP_REPO in result.stderr
    assert "0" * 40 in result.stderr
    assert resolve_requests(hub) == []


def test_revision_names_a_commit_per_model(hub, tmp_path):
    """--revision picks the commit; the card records what was pulled."""
    other = "1" * 40
    hub.repos[SIGLIP_REPO].branches["archivetag-test"] = hub.repos[SIGLIP_REPO].commit
    result = run_pull(tmp_path / "models", hub, "--only", "siglip", "--revision", "siglip=archivetag-test")
    assert result.returncode == 0, result.stderr
    assert ModelCard.read(tmp_path / "models" / "siglip").revision == PINNED[SIGLIP_REPO]
    assert "not pinned" in result.stderr  # a branch name is not a pin: the pull says so
    bad = run_pull(tmp_path / "models", hub, "--only", "siglip", "--revision", f"sigclip={other}")
    assert bad.returncode == 1
    assert "expected NAME=COMMIT" in bad.stderr
    assert json.loads((tmp_path / "models" / "siglip" / CARD_FILE).read_text())["revision"] == PINNED[SIGLIP_REPO]


def test_an_unreachable_hub_is_named_and_the_offline_way_suggested(tmp_path):
    port = free_port()  # nothing listens there
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HOME": str(tmp_path / "hf-home")}
    result = subprocess.run([*ARCHIVETAG, "models", "pull", "--models", str(tmp_path / "models"), "--only", "rampp"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert f"cannot reach the hub for {RAMPP_REPO}" in result.stderr
    assert "archivetag models smoke" in result.stderr
    assert not (tmp_path / "models" / "rampp").exists()
