"""The control plane never imports torch, transformers or timm: a container probe, `status`, `tag`
and the orchestrator and SigLIP servers stay small and start fast. Each command runs as a real
subprocess whose interpreter reports, at exit, which heavy modules it had imported."""

from __future__ import annotations

import json
import os
import subprocess

import grpc
import pytest

from archivetag.runtime.registry import VIEW_TYPE_SERVICE
from archivetag.stack import archivetag_command
from archivetag.v1 import tagging_pb2, tagging_pb2_grpc, view_type_pb2, view_type_pb2_grpc
from tests.support.image_corpus import encode, photo
from tests.support.servers import ServerProcess

HEAVY = ("torch", "transformers", "timm")

# Imported by every interpreter whose PYTHONPATH holds its folder: writes the heavy modules loaded
# when the interpreter exits (normally, or through a handled SIGTERM).
REPORTER = f"""
import atexit, json, os, sys

def _report():
    with open(os.environ["HEAVY_MODULES_REPORT"], "w") as out:
        json.dump(sorted(m for m in {HEAVY!r} if m in sys.modules), out)

atexit.register(_report)
"""


@pytest.fixture()
def reporting(tmp_path):
    """env for a subprocess that reports its heavy imports, and a function reading the report."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(REPORTER)
    report = tmp_path / "heavy.json"
    env = {**os.environ, "PYTHONPATH": f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "HEAVY_MODULES_REPORT": str(report)}

    def heavy() -> list[str]:
        assert report.exists(), "the subprocess did not report its imports"
        found = json.loads(report.read_text())
        report.unlink()
        return found

    return env, heavy


def run(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(archivetag_command(*args), env=env, capture_output=True, text=True, timeout=120)


def stop(server: ServerProcess) -> None:
    assert server.terminate(60) == 0, server.log_tail()


def test_the_report_sees_torch_where_a_command_needs_it(reporting, tmp_path):
    env, heavy = reporting
    done = run(env, "models", "random-rampp", str(tmp_path / "r.pth"), "--size", "tiny", "--tags", "3")
    assert done.returncode == 0, done.stderr
    assert "torch" in heavy()


def test_help_status_tag_probe_similar_and_duplicates_import_no_heavy_module(reporting):
    env, heavy = reporting
    for args in (("--help",), ("tag", "--help"), ("up", "--help"), ("models", "--help"),
                 ("status", "--target", "127.0.0.1:9", "--token", "x" * 16),
                 ("probe", "--probe-address", "127.0.0.1:9", "--probe-timeout-seconds", "0.5"),
                 ("similar", "/nonexistent/photo.jpg"), ("duplicates", "--db", "/nonexistent/results.sqlite")):
        done = run(env, *args)
        assert done.returncode in (0, 1, 2), (args, done.stderr)
        assert heavy() == [], args


def test_siglip_and_orchestrator_serve_without_heavy_modules(reporting, smoke_models, tmp_path):
    env, heavy = reporting
    siglip = ServerProcess(archivetag_command("serve", "siglip", "--models", str(smoke_models)), env=env,
                           log_path=tmp_path / "siglip.log")
    with siglip:
        siglip.wait_status(VIEW_TYPE_SERVICE, "SERVING", timeout=120)
        with grpc.insecure_channel(siglip.address) as channel:
            reply = view_type_pb2_grpc.ViewTypeServiceStub(channel).Classify(
                view_type_pb2.ClassifyRequest(image={"data": encode(photo(), "JPEG")}), timeout=60)
        assert reply.view_type
        probe = run(env, "probe", "--probe-address", siglip.address, "--probe-service", VIEW_TYPE_SERVICE)
        assert probe.returncode == 0, probe.stderr
        assert heavy() == []
        orchestrator = ServerProcess(
            archivetag_command("serve", "orchestrator", "--no-auth", "--siglip-target", siglip.address,
                               "--disabled-backends", "florence,rampp"),
            env=env, log_path=tmp_path / "orchestrator.log")
        with orchestrator:
            orchestrator.wait_status("", "SERVING", timeout=60)  # not ready: no tagger is enabled
            with grpc.insecure_channel(orchestrator.address) as channel:
                status = tagging_pb2_grpc.TaggingServiceStub(channel).GetStatus(tagging_pb2.GetStatusRequest(),
                                                                                timeout=10)
            assert {b.name for b in status.backends} == {"florence", "rampp", "siglip"}
            stop(orchestrator)
            assert heavy() == []
        stop(siglip)
        assert heavy() == []
