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
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from PIL import Image

from archivetag.runtime.batcher import BULK, INTERACTIVE, LANE_METADATA_KEY
from archivetag.runtime.errors import read_call_error
from archivetag.runtime.registry import TAGGER_SERVICE
from archivetag.v1 import common_pb2, tagger_pb2, tagger_pb2_grpc
from tests.support.image_corpus import answers_to_every_case, encode, photo
from tests.support.servers import ServerProcess, free_port, grpcurl, health_status, metric, python_module
from tests.support.waiting import wait_for


def trivial_server(tmp_path: Path, *args: str, metrics_port: int = 0) -> ServerProcess:
    return ServerProcess(python_module("tests.support.trivial_server", *args), log_path=tmp_path / "server.log",
                         metrics_port=metrics_port)


def batch_sizes(log: Path) -> list[int]:
    return [json.loads(line)["size"] for line in log.read_text().splitlines()] if log.exists() else []


def tag(address: str, data: bytes, timeout: float = 60.0, **fields) -> tagger_pb2.TagResponse:
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


def test_reflection_v1_answers_as_well_as_v1alpha(server):
    from grpc_reflection.v1alpha import reflection_pb2

    def services(path: str) -> set[str]:
        with grpc.insecure_channel(server.address) as channel:
            call = channel.stream_stream(
                path, request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            (reply,) = list(call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
            return {s.name for s in reply.list_services_response.service}

    v1 = services("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
    assert "archivetag.v1.TaggerService" in v1
    assert v1 == services("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")


def test_a_bad_image_carries_error_info_with_its_reason(server):
    from archivetag.runtime.errors import read_call_error

    with pytest.raises(grpc.RpcError) as caught:
        tag(server.address, b"%PDF-1.4 not a photo")
    error = read_call_error(caught.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "IMAGE_FORMAT_UNSUPPORTED"


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
    assert "InvalidArgument" in bad.stderr
    assert "text, not an image" in bad.stderr


def test_every_corpus_file_gets_its_status_and_the_server_stays_serving(server):
    answers = answers_to_every_case(lambda data: tag(server.address, data))
    assert answers
    assert all(len(reply.tags) == 3 for reply in answers)
    assert health_status(server.address, TAGGER_SERVICE) == "SERVING"


def test_a_bad_request_option_is_invalid_argument_and_the_server_stays_serving(server):
    with pytest.raises(grpc.RpcError) as info:
        tag(server.address, encode(photo(), "PNG"), vocabulary=["forbidden"])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "forbidden" in info.value.details()
    assert health_status(server.address, TAGGER_SERVICE) == "SERVING"


def test_an_image_over_the_image_limit_is_invalid_argument_and_the_transport_limit_sits_above_it(tmp_path):
    from archivetag.runtime.channels import MESSAGE_HEADROOM_BYTES
    from archivetag.runtime.errors import read_call_error

    limit = 1024 * 1024
    with trivial_server(tmp_path, "--max-image-bytes", str(limit)) as srv:
        srv.wait_status(TAGGER_SERVICE, "SERVING")
        with pytest.raises(grpc.RpcError) as info:
            tag(srv.address, b"\xff\xd8" + os.urandom(limit))  # just over the image limit
        error = read_call_error(info.value)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert error.reason == "IMAGE_TOO_LARGE"
        assert error.metadata["limit_bytes"] == str(limit)
        with pytest.raises(grpc.RpcError) as info:
            tag(srv.address, os.urandom(limit + MESSAGE_HEADROOM_BYTES + 1))  # past the transport limit
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert health_status(srv.address, TAGGER_SERVICE) == "SERVING"


def test_health_is_not_serving_during_a_slow_warm_up_then_serving(tmp_path):
    loading = tmp_path / "still-loading"
    loading.touch()
    with trivial_server(tmp_path, "--load-gate-file", str(loading)) as srv:
        srv.wait_status("", "SERVING", timeout=120)  # the process is alive ...
        assert health_status(srv.address, TAGGER_SERVICE) == "NOT_SERVING"  # ... the model is not ready
        with pytest.raises(grpc.RpcError) as info:
            tag(srv.address, encode(photo(), "PNG"))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "loading" in info.value.details()
        loading.unlink()  # the load finishes
        srv.wait_status(TAGGER_SERVICE, "SERVING", timeout=120)
        assert len(tag(srv.address, encode(photo(), "PNG")).tags) == 3


def test_concurrent_calls_are_batched_and_a_full_queue_is_resource_exhausted(tmp_path):
    log, hang = tmp_path / "batches.jsonl", tmp_path / "hang"
    args = ("--hang-file", str(hang), "--max-batch-size", "4", "--max-queue-size", "6", "--batch-log", str(log))
    with trivial_server(tmp_path, *args) as srv:
        srv.wait_status(TAGGER_SERVICE, "SERVING")
        warm_up = len(batch_sizes(log))
        hang.touch()  # the first batch stays in inference: the queue behind it fills up
        image = encode(photo(), "PNG")

        def call(_):
            try:
                tag(srv.address, image, timeout=300)
                return "OK"
            except grpc.RpcError as exc:
                return f"{exc.code().name}: {exc.details()}"

        with ThreadPoolExecutor(24) as pool:
            calls = [pool.submit(call, i) for i in range(24)]
            # At most 4 (the hung batch) + 6 (the queue) are held; every other call is refused.
            wait_for(lambda: sum(c.done() for c in calls), lambda done: done >= 14, timeout=300,
                     describe="14 of 24 calls refused while the model hangs (calls answered)")
            held = batch_sizes(log)[warm_up:]
            hang.unlink()
            outcomes = [c.result(timeout=300) for c in calls]
        assert len(held) == 1  # one batch was in inference while the others queued
        ok = outcomes.count("OK")
        # The hung batch and the full queue (6): a call still being decoded when the flood came counts
        # against the queue too (decode + queue is one admission), so the queue may hold one of the batch.
        assert 6 <= ok <= held[0] + 6, outcomes
        refused = [o for o in outcomes if o != "OK"]
        assert len(refused) == 24 - ok
        assert all(o.startswith("RESOURCE_EXHAUSTED") for o in refused), refused
        assert all("queue is full" in o for o in refused), refused
        later = batch_sizes(log)[warm_up + 1:]
        assert sum(later) == ok - held[0]  # every admitted call was inferred: nothing lost
        assert later[0] == min(4, ok - held[0])  # the queued calls shared batches
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
            stuck = pool.submit(tag, srv.address, encode(photo(), "PNG"), 300)
            srv.wait_status(TAGGER_SERVICE, "NOT_SERVING", timeout=120)
            state = model_state(srv.address)
            assert state.phase == "unhealthy"
            assert reason in state.reason
            hang.unlink()
            srv.wait_status(TAGGER_SERVICE, "SERVING", timeout=120)
            assert len(stuck.result(300).tags) == 3  # the call caught in the stall still gets its answer


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
                # both calls are inside the server, held by the hung batch
                wait_for(lambda: batch_sizes(log), lambda sizes: 2 in sizes, describe="a batch of 2")
                with pytest.raises(grpc.RpcError) as refused:
                    tag(srv.address, encode(photo(), "PNG"), 10)
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "MAX_CONCURRENT_RPCS" in refused.value.details()
                assert health_status(srv.address, TAGGER_SERVICE) == "SERVING"  # Check is never refused
            finally:
                hang.unlink()
            assert all(len(f.result(30).tags) == 3 for f in held)
        assert len(tag(srv.address, encode(photo(), "PNG")).tags) == 3


def test_watchdog_turns_not_serving_after_consecutive_failures_and_recovers(tmp_path):
    fail = tmp_path / "fail"
    args = ("--fail-file", str(fail), "--max-failed-batches", "2", "--recovery-probe-seconds", "0.5")
    with trivial_server(tmp_path, *args) as srv:
        srv.wait_status(TAGGER_SERVICE, "SERVING")
        fail.touch()
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as info:
                tag(srv.address, encode(photo(), "PNG"))
            assert info.value.code() == grpc.StatusCode.INTERNAL
            assert "simulated device failure" in info.value.details()
        srv.wait_status(TAGGER_SERVICE, "NOT_SERVING", timeout=120)
        state = model_state(srv.address)
        assert state.phase == "unhealthy"
        assert "failed in a row" in state.reason
        fail.unlink()
        srv.wait_status(TAGGER_SERVICE, "SERVING", timeout=120)  # the recovery probe passed
        assert len(tag(srv.address, encode(photo(), "PNG")).tags) == 3


def batch_colours(log: Path) -> list[list[str]]:
    return [json.loads(line)["colours"] for line in log.read_text().splitlines()] if log.exists() else []


def tag_in_lane(address: str, data: bytes, lane: str, timeout: float = 300.0) -> tagger_pb2.TagResponse:
    with grpc.insecure_channel(address) as channel:
        return tagger_pb2_grpc.TaggerServiceStub(channel).Tag(
            tagger_pb2.TagRequest(image=common_pb2.Image(data=data)), timeout=timeout,
            metadata=((LANE_METADATA_KEY, lane),),
        )


def test_the_lane_metadata_puts_an_interactive_call_ahead_of_queued_bulk_calls(tmp_path):
    hang, log, metrics_port = tmp_path / "hang", tmp_path / "batches.jsonl", free_port()
    args = ("--hang-file", str(hang), "--batch-log", str(log), "--max-batch-size", "4")
    red, green, blue = (encode(Image.new("RGB", (48, 48), c), "PNG") for c in ((220, 10, 10), (10, 220, 10), (10, 10, 220)))
    with trivial_server(tmp_path, *args, metrics_port=metrics_port) as srv:
        srv.wait_status(TAGGER_SERVICE, "SERVING")
        warm_up = len(batch_colours(log))
        hang.touch()
        with ThreadPoolExecutor(6) as pool:
            held = pool.submit(tag_in_lane, srv.address, blue, BULK)
            wait_for(lambda: batch_colours(log)[warm_up:], lambda seen: seen == [["blue"]],
                     describe="the blue call in inference")
            bulk = [pool.submit(tag_in_lane, srv.address, red, BULK) for _ in range(4)]
            wait_for(lambda: metric(metrics_port, "archivetag_queue_depth", model="trivial"), lambda n: n == 4,
                     describe="four bulk calls queued")
            interactive = pool.submit(tag_in_lane, srv.address, green, INTERACTIVE)
            wait_for(lambda: metric(metrics_port, "archivetag_queue_depth", model="trivial"), lambda n: n == 5,
                     describe="the interactive call queued behind them")
            hang.unlink()
            assert interactive.result(300).tags[0].name == "green"
            assert [f.result(300).tags[0].name for f in [held, *bulk]] == ["blue", "red", "red", "red", "red"]
        assert batch_colours(log)[warm_up + 1:] == [["green", "red", "red", "red"], ["red"]]
        assert metric(metrics_port, "archivetag_queue_wait_seconds_count", model="trivial", lane="bulk") == 5
        assert metric(metrics_port, "archivetag_queue_wait_seconds_count", model="trivial", lane="interactive") >= 1


def test_an_unknown_lane_is_refused_with_invalid_argument(server):
    with pytest.raises(grpc.RpcError) as refused:
        tag_in_lane(server.address, encode(photo(), "PNG"), "urgent", timeout=60)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "archivetag-lane" in refused.value.details()
    assert len(tag(server.address, encode(photo(), "PNG")).tags) == 3  # still serving


def test_sigterm_lets_in_flight_calls_finish_refuses_new_ones_and_exits_0(tmp_path):
    hang, log, metrics_port = tmp_path / "hang", tmp_path / "batches.jsonl", free_port()
    args = ("--hang-file", str(hang), "--batch-log", str(log), "--max-batch-size", "1", "--grace-seconds", "600")
    with trivial_server(tmp_path, *args, metrics_port=metrics_port) as srv:
        srv.wait_status(TAGGER_SERVICE, "SERVING")
        warm_up = len(batch_sizes(log))
        hang.touch()  # in-flight calls stay in flight until the test lets them finish
        image = encode(photo(), "PNG")
        with ThreadPoolExecutor(3) as pool:
            in_flight = [pool.submit(tag, srv.address, image, 300) for _ in range(3)]
            wait_for(lambda: (batch_sizes(log)[warm_up:], metric(metrics_port, "archivetag_queue_depth", model="trivial")),
                     lambda seen: seen == ([1], 2.0), timeout=120,
                     describe="one call in inference and two queued (batches, queue depth)")
            srv.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: health_status(srv.address, TAGGER_SERVICE, timeout=5), lambda s: s != "SERVING",
                     timeout=120, describe="health to leave SERVING after SIGTERM")
            with pytest.raises(grpc.RpcError) as refused:
                tag(srv.address, image, 30)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert not any(f.done() for f in in_flight)  # still held by the hung model, not cut off
            hang.unlink()
            replies = [f.result(timeout=300) for f in in_flight]
        assert all(len(r.tags) == 3 for r in replies)
        assert srv.proc.wait(120) == 0


def test_a_health_watcher_does_not_hold_up_shutdown(tmp_path):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with trivial_server(tmp_path, "--grace-seconds", "3600") as srv:
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
        wait_for(lambda: list(seen), lambda s: s == ["SERVING"], describe="the watcher's first answer")
        srv.proc.send_signal(signal.SIGTERM)
        # Exits long before the hour of grace it would wait for a call it counted as in flight.
        assert srv.proc.wait(300) == 0
        reader.join(60)
        channel.close()
        assert seen[0] == "SERVING"
        assert seen[-1] == "NOT_SERVING"


def test_metrics_count_requests_by_method_and_code(tmp_path):
    port = free_port()
    srv = ServerProcess(python_module("tests.support.trivial_server"), log_path=tmp_path / "server.log", metrics_port=port)
    with srv:
        srv.wait_status(TAGGER_SERVICE, "SERVING")
        tag(srv.address, encode(photo(), "PNG"))
        with pytest.raises(grpc.RpcError):
            tag(srv.address, b"garbage")
        # The server counts a call once its status is sent: the client may see the status first.
        text = wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode(),
                        lambda text: 'code="INVALID_ARGUMENT"' in text, describe="both calls counted (metrics)")
    assert 'archivetag_requests_total{code="OK",method="/archivetag.v1.TaggerService/Tag"} 1.0' in text
    assert 'archivetag_requests_total{code="INVALID_ARGUMENT",method="/archivetag.v1.TaggerService/Tag"} 1.0' in text
    assert 'archivetag_queue_wait_seconds_count{lane="interactive",model="trivial"}' in text
    for name in ("archivetag_batch_size", "archivetag_inference_seconds"):
        assert f'{name}_count{{model="trivial"}}' in text


def test_a_port_already_in_use_is_a_clear_error(tmp_path, server):
    srv = ServerProcess(python_module("tests.support.trivial_server"), port=server.port, log_path=tmp_path / "second.log")
    srv.start()
    assert srv.proc.wait(300) == 2
    assert "cannot listen" in srv.log_tail()


@pytest.mark.parametrize("what, payload", [
    ("garbage bytes", b"\xff\xfe not a protobuf message \x00\x01"),
    ("a truncated message", tagger_pb2.TagRequest(image=common_pb2.Image(data=b"x" * 100)).SerializeToString()[:40]),
    ("a string that is not UTF-8",
     tagger_pb2.TagRequest(vocabulary=["cat"]).SerializeToString().replace(b"cat", b"c\xffT")),
])
def test_bad_protobuf_is_invalid_argument_naming_the_type_and_the_service_keeps_serving(server, what, payload):
    with grpc.insecure_channel(server.address) as channel:
        raw = channel.unary_unary(f"/{TAGGER_SERVICE}/Tag", request_serializer=None,
                                  response_deserializer=tagger_pb2.TagResponse.FromString)
        with pytest.raises(grpc.RpcError) as caught:
            raw(payload, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (what, caught.value.details())
    assert "not a valid archivetag.v1.TagRequest" in caught.value.details()
    assert read_call_error(caught.value).reason == "REQUEST_MALFORMED"
    assert health_status(server.address, TAGGER_SERVICE) == "SERVING"
    assert tag(server.address, encode(photo(), "PNG")).tags  # and the next call is answered


def test_a_call_whose_deadline_passed_or_whose_caller_left_is_counted_so_not_as_unknown(tmp_path):
    hang, metrics_port = tmp_path / "hang", free_port()
    with trivial_server(tmp_path, "--hang-file", str(hang), metrics_port=metrics_port) as srv:
        srv.wait_status(TAGGER_SERVICE, "SERVING", timeout=60)
        hang.touch()  # inference blocks: the calls below wait until their deadline or their caller gives up
        try:
            with pytest.raises(grpc.RpcError) as expired:
                tag(srv.address, encode(photo(), "PNG"), timeout=0.5)
            assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            with grpc.insecure_channel(srv.address) as channel:
                future = tagger_pb2_grpc.TaggerServiceStub(channel).Tag.future(
                    tagger_pb2.TagRequest(image=common_pb2.Image(data=encode(photo(), "PNG"))), timeout=60)
                wait_for(lambda: metric(metrics_port, "archivetag_queue_depth", model="trivial"), lambda n: n >= 1,
                         timeout=60, describe="the second call queued")
                future.cancel()
            method = "/archivetag.v1.TaggerService/Tag"
            for code in ("DEADLINE_EXCEEDED", "CANCELLED"):
                wait_for(lambda code=code: metric(metrics_port, "archivetag_requests_total", method=method, code=code),
                         lambda n: n >= 1, timeout=60, describe=f"a {code} call counted")
            assert metric(metrics_port, "archivetag_requests_total", method=method, code="UNKNOWN") == 0
        finally:
            hang.unlink()
