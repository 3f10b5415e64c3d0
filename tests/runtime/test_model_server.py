"""The shared server runtime, as a client sees it: a real server subprocess on loopback.

The served function is trivial (tests/support/trivial_server.py); the model services
have their own tests with real models.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from archivetag.runtime.registry import TAGGER_SERVICE
from archivetag.v1 import common_pb2, tagger_pb2, tagger_pb2_grpc
from tests.support.image_corpus import answers_to_every_case, encode, photo
from tests.support.servers import ServerProcess, free_port, grpcurl, health_status, python_module



def trivial_server(tmp_path: Path, *args: str) -> ServerProcess:
    return ServerProcess(python_module("tests.support.trivial_server", *args), log_path=tmp_path / "server.log")


def tag(address: str, data: bytes, timeout: float = 10.0, **fields) -> tagger_pb2.TagResponse:
    with grpc.insecure_channel(address) as channel:
        return tagger_pb2_grpc.TaggerServiceStub(channel).Tag(
            tagger_pb2.TagRequest(image=common_pb2.Image(data=data), **fields), timeout=timeout
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with trivial_server(tmp_path_factory.mktemp("srv"), "--max-queue-size", "4") as srv:
        srv.wait_status(TAGGER_SERVICE, "SERVING", timeout=60)
        yield srv


def test_grpcurl_lists_health_reflection_and_the_service(server):
    listed = grpcurl(server.address, "list")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) >= {
        "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "archivetag.v1.TaggerService"
    }
    described = grpcurl(server.address, "describe", "archivetag.v1.TagRequest")
    assert "vocabulary" in described.stdout


def test_grpcurl_health_check_and_tag_call_with_base64_image(server):
    check = grpcurl(server.address, "grpc.health.v1.Health/Check", data=json.dumps({"service": TAGGER_SERVICE}))
    assert json.loads(check.stdout)["status"] == "SERVING"
    request = {"image": {"data": base64.b64encode(encode(photo(), "PNG")).decode()}}
    reply = grpcurl(server.address, "archivetag.v1.TaggerService/Tag", data=json.dumps(request))
    assert reply.returncode == 0, reply.stderr
    assert [t["name"] for t in json.loads(reply.stdout)["tags"]][0] in {"red", "green", "blue"}
    bad = grpcurl(server.address, "archivetag.v1.TaggerService/Tag",
                  data=json.dumps({"image": {"data": base64.b64encode(b"not a photo").decode()}}))
    assert bad.returncode != 0
    assert "InvalidArgument" in bad.stderr and "text, not an image" in bad.stderr


def test_every_corpus_file_gets_its_status_and_the_server_stays_serving(server):
    answers = answers_to_every_case(lambda data: tag(server.address, data))
    assert answers and all(len(reply.tags) == 3 for reply in answers)
    assert health_status(server.address, TAGGER_SERVICE) == "SERVING"


def test_a_bad_request_option_is_invalid_argument_and_the_server_stays_serving(server):
    with pytest.raises(grpc.RpcError) as info:
        tag(server.address, encode(photo(), "PNG"), vocabulary=["forbidden"])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "forbidden" in info.value.details()
    assert health_status(server.address, TAGGER_SERVICE) == "SERVING"


def test_a_message_over_the_size_limit_is_refused_cleanly(tmp_path):
    with trivial_server(tmp_path, "--max-message-mb", "1") as srv:
        srv.wait_status(TAGGER_SERVICE, "SERVING")
        with pytest.raises(grpc.RpcError) as info:
            tag(srv.address, b"\xff\xd8" + os.urandom(2 * 1024 * 1024))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert health_status(srv.address, TAGGER_SERVICE) == "SERVING"


def test_health_is_not_serving_during_a_slow_warm_up_then_serving(tmp_path):
    with trivial_server(tmp_path, "--load-seconds", "3") as srv:
        srv.wait_status("", "SERVING", timeout=30)  # the process is alive ...
        assert health_status(srv.address, TAGGER_SERVICE) == "NOT_SERVING"  # ... the model is not ready
        with pytest.raises(grpc.RpcError) as info:
            tag(srv.address, encode(photo(), "PNG"))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "loading" in info.value.details()
        srv.wait_status(TAGGER_SERVICE, "SERVING", timeout=30)
        assert len(tag(srv.address, encode(photo(), "PNG")).tags) == 3


def test_concurrent_calls_are_batched_and_a_full_queue_is_resource_exhausted(tmp_path):
    log = tmp_path / "batches.jsonl"
    args = ("--infer-seconds", "0.3", "--max-batch-size", "4", "--max-queue-size", "6", "--batch-log", str(log))
    with trivial_server(tmp_path, *args) as srv:
        srv.wait_status(TAGGER_SERVICE, "SERVING")
        image = encode(photo(), "PNG")

        def call(_):
            try:
                tag(srv.address, image)
                return "OK"
            except grpc.RpcError as exc:
                return f"{exc.code().name}: {exc.details()}"

        with ThreadPoolExecutor(24) as pool:
            outcomes = list(pool.map(call, range(24)))
        assert outcomes.count("OK") >= 6
        refused = [o for o in outcomes if o != "OK"]
        assert refused and all(o.startswith("RESOURCE_EXHAUSTED") and "queue is full" in o for o in refused)
        sizes = [json.loads(line)["size"] for line in log.read_text().splitlines()]
        assert max(sizes) > 1  # concurrent calls shared batches
        assert health_status(srv.address, TAGGER_SERVICE) == "SERVING"


def model_state(address: str):
    with grpc.insecure_channel(address) as channel:
        return tagger_pb2_grpc.TaggerServiceStub(channel).GetModelInfo(
            tagger_pb2.TaggerServiceGetModelInfoRequest(), timeout=5
        ).state


@pytest.mark.parametrize("hang_flag, reason", [
    ("--hang-file", "inference stalled"),  # a hung inference call
    ("--decode-hang-file", "decoding stalled"),  # a wedged decode (runs in the decode pool)
])
def test_watchdog_turns_not_serving_on_a_stall_and_back(tmp_path, hang_flag, reason):
    hang = tmp_path / "hang"
    with trivial_server(tmp_path, hang_flag, str(hang), "--stall-seconds", "1") as srv:
        srv.wait_status(TAGGER_SERVICE, "SERVING")
        hang.touch()
        with ThreadPoolExecutor(1) as pool:
            stuck = pool.submit(tag, srv.address, encode(photo(), "PNG"), 30)
            srv.wait_status(TAGGER_SERVICE, "NOT_SERVING", timeout=15)
            state = model_state(srv.address)
            assert state.phase == "unhealthy"
            assert reason in state.reason
            hang.unlink()
            srv.wait_status(TAGGER_SERVICE, "SERVING", timeout=15)
            assert len(stuck.result(30).tags) == 3  # the call caught in the stall still gets its answer


def test_calls_over_the_concurrency_limit_are_refused_while_health_checks_still_answer(tmp_path):
    hang, log = tmp_path / "hang", tmp_path / "batches.jsonl"
    args = ("--hang-file", str(hang), "--max-concurrent-rpcs", "2", "--max-batch-size", "2",
            "--max-queue-delay-ms", "3000", "--batch-log", str(log))
    with trivial_server(tmp_path, *args) as srv:
        srv.wait_status(TAGGER_SERVICE, "SERVING")
        hang.touch()
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(tag, srv.address, encode(photo(), "PNG"), 60) for _ in range(2)]
            try:
                wait_for_batch_of(log, 2)  # both calls are inside the server, held by the hung batch
                with pytest.raises(grpc.RpcError) as refused:
                    tag(srv.address, encode(photo(), "PNG"), 10)
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "MAX_CONCURRENT_RPCS" in refused.value.details()
                assert health_status(srv.address, TAGGER_SERVICE) == "SERVING"  # Check is never refused
            finally:
                hang.unlink()
            assert all(len(f.result(30).tags) == 3 for f in held)
        assert len(tag(srv.address, encode(photo(), "PNG")).tags) == 3


def wait_for_batch_of(log: Path, size: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    sizes: list[int] = []
    while time.monotonic() < deadline:
        sizes = [json.loads(line)["size"] for line in log.read_text().splitlines()] if log.exists() else []
        if size in sizes:
            return
        time.sleep(0.05)
    raise TimeoutError(f"no batch of {size} within {timeout} s; batches: {sizes}")


def test_watchdog_turns_not_serving_after_consecutive_failures_and_recovers(tmp_path):
    fail = tmp_path / "fail"
    args = ("--fail-file", str(fail), "--max-failed-batches", "2", "--recovery-probe-seconds", "0.5")
    with trivial_server(tmp_path, *args) as srv:
        srv.wait_status(TAGGER_SERVICE, "SERVING")
        fail.touch()
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as info:
                tag(srv.address, encode(photo(), "PNG"))
            assert info.value.code() == grpc.StatusCode.INTERNAL and "simulated device failure" in info.value.details()
        srv.wait_status(TAGGER_SERVICE, "NOT_SERVING", timeout=10)
        state = model_state(srv.address)
        assert state.phase == "unhealthy" and "failed in a row" in state.reason
        fail.unlink()
        srv.wait_status(TAGGER_SERVICE, "SERVING", timeout=10)  # the recovery probe passed
        assert len(tag(srv.address, encode(photo(), "PNG")).tags) == 3


def test_sigterm_lets_in_flight_calls_finish_refuses_new_ones_and_exits_0(tmp_path):
    with trivial_server(tmp_path, "--infer-seconds", "2", "--max-batch-size", "1", "--grace-seconds", "20") as srv:
        srv.wait_status(TAGGER_SERVICE, "SERVING")
        image = encode(photo(), "PNG")
        with ThreadPoolExecutor(3) as pool:
            in_flight = [pool.submit(tag, srv.address, image, 30) for _ in range(3)]
            time.sleep(0.5)  # all three are inside the server (one infers, two queue)
            srv.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while health_status(srv.address, TAGGER_SERVICE, timeout=1) == "SERVING" and time.monotonic() < deadline:
                time.sleep(0.05)
            with pytest.raises(grpc.RpcError) as refused:
                tag(srv.address, image, 5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            replies = [f.result(timeout=30) for f in in_flight]
        assert all(len(r.tags) == 3 for r in replies)
        assert srv.proc.wait(30) == 0


def test_a_health_watcher_does_not_hold_up_shutdown(tmp_path):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with trivial_server(tmp_path, "--grace-seconds", "30") as srv:
        srv.wait_status(TAGGER_SERVICE, "SERVING")
        seen = []
        channel = grpc.insecure_channel(srv.address)
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=TAGGER_SERVICE))

        def read():
            try:
                for reply in watch:
                    seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
            except grpc.RpcError:
                pass

        reader = threading.Thread(target=read)
        reader.start()
        time.sleep(0.3)
        started = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(20) == 0
        assert time.monotonic() - started < 10  # not the 30 s grace
        reader.join(5)
        channel.close()
        assert seen[0] == "SERVING" and seen[-1] == "NOT_SERVING"


def test_metrics_count_requests_by_method_and_code(tmp_path):
    port = free_port()
    srv = ServerProcess(python_module("tests.support.trivial_server"), log_path=tmp_path / "server.log", metrics_port=port)
    with srv:
        srv.wait_status(TAGGER_SERVICE, "SERVING")
        tag(srv.address, encode(photo(), "PNG"))
        with pytest.raises(grpc.RpcError):
            tag(srv.address, b"garbage")
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'archivetag_requests_total{code="OK",method="/archivetag.v1.TaggerService/Tag"} 1.0' in text
    assert 'archivetag_requests_total{code="INVALID_ARGUMENT",method="/archivetag.v1.TaggerService/Tag"} 1.0' in text
    for name in ("archivetag_queue_wait_seconds", "archivetag_batch_size", "archivetag_inference_seconds"):
        assert f'{name}_count{{model="trivial"}}' in text


def test_a_port_already_in_use_is_a_clear_error(tmp_path, server):
    srv = ServerProcess(python_module("tests.support.trivial_server"), port=server.port, log_path=tmp_path / "second.log")
    srv.start()
    assert srv.proc.wait(30) == 2
    assert "cannot listen" in srv.log_tail()
