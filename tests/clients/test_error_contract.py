"""Every error path sets the status and reason documented in docs/errors.md.

The reason table exists three times (the code's REASON_STATUS, the proto enum, the doc) and
they must agree; then each reason is produced for real and checked against that table.
"""

from __future__ import annotations

import asyncio
import io
import re
import sys

import grpc
import pytest
from PIL import Image

from archivetag.client import NO_RETRY, ClientError, TaggingClient
from archivetag_orchestrator.fairness import FairScheduler
from archivetag.runtime.batcher import DynamicBatcher
from archivetag.runtime.errors import REASON_PREFIX, REASON_STATUS, status_for
from archivetag.v1 import errors_pb2, tagging_pb2, tagging_pb2_grpc
from tests.clients.conftest import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, SAMPLES, TOKEN
from tests.conftest import model_service, orchestrator
from tests.support.image_corpus import progressive_jpeg
from tests.support.servers import REPO, ServerProcess, free_port
from tests.support.waiting import wait_for

DOC_ROW = re.compile(r"^\| `([A-Z_]+)` \| `([A-Z_]+)` \|", re.M)


def documented() -> dict[str, str]:
    return dict(DOC_ROW.findall((REPO / "docs" / "errors.md").read_text()))


def test_the_doc_the_code_and_the_proto_list_the_same_reasons_with_the_same_status():
    in_proto = {name.removeprefix(REASON_PREFIX) for name in errors_pb2.ErrorReason.keys()} - {"UNSPECIFIED"}
    assert set(REASON_STATUS) == in_proto
    assert documented() == {reason: code.name for reason, code in REASON_STATUS.items()}


def test_the_proto_comment_of_each_reason_names_its_status():
    text = (REPO / "protos" / "archivetag" / "v1" / "errors.proto").read_text()
    for reason, code in REASON_STATUS.items():
        comment = re.search(rf"// {code.name}: [^\n]*(?:\n  //[^\n]*)*\n  {REASON_PREFIX}{reason} = ", text)
        assert comment, f"{reason}: its comment does not start with {code.name}"


# -- each reason, produced for real ------------------------------------------------------
def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height)).save(out, "PNG")
    return out.getvalue()


def raw_stream(stack, ids: list[str]) -> list[tagging_pb2.TagImagesResponse]:
    with grpc.insecure_channel(stack.target) as channel:
        requests = []
        for item_id in ids:
            request = tagging_pb2.TagImagesRequest(id=item_id)
            request.request.image.data = SAMPLES[0].read_bytes()
            requests.append(request)
        call = tagging_pb2_grpc.TaggingServiceStub(channel).TagImages(
            iter(requests), metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=120)
        return list(call)


def item_error(stack, ids: list[str]) -> ClientError:
    failed = [r for r in raw_stream(stack, ids) if r.WhichOneof("outcome") == "error"]
    assert len(failed) == 1, failed
    return ClientError.from_item(failed[0].error)


def call(target: str, token: str | None = TOKEN, **kwargs) -> ClientError:
    image = kwargs.pop("image")
    with TaggingClient(target, token or "") as client, pytest.raises(ClientError) as caught:
        client.tag(image, **kwargs)
    return caught.value


@pytest.fixture(scope="module")
def dead_backends_orchestrator(tmp_path_factory):
    """An orchestrator whose backends listen nowhere: no tagger can answer."""
    closed = [free_port() for _ in range(3)]
    args = ["--no-auth", *(a for name, port in zip(("florence", "rampp", "siglip"), closed)
                           for a in (f"--{name}-target", f"127.0.0.1:{port}"))]
    argv = [sys.executable, "-m", "archivetag.cli", "serve", "orchestrator", *args]
    with ServerProcess(argv, log_path=tmp_path_factory.mktemp("dead") / "orchestrator.log") as server:
        server.wait_status("", "SERVING", timeout=60)  # the process: its readiness stays NOT_SERVING (no tagger)
        yield server


@pytest.fixture(scope="module")
def impatient_orchestrator(stack, tmp_path_factory):
    """An orchestrator in front of the stack's models that gives a caller without a deadline 1 ms."""
    targets = [a for name in ("florence", "rampp", "siglip") for a in (f"--{name}-target", f"127.0.0.1:{stack.ports[name]}")]
    with orchestrator(tmp_path_factory.mktemp("impatient"), "--no-auth", "--default-deadline-seconds", "0.001",
                      *targets) as server:
        server.wait_status("archivetag.v1.TaggingService", "SERVING", timeout=120)
        yield server


@pytest.fixture(scope="module")
def unloadable_rampp(tmp_path_factory):
    """A RAM++ service with no model to load: it stays NOT_SERVING (failed)."""
    folder = tmp_path_factory.mktemp("no-models")
    with model_service("rampp", folder, folder) as server:
        yield server


def no_tagger(server) -> ClientError:
    def tag_error():
        try:
            client.tag(SAMPLES[0].read_bytes(), deadline=30)
        except ClientError as exc:
            return exc
        return None

    with TaggingClient(server.address, retry=NO_RETRY) as client:
        # until the orchestrator has seen that the backends are unreachable
        return wait_for(tag_error, until=lambda e: e is not None and e.reason == errors_pb2.ERROR_REASON_NO_TAGGER_AVAILABLE,
                        timeout=120, describe="NO_TAGGER_AVAILABLE from an orchestrator without backends")


def model_not_serving(server) -> ClientError:
    from archivetag.v1 import tagger_pb2, tagger_pb2_grpc

    request = tagger_pb2.TagRequest()
    request.image.data = SAMPLES[0].read_bytes()

    def tag_error():
        try:
            tagger_pb2_grpc.TaggerServiceStub(channel).Tag(request, timeout=10)
        except grpc.RpcError as exc:
            return exc
        return None

    def answered(exc):  # not the UNAVAILABLE of a server that does not listen yet
        return exc is not None and (exc.code() != grpc.StatusCode.UNAVAILABLE or ClientError.from_call(exc).reason)

    with grpc.insecure_channel(server.address) as channel:
        return ClientError.from_call(wait_for(tag_error, until=answered, timeout=120,
                                              describe="RAM++ to answer (without a model)"))


class OutOfMemoryError(RuntimeError):
    """Named as torch's: errors.py matches the name so that it never imports torch."""


def queue_full_at_the_orchestrator() -> ClientError:
    async def main():
        scheduler = FairScheduler(capacity=1, per_client=1, max_queued=1)
        await scheduler.acquire("desk")
        waiting = asyncio.ensure_future(scheduler.acquire("desk"))
        await asyncio.sleep(0)
        try:
            await scheduler.acquire("desk")
        finally:
            waiting.cancel()
    with pytest.raises(Exception) as caught:
        asyncio.run(main())
    return as_client_error(caught.value)


def queue_full_at_a_model_service() -> ClientError:
    async def main():
        # Not started, so the first item stays queued and the queue of one is full.
        batcher = DynamicBatcher(lambda items, abandoned: items, name="rampp", max_queue_size=1)
        waiting = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0)
        try:
            await batcher.submit(2)
        finally:
            waiting.cancel()
    with pytest.raises(Exception) as caught:
        asyncio.run(main())
    return as_client_error(caught.value)


def as_client_error(exc: BaseException) -> ClientError:
    status = status_for(exc)
    return ClientError(status.code, status.message, errors_pb2.ErrorReason.Value(REASON_PREFIX + status.reason),
                       status.metadata, status.field)


CASES = {
    "IMAGE_MISSING": lambda s, d, r, t: _image_missing(s),
    "IMAGE_EMPTY": lambda s, d, r, t: call(s.target, image=b""),
    "IMAGE_TOO_LARGE": lambda s, d, r, t: call(s.target, image=bytes(MAX_IMAGE_BYTES + 1)),
    "IMAGE_TOO_MANY_PIXELS": lambda s, d, r, t: call(s.target, image=png(4000, MAX_IMAGE_PIXELS // 4000 + 1)),
    "IMAGE_FORMAT_UNSUPPORTED": lambda s, d, r, t: call(s.target, image=b"%PDF-1.4\n" + b"0" * 100),
    "IMAGE_CORRUPT": lambda s, d, r, t: call(s.target, image=b"\xff\xd8\xff\xe0" + b"\x07" * 64),
    "IMAGE_URI_REFUSED": lambda s, d, r, t: call(s.target, image=str(SAMPLES[0])),
    "FIELD_INVALID": lambda s, d, r, t: call(s.target, image=SAMPLES[0].read_bytes(), threshold=2.0),
    "ITEM_ID_INVALID": lambda s, d, r, t: item_error(s, ["same", "same"]),
    "TOKEN_MISSING": lambda s, d, r, t: call(s.target, token=None, image=SAMPLES[0].read_bytes()),
    "TOKEN_INVALID": lambda s, d, r, t: call(s.target, token="not-the-right-token-at-all", image=SAMPLES[0].read_bytes()),
    "CLIENT_QUEUE_FULL": lambda s, d, r, t: queue_full_at_the_orchestrator(),
    "INFERENCE_QUEUE_FULL": lambda s, d, r, t: queue_full_at_a_model_service(),
    "ACCELERATOR_OUT_OF_MEMORY": lambda s, d, r, t: as_client_error(OutOfMemoryError("CUDA out of memory")),
    "MODEL_NOT_SERVING": lambda s, d, r, t: model_not_serving(r),
    "NO_TAGGER_AVAILABLE": lambda s, d, r, t: no_tagger(d),
    # Without a deadline of its own, the caller gets the orchestrator's 1 ms default: the server's
    # timer, not the caller's racing it, says the deadline passed (and why). bypass_cache: a photo
    # tagged before would be answered from the cache.
    "DEADLINE_PASSED": lambda s, d, r, t: call(t.address, token=None, image=SAMPLES[0].read_bytes(), bypass_cache=True),
    "INFERENCE_FAILED": lambda s, d, r, t: as_client_error(RuntimeError("a bug")),
    "REQUEST_MALFORMED": lambda s, d, r, t: _malformed(s),
    # A valid progressive JPEG with more scans than the default limit (100).
    "IMAGE_DECODE_LIMIT": lambda s, d, r, t: call(s.target, image=progressive_jpeg(64, 64, 150)),
}


def _malformed(stack) -> ClientError:
    with grpc.insecure_channel(stack.target) as channel, pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary("/archivetag.v1.TaggingService/TagImage", request_serializer=None)(
            b"\xff\xfe not a protobuf message", metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=30)
    return ClientError.from_call(caught.value)


def _image_missing(stack) -> ClientError:
    with grpc.insecure_channel(stack.target) as channel, pytest.raises(grpc.RpcError) as caught:
        tagging_pb2_grpc.TaggingServiceStub(channel).TagImage(
            tagging_pb2.TagImageRequest(), metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=30)
    return ClientError.from_call(caught.value)


def test_every_reason_has_a_case():
    assert set(CASES) == set(REASON_STATUS)


@pytest.mark.parametrize("reason", sorted(REASON_STATUS))
def test_each_error_path_sets_the_documented_status_and_reason(reason, stack, dead_backends_orchestrator,
                                                               unloadable_rampp, impatient_orchestrator):
    error = CASES[reason](stack, dead_backends_orchestrator, unloadable_rampp, impatient_orchestrator)
    assert error.reason_name == reason, error
    assert error.code.name == documented()[reason], error
