"""A real `archivetag serve florence` process on the smoke model, with flash_attn and einops unimportable."""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
import pytest

from archivetag.stack import archivetag_command
from archivetag.runtime.registry import TAGGER_SERVICE
from archivetag.v1 import common_pb2, tagger_pb2, tagger_pb2_grpc
from tests.florence import tiny_models_dir
from tests.support.image_corpus import encode, photo
from tests.support.servers import ServerProcess, free_port, health_status, metric
from tests.support.waiting import wait_for

BLOCKER = """\
import sys
# These packages must never be needed: importing either now raises ImportError.
sys.modules["flash_attn"] = None
sys.modules["einops"] = None
"""


def florence_server(logs: Path, *args: str, metrics_port: int = 0) -> ServerProcess:
    (logs / "sitecustomize.py").write_text(BLOCKER)
    argv = archivetag_command("serve", "florence", "--models", str(tiny_models_dir()), "--florence-max-new-tokens", "8",
                              "--florence-num-beams", "1", "--stall-seconds", "60", *args)
    env = {"PYTHONPATH": f"{logs}:{Path(__file__).resolve().parents[2]}", "HF_HUB_OFFLINE": "1"}
    return ServerProcess(argv, env=env, log_path=logs / "florence.log", metrics_port=metrics_port)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with florence_server(tmp_path_factory.mktemp("florence-server")) as srv:
        srv.wait_status(TAGGER_SERVICE, "SERVING", timeout=180)
        yield srv


TAG_METHOD = "/archivetag.v1.TaggerService/Tag"


def request(**fields) -> tagger_pb2.TagRequest:
    return tagger_pb2.TagRequest(image=common_pb2.Image(data=encode(photo(), "JPEG")), **fields)


def test_serves_with_flash_attn_and_einops_unimportable(server, tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import importlib.util, sys\ntry:\n    import einops\nexcept ImportError:\n    print('blocked')\n")
    import subprocess

    env = {**__import__("os").environ, "PYTHONPATH": server.env["PYTHONPATH"]}
    assert subprocess.run([sys.executable, str(probe)], env=env, capture_output=True, text=True).stdout.strip() == "blocked"
    with grpc.insecure_channel(server.address) as channel:
        reply = tagger_pb2_grpc.TaggerServiceStub(channel).Tag(request(), timeout=60)
    assert reply.caption
    assert all(word.isalpha() for word in reply.caption.split())
    assert reply.tags
    assert all(0 < t.confidence <= 1 for t in reply.tags)
    assert reply.model.family == "florence"
    assert reply.model.smoke
    assert "smoke" in reply.model.name
    assert "flash_attn" not in server.log_tail(20000)


def test_context_is_echoed_and_unknown_tags_are_invalid_argument(server):
    with grpc.insecure_channel(server.address) as channel:
        stub = tagger_pb2_grpc.TaggerServiceStub(channel)
        asked = request()
        asked.context.view_type, asked.context.region = "interior", "Wallonia"
        reply = stub.Tag(asked, timeout=60)
        assert reply.context.view_type == "interior"
        assert reply.context.region == "Wallonia"
        with pytest.raises(grpc.RpcError) as info:
            stub.Tag(request(vocabulary=["no-such-tag"]), timeout=60)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "no-such-tag" in info.value.details()
        model_info = stub.GetModelInfo(tagger_pb2.TaggerServiceGetModelInfoRequest(), timeout=10)
        assert model_info.vocabulary_size > 100
        assert model_info.settings["task"] == "<MORE_DETAILED_CAPTION>"


def test_a_cancelled_request_inside_a_batch_does_not_break_the_others(tmp_path):
    """A batch closes when it holds 4 live requests, or 15 s after its first one arrived (long
    enough for the steps below on a busy machine; the warm-up inference waits it out once)."""
    metrics_port = free_port()
    args = ("--max-batch-size", "4", "--max-queue-delay-ms", "15000")
    with florence_server(tmp_path, *args, metrics_port=metrics_port) as srv:
        srv.wait_status(TAGGER_SERVICE, "SERVING", timeout=180)
        with grpc.insecure_channel(srv.address) as channel:
            stub = tagger_pb2_grpc.TaggerServiceStub(channel)
            calls = [stub.Tag.future(request(), timeout=300) for _ in range(3)]
            wait_for(lambda: metric(metrics_port, "archivetag_queue_depth", model="florence"), lambda d: d == 3,
                     describe="three requests queued for one batch (queue depth)")
            assert calls[1].cancel()
            wait_for(lambda: metric(metrics_port, "archivetag_requests_total", method=TAG_METHOD), lambda n: n == 1,
                     describe="the server to end the cancelled call (finished calls)")
            calls += [stub.Tag.future(request(), timeout=300) for _ in range(2)]  # the batch fills with these
            answered = [calls[i].result() for i in (0, 2, 3, 4)]
            assert all(reply.caption for reply in answered)
            assert all(reply.tags for reply in answered)
            assert [reply.timings.batch_size for reply in answered] == [4, 4, 4, 4]  # one batch, beside the cancelled one
            with pytest.raises(grpc.FutureCancelledError):
                calls[1].result()
        assert health_status(srv.address, TAGGER_SERVICE) == "SERVING"

