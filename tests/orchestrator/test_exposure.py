"""What a caller without a token can cost the orchestrator, and what its metrics endpoint tells a stranger
(issue 30, items 3 and 10): real orchestrator processes, backends that listen nowhere."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from archivetag.v1 import tagging_pb2, tagging_pb2_grpc
from tests.conftest import orchestrator
from tests.orchestrator.test_orchestrator import TOKEN_ARGS, auth, targets
from tests.support.servers import free_port, health_status, memory_kib

MIB = 1024 * 1024


def dead_targets() -> tuple[str, ...]:
    return targets(**{name: f"127.0.0.1:{free_port()}" for name in ("florence", "rampp", "siglip")})


def tiny_request() -> tagging_pb2.TagImageRequest:
    request = tagging_pb2.TagImageRequest()
    request.image.data = b"x"
    return request


def scrape(port: int, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_large_calls_without_a_token_are_refused_before_the_orchestrator_receives_them(tmp_path):
    """Twelve 30 MiB TagImage calls without a token: each UNAUTHENTICATED, and the orchestrator's peak memory
    grows by far less than one of them (it grew by about 390 MiB for eight when it read them first)."""
    with orchestrator(tmp_path, *TOKEN_ARGS, *dead_targets()) as server:
        server.wait_status("", "SERVING", timeout=60)
        channel = grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 64 * MIB)])
        api = tagging_pb2_grpc.TaggingServiceStub(channel)
        api.GetStatus(tagging_pb2.GetStatusRequest(), metadata=auth(), timeout=30)  # warm: code paths loaded
        before = memory_kib(server.proc.pid, "VmHWM")
        request = tagging_pb2.TagImageRequest()
        request.image.data = os.urandom(30 * MIB)

        def call(_: int) -> grpc.StatusCode:
            with pytest.raises(grpc.RpcError) as info:
                api.TagImage(request, timeout=60)
            return info.value.code()

        with ThreadPoolExecutor(12) as pool:
            codes = list(pool.map(call, range(12)))
        grown_mib = (memory_kib(server.proc.pid, "VmHWM") - before) / 1024
        assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 12
        assert grown_mib < 150, f"peak memory grew by {grown_mib:.0f} MiB for calls refused by their metadata"
        # A client with a token is still heard (its call reaches routing: no backend, so UNAVAILABLE).
        with pytest.raises(grpc.RpcError) as info:
            api.TagImage(tiny_request(), metadata=auth(), timeout=60)
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INVALID_ARGUMENT)


def test_a_metrics_token_closes_the_endpoint_to_scrapers_without_it(tmp_path):
    token = "metrics-token-0123456789"
    (tmp_path / "metrics-token").write_text(token + "\n")
    port = free_port()
    args = (*TOKEN_ARGS, "--metrics-token-file", str(tmp_path / "metrics-token"), *dead_targets())
    with orchestrator(tmp_path, *args, metrics_port=port) as server:
        server.wait_status("", "SERVING", timeout=60)
        assert scrape(port)[0] == 401
        assert scrape(port, "wrong-token-0123456789")[0] == 401
        status, text = scrape(port, token)
        assert status == 200 and "archivetag_requests_total" in text


def test_an_open_metrics_endpoint_on_a_network_address_names_clients_by_pseudonym(tmp_path):
    """No metrics token and a non-loopback address: the per-client series carry a pseudonym, never the
    client's name, and the log (the operator's) says which is whose."""
    port = free_port()
    with orchestrator(tmp_path, *TOKEN_ARGS, "--host", "0.0.0.0", *dead_targets(), metrics_port=port) as server:
        server.wait_status("", "SERVING", timeout=60)
        api = tagging_pb2_grpc.TaggingServiceStub(grpc.insecure_channel(server.address))
        for client in ("desk", "import"):
            with pytest.raises(grpc.RpcError):
                api.TagImage(tiny_request(),
                             metadata=auth(client), timeout=60)
        status, text = scrape(port)
        client_lines = [line for line in text.splitlines() if line.startswith("archivetag_client_answered_total{")]
        assert status == 200 and len(client_lines) == 2, client_lines
        assert all('client="client-' in line for line in client_lines), client_lines
        assert not any(name in text for name in ('"desk"', '"import"'))
        log = server.log_tail(100_000)
        assert "pseudonym" in log and "desk" in log


def test_a_stream_item_over_the_image_limit_is_that_items_error_and_one_over_the_transport_limit_is_named(tmp_path):
    """With a 1 MiB image limit: a 2 MiB item is its own IMAGE_TOO_LARGE and the items around it are answered
    (here UNAVAILABLE: no tagger listens); a message over the transport limit (image limit + 4 MiB) ends the
    stream with RESOURCE_EXHAUSTED naming both sizes, not an INTERNAL error."""
    with orchestrator(tmp_path, *TOKEN_ARGS, "--max-image-bytes", str(MIB), *dead_targets()) as server:
        server.wait_status("", "SERVING", timeout=60)
        channel = grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 64 * MIB)])
        api = tagging_pb2_grpc.TaggingServiceStub(channel)

        def item(name: str, size: int) -> tagging_pb2.TagImagesRequest:
            request = tagging_pb2.TagImagesRequest(id=name)
            request.request.image.data = os.urandom(size)
            return request

        answers = list(api.TagImages(iter([item("a", 1000), item("big", 2 * MIB), item("b", 1000)]),
                                     metadata=auth(), timeout=120))
        by_id = {a.id: a for a in answers}
        assert sorted(by_id) == ["a", "b", "big"]
        assert by_id["big"].error.status == "INVALID_ARGUMENT"
        assert by_id["big"].error.field == "image.data" and "limit" in by_id["big"].error.message
        with pytest.raises(grpc.RpcError) as info:
            list(api.TagImages(iter([item("huge", 6 * MIB)]), metadata=auth(), timeout=120))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in info.value.details()
        assert health_status(server.address) == "SERVING"
