"""A fourth model is one folder and one registration.

A test-only tagger ("colours": it names a photo's dominant colours from a palette file in its
model folder) is written into a temporary folder as a contributor would write it: a spec, a
backend, a smoke builder and a pyproject.toml with the one `archivetag.servers` entry point. It
is installed (pip, into its own target folder), and then, with nothing else in the repository
changed: `models smoke` builds it, `up` starts it beside the others, `status` lists it,
GetModelInfo reports it, the orchestrator fails over to it in the configured tagger order, and
the generated compose and Kubernetes files contain it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest
import yaml

from archivetag.stack import archivetag_command
from archivetag.v1 import tagger_pb2, tagger_pb2_grpc, tagging_pb2, tagging_pb2_grpc
from tests.support.image_corpus import encode
from tests.support.servers import free_port
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
NAME = "colours"

PYPROJECT = """\
[build-system]
requires = ["setuptools>=70"]
build-backend = "setuptools.build_meta"

[project]
name = "archivetag-colours"
version = "0.1.0"
dependencies = ["archivetag==0.1.0"]

[project.entry-points."archivetag.servers"]
colours = "archivetag_colours.spec:SPEC"

[tool.setuptools]
packages = ["archivetag_colours"]
"""

SPEC = """\
from archivetag.runtime.settings import Option, OptionGroup
from archivetag.runtime.specs import TAGGER, ServerSpec

SPEC = ServerSpec(
    name="colours",
    title="Colours",
    capability=TAGGER,
    port=50060,
    metrics_port=9160,
    app="archivetag_colours.backend:ColoursBackend",
    options=(OptionGroup("colours", (Option("colours_max_tags", 3, "Most colours named per photo.", int),)),),
    distribution="archivetag-colours",
    priority=30,
    smoke="archivetag_colours.backend:write_smoke_model",
)
"""

BACKEND = """\
import json

import numpy as np
from PIL import Image

from archivetag.runtime.errors import ModelLoadError
from archivetag.runtime.model_service import TAGGER_SERVICE, ModelBackend, TagResult
from archivetag.v1 import common_pb2

PALETTE = {"red": (200, 30, 30), "green": (30, 160, 60), "blue": (30, 60, 200), "white": (240, 240, 240),
           "black": (15, 15, 15), "grey": (128, 128, 128)}


def write_smoke_model(folder, tag_list=None, thresholds=None):
    (folder / "palette.json").write_text(json.dumps(PALETTE))


class ColoursBackend(ModelBackend):
    family = "colours"
    service = TAGGER_SERVICE
    input_edge = 64

    def __init__(self, settings):
        self.folder = settings.models / "colours"
        self.max_tags = settings.colours_max_tags
        self.names, self.centres = [], np.zeros((0, 3))

    def load(self):
        try:
            palette = json.loads((self.folder / "palette.json").read_text())
        except OSError as exc:
            raise ModelLoadError(f"no palette in {self.folder}: {exc}") from None
        self.names, self.centres = list(palette), np.asarray(list(palette.values()), dtype=np.float32)

    def warmup_input(self):
        return Image.new("RGB", (64, 64), (200, 30, 30)), None

    def prepare(self, image, request):
        return np.asarray(image.convert("RGB").resize((64, 64)), dtype=np.float32).reshape(-1, 3)

    def infer_batch(self, items, abandoned):
        results = []
        for pixels in items:
            nearest = np.argmin(((pixels[:, None, :] - self.centres[None]) ** 2).sum(-1), axis=1)
            share = np.bincount(nearest, minlength=len(self.names)) / len(nearest)
            order = np.argsort(-share)[: self.max_tags]
            results.append(TagResult(tags=[(self.names[i], float(share[i])) for i in order]))
        return results

    def identity(self):
        return common_pb2.ModelIdentity(family="colours", name="archivetag/colours-test", revision="1", device="cpu",
                                        dtype="float32", smoke=True)

    def vocabulary(self):
        return list(self.names)
"""


def repository_state() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout


@pytest.fixture(scope="module")
def fourth(tmp_path_factory) -> dict:
    """The colours tagger's folder, installed into its own site folder; env that sees it."""
    root = tmp_path_factory.mktemp("fourth")
    package = root / "colours" / "archivetag_colours"
    package.mkdir(parents=True)
    (root / "colours" / "pyproject.toml").write_text(PYPROJECT)
    (package / "__init__.py").write_text("")
    (package / "spec.py").write_text(SPEC)
    (package / "backend.py").write_text(BACKEND)
    site = root / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                                "--target", str(site), str(root / "colours")], capture_output=True, text=True,
                               timeout=300)
    assert installed.returncode == 0, installed.stderr
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    return {"root": root, "env": env}


def test_a_fourth_tagger_is_one_folder_and_one_registration(fourth, smoke_models, tmp_path):
    before = repository_state()
    env = fourth["env"]
    models = tmp_path / "models"
    shutil.copytree(smoke_models, models)
    smoke = subprocess.run(archivetag_command("models", "smoke", "--models", str(models), "--only", NAME),
                           env=env, capture_output=True, text=True, timeout=300)
    assert smoke.returncode == 0, smoke.stderr
    assert (models / NAME / "palette.json").is_file()

    # Florence-2 stays the primary; the colours tagger is configured before RAM++. With Florence-2 disabled
    # the answer must come from the colours tagger, not RAM++.
    env = {**env, "ARCHIVETAG_TAGGERS": f"florence,{NAME},rampp", "ARCHIVETAG_DISABLED_BACKENDS": "florence",
           "ARCHIVETAG_CACHE": "off"}
    logs = tmp_path / "logs"
    servers = ("florence", "rampp", "siglip", NAME, "orchestrator")
    ports = {name: free_port() for name in servers}
    out = tmp_path / "up.out"
    with open(out, "w") as output:
        up = subprocess.Popen(
            [*archivetag_command("up", "--models", str(models), "--log-dir", str(logs), "--no-metrics"),
             *[arg for name, port in ports.items() for arg in (f"--{name}-port", str(port))]],
            stdout=output, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(out.read_text, lambda text: "services are SERVING" in text or up.poll() is not None, timeout=600,
                 describe="`up` to say the services serve")
        text = out.read_text()
        assert up.poll() is None, text
        assert "all 5 services are SERVING" in text
        assert f"{NAME:12} 127.0.0.1:{ports[NAME]}" in text

        with grpc.insecure_channel(f"127.0.0.1:{ports[NAME]}") as channel:
            info = tagger_pb2_grpc.TaggerServiceStub(channel).GetModelInfo(
                tagger_pb2.TaggerServiceGetModelInfoRequest(), timeout=30)
        assert (info.model.family, info.model.name, info.state.phase) == (NAME, "archivetag/colours-test", "serving")
        assert info.settings["max_batch_size"] == "1"
        assert info.vocabulary_size == 6

        orchestrator = f"127.0.0.1:{ports['orchestrator']}"
        status = subprocess.run(archivetag_command("status", "--target", orchestrator), env=env,
                                capture_output=True, text=True, timeout=120)
        assert status.returncode == 0, status.stderr
        assert NAME in status.stdout

        photo = encode(red_photo(), "PNG")
        with grpc.insecure_channel(orchestrator) as channel:
            stub = tagging_pb2_grpc.TaggingServiceStub(channel)
            backends = {b.name: b for b in stub.GetStatus(tagging_pb2.GetStatusRequest(), timeout=30).backends}
            answer = stub.TagImage(tagging_pb2.TagImageRequest(image={"data": photo}), timeout=120)
        assert backends[NAME].role == "fallback tagger"
        assert backends[NAME].health == tagging_pb2.BACKEND_HEALTH_SERVING
        assert answer.tagger == NAME
        assert answer.fallback == tagging_pb2.FALLBACK_REASON_DISABLED
        assert answer.tags[0].name == "red"
        assert [m.family for m in answer.models] == [NAME, "siglip"]
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            up.wait(120)

    generated = tmp_path / "generated"
    done = subprocess.run([sys.executable, str(REPO / "deploy" / "generate.py"), "--out", str(generated)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    compose = yaml.safe_load((generated / "compose.yaml").read_text())["services"]
    assert compose[NAME]["command"] == ["serve", NAME]
    assert compose["orchestrator"]["environment"][f"ARCHIVETAG_{NAME.upper()}_TARGET"] == f"{NAME}:50060"
    k8s = generated / "k8s"
    assert yaml.safe_load((k8s / NAME / "service.yaml").read_text())["spec"]["port"] == 50060
    assert NAME in yaml.safe_load((k8s / "kustomization.yaml").read_text())["resources"]

    # Nothing in the repository was changed to add it.
    assert repository_state() == before


def red_photo():
    from PIL import Image

    return Image.new("RGB", (320, 240), (205, 25, 35))
