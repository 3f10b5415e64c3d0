"""Faults and hostile callers against real servers (smoke models, loopback): corrupt files
never open a breaker, a stopped replica is seen and skipped, SIGTERM drains a stream
without losing an item, byte budgets bound what a client can make the orchestrator hold,
and an open listen address needs tokens."""

from __future__ import annotations

import io
import signal
import struct
import subprocess

import grpc
import pytest
from PIL import Image

from archivetag.stack import archivetag_command
from archivetag.v1 import tagging_pb2
from tests.conftest import model_service, orchestrator
from tests.orchestrator.test_orchestrator import (
    FLORENCE_FAST, TAGGING, TOKEN_ARGS, auth, backend, stub, tag_request, targets, wait_health, ALL_SERVING,
)
from tests.support.image_corpus import encode, photo
from tests.support.waiting import wait_for

TAGGER = "archivetag.v1.TaggerService"
VIEW_TYPE = "archivetag.v1.ViewTypeService"


def tiff_whose_second_page_has_no_dimensions() -> bytes:
    """The issue's file: a valid first page, then an IFD without ImageWidth/ImageLength."""
    buffer = io.BytesIO()
    pages = [Image.new("RGB", (16, 16), colour) for colour in ((200, 30, 30), (30, 200, 30))]
    pages[0].save(buffer, "TIFF", save_all=True, append_images=pages[1:])
    data = bytearray(buffer.getvalue())
    order = "<" if data[:2] == b"II" else ">"

    def number(fmt: str, at: int) -> int:
        return struct.unpack_from(order + fmt, data, at)[0]

    first = number("I", 4)
    second = number("I", first + 2 + 12 * number("H", first))
    for index in range(number("H", second)):
        at = second + 2 + 12 * index
        if number("H", at) in (256, 257):  # ImageWidth, ImageLength → private tags
            struct.pack_into(order + "H", data, at, 65000 + number("H", at) - 256)
    return bytes(data)


CORRUPT = {
    "pdf": b"%PDF-1.4 not a photo",
    "truncated jpeg": encode(photo(), "JPEG")[:200],
    "tiff page without dimensions": tiff_whose_second_page_has_no_dimensions(),
}


@pytest.fixture(scope="module")
def services(smoke_models, tmp_path_factory):
    logs = tmp_path_factory.mktemp("fault-services")
    started = {
        "florence": model_service("florence", smoke_models, logs, *FLORENCE_FAST).start(),
        "rampp": model_service("rampp", smoke_models, logs).start(),
        "siglip": model_service("siglip", smoke_models, logs).start(),
    }
    try:
        for name, server in started.items():
            server.wait_status(VIEW_TYPE if name == "siglip" else TAGGER, "SERVING", timeout=240)
        yield started
    finally:
        for server in started.values():
            server.__exit__(None, None, None)


def addresses(services, **override) -> dict[str, str]:
    return {**{name: server.address for name, server in services.items()}, **override}


def status(address: str, metadata=()) -> tagging_pb2.GetStatusResponse:
    return stub(address).GetStatus(tagging_pb2.GetStatusRequest(), metadata=metadata, timeout=10)


@pytest.mark.parametrize("kind", list(CORRUPT))
def test_a_corrupt_file_sent_again_and_again_opens_no_breaker_and_another_client_is_tagged_by_florence(
        services, tmp_path, kind):
    args = (*TOKEN_ARGS, "--breaker-failures", "2", *targets(**addresses(services)))
    with orchestrator(tmp_path, *args) as server:
        server.wait_status(TAGGING, "SERVING", timeout=60)
        wait_health(server.address, auth(), **ALL_SERVING)
        api = stub(server.address)
        before = status(server.address, auth())
        request = tagging_pb2.TagImageRequest()
        request.image.data = CORRUPT[kind]
        for _ in range(4):  # twice the breaker's threshold
            # The client's file: INVALID_ARGUMENT, or OK where the decoder can still read it (a TIFF
            # whose later page is broken: only the first page is ever read). Never a backend failure.
            try:
                api.TagImage(request, metadata=auth("import"), timeout=60)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.details()
        after = status(server.address, auth())
        for name in ("florence", "rampp", "siglip"):
            assert backend(after, name).breaker == tagging_pb2.BREAKER_STATE_CLOSED, name
            assert backend(after, name).error_count == backend(before, name).error_count, name
        reply = api.TagImage(tag_request(), metadata=auth("desk"), timeout=60)
        assert reply.tagger == "florence"
        assert not reply.fallback_reason


def test_a_stopped_florence_is_marked_unreachable_skipped_then_serves_again_after_sigcont(
        smoke_models, services, tmp_path):
    florence = model_service("florence", smoke_models, tmp_path, *FLORENCE_FAST).start()
    try:
        florence.wait_status(TAGGER, "SERVING", timeout=240)
        # Florence's own deadline is longer than the caller's: only hang detection spares the wait.
        args = ("--no-auth", "--florence-deadline-seconds", "300", "--fallback-reserve-seconds", "1",
                *targets(**addresses(services, florence=florence.address)))
        with orchestrator(tmp_path, *args) as server:
            server.wait_status(TAGGING, "SERVING", timeout=60)
            wait_health(server.address, **ALL_SERVING)
            api = stub(server.address)
            assert api.TagImage(tag_request(), timeout=60).tagger == "florence"

            florence.proc.send_signal(signal.SIGSTOP)
            in_flight = api.TagImage.future(tag_request(1), timeout=120)
            wait_for(lambda: backend(status(server.address), "florence").health == tagging_pb2.BACKEND_HEALTH_UNREACHABLE,
                     timeout=120, describe="florence marked UNREACHABLE while stopped")
            # Hung (its health check times out, and a call waiting on it is abandoned) or lost
            # (keepalive closed its connection first): either way `archivetag status` shows it.
            stopped = wait_for(lambda: backend(status(server.address), "florence"), lambda b: b.last_error,
                               timeout=120, describe="the stopped replica recorded as Florence's last error")
            assert "hung" in stopped.last_error or "lost" in stopped.last_error, stopped.last_error
            assert not stopped.last_error_resolved
            caught = in_flight.result()
            assert caught.tagger == "rampp"
            # Not waited out to Florence's deadline: its connection was dropped (keepalive) or the
            # call abandoned (health check), whichever saw the hang first.
            assert caught.fallback_reason.startswith("florence: UNAVAILABLE")
            later = api.TagImage(tag_request(2), timeout=60)
            assert later.tagger == "rampp"
            assert "florence: UNREACHABLE" in later.fallback_reason

            florence.proc.send_signal(signal.SIGCONT)
            wait_for(lambda: backend(status(server.address), "florence").health == tagging_pb2.BACKEND_HEALTH_SERVING,
                     timeout=120, describe="florence SERVING again after SIGCONT")
            reply = wait_for(lambda: (r := api.TagImage(tag_request(3),
                             timeout=60)).tagger == "florence" and r, timeout=60, describe="florence tags again")
            assert not reply.fallback_reason
            assert backend(status(server.address), "florence").last_error_resolved
    finally:
        if florence.proc.poll() is None:
            florence.proc.send_signal(signal.SIGCONT)
        florence.__exit__(None, None, None)


def test_a_stopped_replica_is_skipped_while_its_sibling_keeps_florence_serving(smoke_models, services, tmp_path):
    replicas = [model_service("florence", smoke_models, tmp_path, *FLORENCE_FAST).start() for _ in range(2)]
    try:
        for replica in replicas:
            replica.wait_status(TAGGER, "SERVING", timeout=240)
        florence = ",".join(r.address for r in replicas)
        args = ("--no-auth", "--florence-deadline-seconds", "300", *targets(**addresses(services, florence=florence)))
        with orchestrator(tmp_path, *args) as server:
            server.wait_status(TAGGING, "SERVING", timeout=60)
            wait_health(server.address, **ALL_SERVING)
            # The backend serves once one replica does: wait until the orchestrator has seen both.
            wait_for(lambda: backend(status(server.address), "florence").serving_replicas, lambda n: n == 2,
                     timeout=120, describe="both Florence replicas SERVING in the orchestrator's view")
            api = stub(server.address)
            replicas[0].proc.send_signal(signal.SIGSTOP)
            seen = wait_for(lambda: (b := backend(status(server.address), "florence")).serving_replicas == 1 and b,
                            timeout=120, describe="the stopped replica counted out")
            assert seen.health == tagging_pb2.BACKEND_HEALTH_SERVING
            # A call that reached the stopped replica is retried on the other once keepalive drops that
            # connection: every call is answered by Florence.
            replies = [api.TagImage(tag_request(i), timeout=120) for i in range(4)]
            assert [r.tagger for r in replies] == ["florence"] * 4
    finally:
        for replica in replicas:
            if replica.proc.poll() is None:
                replica.proc.send_signal(signal.SIGCONT)
            replica.__exit__(None, None, None)


def test_sigterm_mid_stream_answers_what_was_read_and_the_rest_is_resumed_elsewhere_none_lost_none_twice(
        services, tmp_path):
    args = ("--no-auth", "--stream-window", "4", *targets(**addresses(services)))
    ids = [f"photo-{i}" for i in range(80)]
    answers: list[tagging_pb2.TagImagesResponse] = []
    first = orchestrator(tmp_path, *args, name="first").start()
    try:
        first.wait_status(TAGGING, "SERVING", timeout=60)
        wait_health(first.address, **ALL_SERVING)
        items = (tagging_pb2.TagImagesRequest(id=i, request=tag_request(n)) for n, i in enumerate(ids))
        with pytest.raises(grpc.RpcError) as info:
            for answer in stub(first.address).TagImages(items, timeout=600):
                answers.append(answer)
                if len(answers) == 10:
                    first.proc.send_signal(signal.SIGTERM)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "draining" in info.value.details()
        assert first.proc.wait(60) == 0
    finally:
        first.__exit__(None, None, None)
    answered = [a.id for a in answers]
    assert len(answered) == len(set(answered))
    assert len(answered) < len(ids)  # the stream really ended early
    assert all(a.WhichOneof("outcome") == "result" for a in answers)

    rest = [i for i in ids if i not in set(answered)]
    with orchestrator(tmp_path, *args, name="second") as second:
        second.wait_status(TAGGING, "SERVING", timeout=60)
        wait_health(second.address, **ALL_SERVING)
        items = (tagging_pb2.TagImagesRequest(id=i, request=tag_request(ids.index(i))) for i in rest)
        resumed = list(stub(second.address).TagImages(items, timeout=600))
    assert sorted(a.id for a in resumed) == sorted(rest)
    assert sorted(answered + [a.id for a in resumed]) == sorted(ids)


def test_a_duplicate_item_id_is_answered_once_with_invalid_argument(services, tmp_path):
    with orchestrator(tmp_path, "--no-auth", *targets(**addresses(services))) as server:
        server.wait_status(TAGGING, "SERVING", timeout=60)
        wait_health(server.address, **ALL_SERVING)
        items = [tagging_pb2.TagImagesRequest(id="a", request=tag_request(0)),
                 tagging_pb2.TagImagesRequest(id="a", request=tag_request(1)),  # read while "a" is in flight
                 tagging_pb2.TagImagesRequest(id="b", request=tag_request(2))]
        answers = list(stub(server.address).TagImages(iter(items), timeout=120))
    assert sorted(a.id for a in answers) == ["a", "b"]
    duplicate = next(a for a in answers if a.id == "a")
    assert duplicate.error.status == "INVALID_ARGUMENT"
    assert "used twice" in duplicate.error.message
    assert next(a for a in answers if a.id == "b").WhichOneof("outcome") == "result"


def test_a_client_over_its_byte_budget_is_refused_and_a_stream_waits_for_room_instead(services, tmp_path):
    args = ("--no-auth", "--client-max-mb-in-flight", "1", "--max-mb-in-flight", "2",
            *targets(**addresses(services)))
    with orchestrator(tmp_path, *args) as server:
        server.wait_status(TAGGING, "SERVING", timeout=60)
        wait_health(server.address, **ALL_SERVING)
        api = stub(server.address)
        big = tagging_pb2.TagImageRequest()
        big.image.data = b"\x00" * (3 * 1024 * 1024 // 2)
        with pytest.raises(grpc.RpcError) as info:
            api.TagImage(big, timeout=60)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "ARCHIVETAG_CLIENT_MAX_MB_IN_FLIGHT" in info.value.details()

        items = []
        for i in range(6):  # 0.7 MiB each: only one fits the client's 1 MiB at a time
            item = tagging_pb2.TagImagesRequest(id=str(i))
            item.request.image.data = b"\x00" * (7 * 1024 * 1024 // 10)
            items.append(item)
        answers = list(api.TagImages(iter(items), timeout=300))
        assert sorted(a.id for a in answers) == [str(i) for i in range(6)]
        assert {a.error.status for a in answers} == {"INVALID_ARGUMENT"}  # not images: each one answered
        assert status(server.address).in_flight == 0


def test_the_identity_header_is_honoured_for_a_local_caller_with_auth_off(services, tmp_path):
    args = ("--no-auth", "--client-max-mb-in-flight", "1", *targets(**addresses(services)))
    with orchestrator(tmp_path, *args) as server:
        server.wait_status(TAGGING, "SERVING", timeout=60)
        big = tagging_pb2.TagImageRequest()
        big.image.data = b"\x00" * (3 * 1024 * 1024 // 2)
        with pytest.raises(grpc.RpcError) as info:
            stub(server.address).TagImage(big, metadata=(("x-archivetag-client", "scanner-7"),), timeout=60)
    assert "client 'scanner-7'" in info.value.details()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(archivetag_command(*args), capture_output=True, text=True, timeout=120)


def test_an_orchestrator_on_a_network_address_without_tokens_refuses_to_start(tmp_path):
    result = run_cli("serve", "orchestrator", "--host", "0.0.0.0", "--port", "0", "--metrics-port", "0")
    assert result.returncode != 0
    assert "no client tokens" in result.stderr
    assert "Traceback" not in result.stderr


def test_up_on_a_network_address_without_tokens_refuses_unless_auth_is_turned_off_explicitly(smoke_models, tmp_path):
    result = run_cli("up", "--models", str(smoke_models), "--orchestrator-host", "0.0.0.0", "--log-dir", str(tmp_path))
    assert result.returncode == 2
    assert "--api-tokens-file" in result.stderr
    assert "--no-orchestrator-auth" in result.stderr
    assert not list(tmp_path.glob("*.pid"))  # nothing was started
