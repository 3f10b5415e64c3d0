"""The orchestrator with real model services (smoke models: real architectures, random
weights) on loopback, real gRPC, real processes killed and stopped."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import grpc
import pytest

from archivetag.v1 import tagging_pb2, tagging_pb2_grpc
from tests.conftest import model_service, orchestrator
from tests.support.image_corpus import encode, photo
from tests.support.servers import free_port, health_status
from tests.support.waiting import wait_for

TOKENS = {"desk": "desk-token-0123456789abcdef", "import": "import-token-0123456789abcdef"}
TOKEN_ARGS = ("--api-tokens", ",".join(f"{name}:{token}" for name, token in TOKENS.items()))
# Keep smoke captions short so the tests spend their time on behaviour, not generation.
FLORENCE_FAST = ("--florence-max-new-tokens", "8", "--florence-num-beams", "1")
TAGGING = "archivetag.v1.TaggingService"


def image_bytes(seed: int = 0) -> bytes:
    return encode(photo(96 + seed % 7, 64 + seed % 5), "PNG")


def stub(address: str) -> tagging_pb2_grpc.TaggingServiceStub:
    return tagging_pb2_grpc.TaggingServiceStub(grpc.insecure_channel(address))


def auth(client: str = "desk") -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[client]}"),)


def tag_request(seed: int = 0, **fields) -> tagging_pb2.TagImageRequest:
    request = tagging_pb2.TagImageRequest(**fields)
    request.image.data = image_bytes(seed)
    return request


def targets(**addresses: str) -> tuple[str, ...]:
    return tuple(arg for name, address in addresses.items() for arg in (f"--{name}-target", address))


def backend(status: tagging_pb2.GetStatusResponse, name: str) -> tagging_pb2.BackendStatus:
    return next(b for b in status.backends if b.name == name)


SERVING, UNREACHABLE = "SERVING", "UNREACHABLE"
ALL_SERVING = {"florence": SERVING, "rampp": SERVING, "siglip": SERVING}


def wait_health(address: str, metadata=(), **want: str) -> None:
    """Wait until the orchestrator's own view (its health watch, not the backends' health) shows
    each named backend in the wanted health: the watch learns it a moment after the backend changes."""

    def seen() -> dict[str, str]:
        status = stub(address).GetStatus(tagging_pb2.GetStatusRequest(), metadata=metadata, timeout=10)
        return {b.name: tagging_pb2.BackendHealth.Name(b.health).removeprefix("BACKEND_HEALTH_") for b in status.backends}

    wait_for(seen, lambda health: all(health.get(name) == h for name, h in want.items()), timeout=120,
             describe=f"backend health {want} in GetStatus", ignore=(grpc.RpcError,))


@contextmanager
def model_services(smoke_models, logs, florence_args=FLORENCE_FAST, *every: str):
    """Florence-2, RAM++ and SigLIP services (each also given `every`), SERVING, by name; stopped after."""
    started = [
        model_service("florence", smoke_models, logs, *florence_args, *every).start(),
        model_service("rampp", smoke_models, logs, *every).start(),
        model_service("siglip", smoke_models, logs, *every).start(),
    ]
    try:
        for server, health in zip(started, ("archivetag.v1.TaggerService",) * 2 + ("archivetag.v1.ViewTypeService",)):
            server.wait_status(health, "SERVING", timeout=180)
        yield dict(zip(("florence", "rampp", "siglip"), started))
    finally:
        for server in started:
            server.__exit__(None, None, None)


@pytest.fixture(scope="module")
def services(smoke_models, tmp_path_factory):
    """Shared RAM++ and SigLIP services, and a Florence-2 service for the tests that do not kill it.

    Batches of 8, not the CPU default of 1: the smoke models cost mostly per call, so batching is
    what lets the load test's 2000 images through on a busy CPU (the default: tests/siglip)."""
    with model_services(smoke_models, tmp_path_factory.mktemp("services"), FLORENCE_FAST,
                        "--max-batch-size", "8") as started:
        yield started


@pytest.fixture(scope="module")
def front(services, tmp_path_factory):
    """An orchestrator in front of the shared services, with auth on."""
    addresses = {name: server.address for name, server in services.items()}
    # Stream items get the default deadline, counted while they wait for a slot: 2000 of them on a
    # busy machine wait longer than the 120 s default, so the load test would count load, not losses.
    args = (*TOKEN_ARGS, "--default-deadline-seconds", "1800", *targets(**addresses))
    with orchestrator(tmp_path_factory.mktemp("front"), *args) as server:
        server.wait_status(TAGGING, "SERVING", timeout=60)
        wait_health(server.address, auth(), **ALL_SERVING)
        yield server


def test_happy_path_tags_from_florence_and_view_type_from_siglip_in_one_answer(front):
    reply = stub(front.address).TagImage(tag_request(), metadata=auth(), timeout=60)
    assert reply.tagger == "florence"
    assert not reply.fallback_reason
    assert reply.caption
    assert all(0 < t.confidence <= 1 for t in reply.tags)
    assert all("smoke" in t.source_model for t in reply.tags)
    assert reply.view_type.name in {"interior", "exterior", "aerial", "detail", "unknown"}
    assert abs(sum(s.probability for s in reply.view_type.scores) - 1) < 1e-4
    assert not reply.degraded
    assert {m.family for m in reply.models} == {"florence", "siglip"}
    assert all(m.smoke for m in reply.models)
    assert reply.timings.tagger_seconds > 0
    assert reply.timings.view_type_seconds > 0
    assert reply.timings.total_seconds >= reply.timings.tagger_seconds


def test_context_is_echoed_and_the_embedding_comes_back_when_asked(front):
    request = tag_request(include_embedding=True)
    request.context.view_type, request.context.region = "interior", "Wallonia"
    reply = stub(front.address).TagImage(request, metadata=auth(), timeout=60)
    assert reply.context.region == "Wallonia"
    assert reply.context.view_type == "interior"
    assert abs(sum(v * v for v in reply.embedding) - 1) < 1e-3


def test_a_bad_image_is_invalid_argument_without_failover(front):
    api = stub(front.address)
    before = api.GetStatus(tagging_pb2.GetStatusRequest(), metadata=auth(), timeout=5)
    request = tagging_pb2.TagImageRequest()
    request.image.data = b"%PDF-1.4 not a photo"
    with pytest.raises(grpc.RpcError) as info:
        api.TagImage(request, metadata=auth(), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "PDF" in info.value.details()
    after = api.GetStatus(tagging_pb2.GetStatusRequest(), metadata=auth(), timeout=5)
    assert backend(after, "rampp").ok_count == backend(before, "rampp").ok_count  # no failover
    assert backend(after, "florence").error_count == backend(before, "florence").error_count


def test_a_stream_answers_every_item_under_its_id_and_survives_a_bad_item(front):
    items = []
    for i in range(6):
        item = tagging_pb2.TagImagesRequest(id=f"photo-{i}", request=tag_request(i))
        if i == 2:
            item.request.image.data = b"this is a text file"
        items.append(item)
    answers = list(stub(front.address).TagImages(iter(items), metadata=auth(), timeout=120))
    assert sorted(a.id for a in answers) == sorted(i.id for i in items)
    by_outcome = {a.id: a.WhichOneof("outcome") for a in answers}
    assert by_outcome.pop("photo-2") == "error"
    assert set(by_outcome.values()) == {"result"}
    errors = [a.error for a in answers if a.WhichOneof("outcome") == "error"]
    assert {e.status for e in errors} == {"INVALID_ARGUMENT"}


def test_calls_without_a_valid_token_are_unauthenticated_and_probes_need_none(front):
    api = stub(front.address)
    for metadata, fragment in (((), "missing token"), ((("authorization", "Bearer wrong-token-000000000"),), "invalid token")):
        with pytest.raises(grpc.RpcError) as info:
            api.TagImage(tag_request(), metadata=metadata, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert fragment in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            list(api.TagImages(iter([tagging_pb2.TagImagesRequest(id="x", request=tag_request())]), metadata=metadata, timeout=10))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert health_status(front.address, TAGGING) == "SERVING"


def test_auth_is_checked_by_the_orchestrator_alone(tmp_path):
    """No model service is reachable: a client still gets UNAUTHENTICATED, not a backend error."""
    dead = f"127.0.0.1:{free_port()}"
    with orchestrator(tmp_path, *TOKEN_ARGS, *targets(florence=dead, rampp=dead, siglip=dead)) as server:
        server.wait_status("", "SERVING", timeout=60)  # the process; its readiness stays NOT_SERVING (no tagger)
        wait_health(server.address, auth(), florence=UNREACHABLE, rampp=UNREACHABLE)
        with pytest.raises(grpc.RpcError) as info:
            stub(server.address).TagImage(tag_request(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info:
            stub(server.address).TagImage(tag_request(), metadata=auth(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "florence: UNREACHABLE" in info.value.details()
        assert "rampp: UNREACHABLE" in info.value.details()


def test_status_reports_every_backend(front):
    api = stub(front.address)
    api.TagImage(tag_request(), metadata=auth(), timeout=60)  # so Florence has a latency to report
    status = api.GetStatus(tagging_pb2.GetStatusRequest(), metadata=auth(), timeout=5)
    assert [b.name for b in status.backends] == ["florence", "rampp", "siglip"]
    for b in status.backends:
        assert b.health == tagging_pb2.BACKEND_HEALTH_SERVING, b.name
        assert b.replicas == 1, b.name
        assert b.serving_replicas == 1, b.name
        assert b.breaker == tagging_pb2.BREAKER_STATE_CLOSED, b.name
        assert b.model.smoke, b.name
    assert backend(status, "florence").latency_p50_seconds > 0


def test_siglip_down_gives_tags_with_unknown_view_type_flagged_degraded(services, tmp_path):
    addresses = {"florence": services["florence"].address, "rampp": services["rampp"].address,
                 "siglip": f"127.0.0.1:{free_port()}"}
    with orchestrator(tmp_path, "--no-auth", *targets(**addresses)) as server:
        server.wait_status(TAGGING, "SERVING", timeout=60)
        wait_health(server.address, florence=SERVING, rampp=SERVING, siglip=UNREACHABLE)
        reply = stub(server.address).TagImage(tag_request(), timeout=60)
    assert reply.tagger == "florence"
    assert reply.degraded
    assert reply.view_type.name == "unknown"
    assert any(r.startswith("siglip: UNREACHABLE") for r in reply.degraded_reasons)


def test_florence_killed_mid_stream_every_item_still_answered_then_florence_serves_again(smoke_models, services, tmp_path):
    florence = model_service("florence", smoke_models, tmp_path, *FLORENCE_FAST)
    florence.start()
    florence.wait_status("archivetag.v1.TaggerService", "SERVING", timeout=180)
    addresses = {"florence": florence.address, "rampp": services["rampp"].address, "siglip": services["siglip"].address}
    with orchestrator(tmp_path, "--no-auth", "--reconnect-max-seconds", "0.5", *targets(**addresses)) as server:
        server.wait_status(TAGGING, "SERVING", timeout=60)
        wait_health(server.address, **ALL_SERVING)
        api = stub(server.address)
        killed = threading.Event()
        answers = []

        items = (tagging_pb2.TagImagesRequest(id=str(i), request=tag_request(i)) for i in range(200))
        for answer in api.TagImages(items, timeout=600):
            answers.append((answer, killed.is_set()))
            if len(answers) == 40:
                florence.kill()  # SIGKILL in the middle of the stream
                killed.set()
        assert sorted(int(a.id) for a, _ in answers) == list(range(200))
        assert all(a.WhichOneof("outcome") == "result" for a, _ in answers)
        taggers = [a.result.tagger for a, _ in answers]
        assert "florence" in taggers
        assert taggers[-1] == "rampp"
        after_kill = [a.result for a, was_killed in answers if was_killed]
        assert "rampp" in {r.tagger for r in after_kill}  # some answered only thanks to the failover
        assert all(r.fallback_reason.startswith("florence:") for r in after_kill if r.tagger == "rampp")

        restarted = model_service("florence", smoke_models, tmp_path, *FLORENCE_FAST, port=florence.port)
        with restarted:
            restarted.wait_status("archivetag.v1.TaggerService", "SERVING", timeout=180)
            wait_health(server.address, florence=SERVING)
            # The breaker opened on the kill; Florence gets calls again after its cooldown (30 s).
            reply = wait_for(lambda: api.TagImage(tag_request(), timeout=60), lambda r: r.tagger == "florence",
                             timeout=180, describe="Florence to answer again after its restart")
            assert not reply.fallback_reason


def test_a_hung_florence_stops_costing_its_deadline_and_its_breaker_closes_after_sigcont(smoke_models, services, tmp_path):
    """Two failed calls open the breaker, or the health check marks Florence UNREACHABLE first (whichever
    comes first on this machine): either way later calls skip it without an attempt."""
    florence = model_service("florence", smoke_models, tmp_path, *FLORENCE_FAST)
    florence.start()
    florence.wait_status("archivetag.v1.TaggerService", "SERVING", timeout=180)
    addresses = {"florence": florence.address, "rampp": services["rampp"].address, "siglip": services["siglip"].address}
    # A fresh orchestrator: the breaker is closed with no failures, so the first failed call opens it.
    # Florence keeps its default deadline (a busy machine must still meet it after SIGCONT); the
    # cooldown is long enough that the open breaker is still open when checked.
    args = ("--no-auth", "--breaker-failures", "1", "--breaker-cooldown-seconds", "20",
            "--reconnect-max-seconds", "0.5", *targets(**addresses))
    try:
        with orchestrator(tmp_path, *args) as server:
            server.wait_status(TAGGING, "SERVING", timeout=60)
            wait_health(server.address, **ALL_SERVING)
            api = stub(server.address)
            florence.proc.send_signal(signal.SIGSTOP)
            def skipped_without_an_attempt(reply) -> bool:
                return reply.fallback_reason.startswith(("florence: breaker open", "florence: UNREACHABLE"))

            reply = wait_for(lambda: api.TagImage(tag_request(5), timeout=120), skipped_without_an_attempt,
                             timeout=300, describe="Florence to be skipped without an attempt")
            assert reply.tagger == "rampp"
            assert "DEADLINE_EXCEEDED" not in reply.fallback_reason

            florence.proc.send_signal(signal.SIGCONT)
            reply = wait_for(lambda: api.TagImage(tag_request(), timeout=120), lambda r: r.tagger == "florence",
                             timeout=300, describe="Florence to answer the probe after SIGCONT")
            status = api.GetStatus(tagging_pb2.GetStatusRequest(), timeout=10)
            assert backend(status, "florence").breaker == tagging_pb2.BREAKER_STATE_CLOSED
    finally:
        if florence.proc and florence.proc.poll() is None:
            florence.proc.send_signal(signal.SIGCONT)
        florence.__exit__(None, None, None)


def test_both_taggers_unusable_is_unavailable_naming_each_backend(services, tmp_path):
    addresses = {"florence": f"127.0.0.1:{free_port()}", "rampp": f"127.0.0.1:{free_port()}",
                 "siglip": services["siglip"].address}
    with orchestrator(tmp_path, "--no-auth", *targets(**addresses)) as server:
        server.wait_status("", "SERVING", timeout=60)
        wait_health(server.address, florence=UNREACHABLE, rampp=UNREACHABLE, siglip=SERVING)
        assert health_status(server.address, TAGGING) == "NOT_SERVING"  # not ready: no tagger can answer
        with pytest.raises(grpc.RpcError) as info:
            stub(server.address).TagImage(tag_request(), timeout=30)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "florence: UNREACHABLE" in info.value.details()
    assert "rampp: UNREACHABLE" in info.value.details()


def test_a_flooding_client_does_not_starve_another_clients_single_photos(services, tmp_path):
    """Two slots, both held by an import with more than 30 photos queued behind them: each desk
    photo gets the next free slot, so it is answered after a few of the import's photos, not
    after the queue ahead of it. Measured by the order of answers, not by time."""
    flood_size = 120
    args = (*TOKEN_ARGS, "--taggers", "rampp,florence", "--disabled-backends", "florence,siglip",
            "--max-in-flight", "2", "--client-max-in-flight", "2", "--stream-window", "40",
            *targets(rampp=services["rampp"].address))
    with orchestrator(tmp_path, *args) as server:
        server.wait_status(TAGGING, "SERVING", timeout=60)
        wait_health(server.address, auth(), rampp=SERVING)
        api = stub(server.address)
        flood_answers = []  # in the order they arrive

        def flood() -> None:
            items = (tagging_pb2.TagImagesRequest(id=str(i), request=tag_request(i)) for i in range(flood_size))
            for answer in api.TagImages(items, metadata=auth("import"), timeout=1800):
                flood_answers.append(answer)

        def queue_is_full() -> tagging_pb2.GetStatusResponse:
            return wait_for(lambda: api.GetStatus(tagging_pb2.GetStatusRequest(), metadata=auth(), timeout=10),
                            lambda s: s.in_flight == 2 and s.queued >= 30, timeout=300,
                            describe="the import holding both slots with 30+ photos queued (GetStatus)")

        overtaken = []  # import answers that arrived while each desk photo was waiting
        with ThreadPoolExecutor(1) as pool:
            flooding = pool.submit(flood)
            for i in range(3):
                queued = queue_is_full().queued
                before = len(flood_answers)
                reply = api.TagImage(tag_request(100 + i), metadata=auth("desk"), timeout=600)
                overtaken.append((len(flood_answers) - before, queued))
                assert reply.tagger == "rampp"
            flooding.result()
    assert len(flood_answers) == flood_size
    assert all(a.WhichOneof("outcome") == "result" for a in flood_answers)
    # First come, first served would answer every queued import photo (30+) before a desk photo.
    assert max(n for n, _ in overtaken) < 15, overtaken


@pytest.mark.timeout(2400)  # minutes alone; the 600 s hang guard is a speed limit for 2000 images on a busy CPU
def test_load_two_thousand_requests_from_sixteen_clients_none_lost(front):
    api = stub(front.address)
    per_client = 125

    def client(index: int) -> list[str]:
        outcomes = []
        items = (tagging_pb2.TagImagesRequest(id=f"{index}-{i}", request=tag_request(i)) for i in range(per_client))
        for answer in api.TagImages(items, metadata=auth("import" if index % 2 else "desk"), timeout=1800):
            outcomes.append(answer.id if answer.WhichOneof("outcome") == "result" else f"{answer.id}:{answer.error.status}")
        return outcomes

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(client, range(16)))
    answered = [o for r in results for o in r]
    assert len(answered) == 16 * per_client
    ids = {o.split(":")[0] for o in answered}
    assert ids == {f"{c}-{i}" for c in range(16) for i in range(per_client)}
    documented = {"RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED"}
    errors = [o for o in answered if ":" in o]
    assert all(o.split(":")[1] in documented for o in errors), errors[:5]
    assert len(errors) <= len(answered) * 0.01, errors[:5]


def test_bad_protobuf_is_invalid_argument_for_a_call_and_ends_a_stream_and_the_orchestrator_keeps_serving(front):
    garbage = b"\xff\xfe not a protobuf message \x00\x01"
    with grpc.insecure_channel(front.address) as channel:
        call = channel.unary_unary(f"/{TAGGING}/TagImage", request_serializer=None,
                                   response_deserializer=tagging_pb2.TagImageResponse.FromString)
        with pytest.raises(grpc.RpcError) as unary:
            call(garbage, metadata=auth(), timeout=60)
        stream = channel.stream_stream(f"/{TAGGING}/TagImages", request_serializer=None,
                                       response_deserializer=tagging_pb2.TagImagesResponse.FromString)
        good = tagging_pb2.TagImagesRequest(id="good", request=tag_request(1)).SerializeToString()
        with pytest.raises(grpc.RpcError) as streamed:
            list(stream(iter([good, garbage]), metadata=auth(), timeout=120))
    for caught, message in ((unary, "TagImageRequest"), (streamed, "TagImagesRequest")):
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        assert f"not a valid archivetag.v1.{message}" in caught.value.details()
    assert health_status(front.address, TAGGING) == "SERVING"
    assert stub(front.address).TagImage(tag_request(2), metadata=auth(), timeout=120).tags


def test_idle_unauthenticated_streams_from_an_address_do_not_lock_out_an_authenticated_client(services, tmp_path):
    """The audit: 64 idle Health/Watch streams without a token used up the address's stream allowance, and an
    authenticated client behind the same address (apps behind one NAT) got RESOURCE_EXHAUSTED on TagImages."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    addresses = {name: server.address for name, server in services.items()}
    with orchestrator(tmp_path, *TOKEN_ARGS, "--max-streams-per-peer", "3", *targets(**addresses)) as server:
        server.wait_status(TAGGING, "SERVING", timeout=60)
        wait_health(server.address, auth(), **ALL_SERVING)
        channel = grpc.insecure_channel(server.address)
        health = health_pb2_grpc.HealthStub(channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest(service=TAGGING)) for _ in range(3)]
        try:
            for watch in watches:
                assert next(watch).status == health_pb2.HealthCheckResponse.SERVING  # each stream is open
            with pytest.raises(grpc.RpcError) as refused:
                next(health.Watch(health_pb2.HealthCheckRequest(service=TAGGING)))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # the address's allowance is used up
            items = [tagging_pb2.TagImagesRequest(id=str(i), request=tag_request(i)) for i in range(2)]
            answers = list(stub(server.address).TagImages(iter(items), metadata=auth(), timeout=120))
            assert sorted(a.id for a in answers) == ["0", "1"]
            assert all(a.WhichOneof("outcome") == "result" for a in answers)
            with pytest.raises(grpc.RpcError) as long_name:
                next(health.Watch(health_pb2.HealthCheckRequest(service="x" * 1_000_000)))
            assert long_name.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
        finally:
            for watch in watches:
                watch.cancel()
            channel.close()


def test_a_health_check_with_an_absurd_service_name_is_refused_at_once(front):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(front.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for call in (health.Check, lambda r, timeout: next(health.Watch(r, timeout=timeout))):
            with pytest.raises(grpc.RpcError) as caught:
                call(health_pb2.HealthCheckRequest(service="x" * 1_000_000), timeout=30)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert health_status(front.address, TAGGING) == "SERVING"


def test_the_grpcurl_lines_up_prints_and_the_docs_show_work_with_auth_on_as_printed(front, tmp_path):
    """`up` with tokens prints its hints with the token header (from ARCHIVETAG_TOKEN); a photo larger than a
    command-line argument may be (128 KiB) goes to grpcurl on its input, as docs/clients.md shows."""
    import os
    import subprocess

    import numpy as np
    from PIL import Image

    from archivetag.cli import build_parser
    from archivetag.stack import Stack
    from tests.support.servers import GRPCURL

    args = build_parser().parse_args(["up", "--api-tokens", f"desk:{TOKENS['desk']}", "--log-dir", str(tmp_path),
                                      "--orchestrator-port", front.address.rpartition(":")[2]])
    hints = Stack(args).endpoints_text()
    (status_line,) = [line.strip() for line in hints.splitlines() if "TaggingService/GetStatus" in line]
    assert "$ARCHIVETAG_TOKEN" in status_line and "ARCHIVETAG_TOKEN" in hints.splitlines()[1]
    env = {**os.environ, "ARCHIVETAG_TOKEN": TOKENS["desk"], "PATH": f"{os.path.dirname(GRPCURL)}:{os.environ['PATH']}"}
    printed = subprocess.run(status_line, shell=True, env=env, capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    assert '"backends"' in printed.stdout

    big = tmp_path / "photo.png"
    noise = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)  # PNG cannot shrink it
    big.write_bytes(encode(Image.fromarray(noise), "PNG"))
    assert big.stat().st_size > 128 * 1024
    documented = (f"{{ printf '{{\"maxTags\":5,\"image\":{{\"data\":\"'; base64 -w0 {big}; printf '\"}}}}'; }} | "
                  f"grpcurl -plaintext -H 'authorization: Bearer {TOKENS['desk']}' -d @ "
                  f"{front.address} archivetag.v1.TaggingService/TagImage")
    tagged = subprocess.run(documented, shell=True, env=env, capture_output=True, text=True, timeout=120)
    assert tagged.returncode == 0, tagged.stderr
    assert '"tags"' in tagged.stdout


def test_readiness_follows_the_taggers_and_a_tagger_that_just_came_up_is_probed_not_waited_for(
        smoke_models, services, tmp_path):
    """The orchestrator's readiness (its TaggingService health) is SERVING only while a tagger can answer. A
    tagger that comes up is used by the first request after it serves, although the orchestrator's watch of
    it is still waiting out a reconnect backoff (a minute, here): that request probes before refusing."""
    rampp = model_service("rampp", smoke_models, tmp_path)
    addresses = {"florence": f"127.0.0.1:{free_port()}", "rampp": rampp.address, "siglip": services["siglip"].address}
    args = ("--no-auth", "--reconnect-max-seconds", "60", "--taggers", "rampp,florence", *targets(**addresses))
    with orchestrator(tmp_path, *args) as server:
        server.wait_status("", "SERVING", timeout=60)
        wait_health(server.address, florence=UNREACHABLE, rampp=UNREACHABLE)
        assert health_status(server.address, TAGGING) == "NOT_SERVING"
        time.sleep(8)  # not an assertion: the watch's backoff grows (to seconds) while RAM++ stays down
        with rampp:
            rampp.wait_status("archivetag.v1.TaggerService", "SERVING", timeout=180)
            reply = stub(server.address).TagImage(tag_request(), timeout=60)
            assert reply.tagger == "rampp"
            server.wait_status(TAGGING, "SERVING", timeout=30)
        server.wait_status(TAGGING, "NOT_SERVING", timeout=60)
