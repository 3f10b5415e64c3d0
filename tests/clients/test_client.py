"""archivetag.client (sync and async) against the real stack: each case asserts the typed
reason or enum the contract promises, never a message text."""

from __future__ import annotations

import asyncio
import os
import signal

import grpc
import pytest

from archivetag.client import AsyncTaggingClient, ClientError, TagItem, TaggingClient
from archivetag.v1 import errors_pb2, tagging_pb2
from tests.support.image_corpus import encode, photo
from tests.support.waiting import wait_for
from tests.clients.conftest import MAX_IMAGE_BYTES, SAMPLES, TOKEN

CORRUPT_JPEG = b"\xff\xd8\xff\xe0" + b"\x07" * 64


def error_of(call) -> ClientError:
    with pytest.raises(ClientError) as caught:
        call()
    return caught.value


def wait_until(probe, what: str, timeout: float = 120.0):
    """The shared wait, with the client's errors counting as "not yet"."""
    return wait_for(probe, timeout=timeout, describe=what, ignore=(ClientError,))


@pytest.fixture
def client(stack):
    with TaggingClient(stack.target, TOKEN) as c:
        yield c


def test_tags_every_sample_photo(client):
    for sample in SAMPLES:
        result = client.tag(sample.read_bytes(), max_tags=5)
        assert result.tagger == "florence", sample.name
        assert result.fallback == tagging_pb2.FALLBACK_REASON_UNSPECIFIED, sample.name
        assert result.primary_health == tagging_pb2.BACKEND_HEALTH_SERVING, sample.name
        assert 0 < len(result.tags) <= 5, sample.name
        assert result.view_type.scores, sample.name


def test_async_client_tags_and_reports_health(stack):
    async def main():
        async with AsyncTaggingClient(stack.target, TOKEN) as client:
            result = await client.tag(SAMPLES[0].read_bytes())
            return result.tagger, await client.health()

    assert asyncio.run(main()) == ("florence", "SERVING")


def test_corrupt_image_is_invalid_argument_image_corrupt_and_not_retryable(client):
    error = error_of(lambda: client.tag(CORRUPT_JPEG))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == errors_pb2.ERROR_REASON_IMAGE_CORRUPT
    assert not error.retryable


def test_image_over_the_limit_is_image_too_large_naming_limit_and_setting(client):
    error = error_of(lambda: client.tag(bytes(MAX_IMAGE_BYTES + 1)))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == errors_pb2.ERROR_REASON_IMAGE_TOO_LARGE
    assert error.metadata["limit_bytes"] == str(MAX_IMAGE_BYTES)
    assert error.metadata["setting"] == "ARCHIVETAG_MAX_IMAGE_BYTES"
    assert error.field == "image.data"


def test_50_ms_deadline_is_deadline_exceeded_not_unavailable(client):
    # bypass_cache: a photo tagged before is a cache hit, answered well within 50 ms.
    error = error_of(lambda: client.tag(SAMPLES[0].read_bytes(), deadline=0.05, bypass_cache=True))
    assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error.reason == errors_pb2.ERROR_REASON_DEADLINE_PASSED
    assert not error.retryable


def test_missing_and_wrong_tokens_are_unauthenticated_with_their_reasons(stack):
    with TaggingClient(stack.target) as anonymous:
        error = error_of(lambda: anonymous.tag(SAMPLES[0].read_bytes()))
        assert error.code == grpc.StatusCode.UNAUTHENTICATED
        assert error.reason == errors_pb2.ERROR_REASON_TOKEN_MISSING
        assert anonymous.health() == "SERVING"  # health needs no token
    with TaggingClient(stack.target, "not-the-right-token-at-all") as wrong:
        assert error_of(wrong.status).reason == errors_pb2.ERROR_REASON_TOKEN_INVALID
        streamed = error_of(lambda: list(wrong.tag_many([TagItem(SAMPLES[0].read_bytes())])))
        assert streamed.reason == errors_pb2.ERROR_REASON_TOKEN_INVALID


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_stream_answers_every_item_once_and_the_corrupt_one_has_its_own_typed_error(stack, kind):
    items = [TagItem(p.read_bytes(), id=p.name, max_tags=3) for p in SAMPLES]
    items.insert(2, TagItem(CORRUPT_JPEG, id="corrupt"))
    if kind == "sync":
        with TaggingClient(stack.target, TOKEN) as client:
            answers = list(client.tag_many(items, window=2))
    else:
        async def main():
            async with AsyncTaggingClient(stack.target, TOKEN) as client:
                return [a async for a in client.tag_many(items, window=2)]
        answers = asyncio.run(main())
    ids = [a.id for a in answers]
    assert sorted(ids) == sorted(i.id for i in items)
    by_id = {a.id: a for a in answers}
    assert by_id["corrupt"].error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert by_id["corrupt"].error.reason == errors_pb2.ERROR_REASON_IMAGE_CORRUPT
    assert all(by_id[p.name].ok for p in SAMPLES)


def test_a_repeated_photo_is_cached_unless_the_call_opts_out(client):
    first = client.tag(SAMPLES[1].read_bytes(), max_tags=3)
    again = client.tag(SAMPLES[1].read_bytes(), max_tags=3)
    bypassed = client.tag(SAMPLES[1].read_bytes(), max_tags=3, bypass_cache=True)
    assert again.cached
    assert list(again.tags) == list(first.tags)
    assert again.tagged_at == first.tagged_at
    assert not bypassed.cached


def test_items_without_id_are_numbered(client):
    answers = list(client.tag_many([TagItem(SAMPLES[0].read_bytes()), TagItem(SAMPLES[1].read_bytes())]))
    assert sorted(a.id for a in answers) == ["0", "1"]


def test_fallback_after_florence_is_stopped_is_typed_and_status_marks_the_error_resolved(stack, client):
    def florence_answers():  # the models, not a cached answer of an earlier call
        return client.tag(SAMPLES[0].read_bytes(), bypass_cache=True).tagger == "florence"

    # Earlier slow answers on a busy machine may have opened the breaker: start from Florence answering.
    wait_until(florence_answers, "Florence answers", timeout=300)
    florence = stack.pid("florence")
    os.kill(florence, signal.SIGSTOP)
    try:
        # 8 s: Florence gets 3 s (5 s are kept for the fallback), then RAM++ answers.
        result = client.tag(SAMPLES[0].read_bytes(), deadline=8, bypass_cache=True)
        assert result.tagger == "rampp"
        assert result.fallback == tagging_pb2.FALLBACK_REASON_DEADLINE_EXCEEDED
        # The cut call was the caller's deadline, not Florence's fault; the health check that finds the
        # stopped replica is what records the error.
        backend = wait_until(lambda: next((b for b in client.status().backends if b.name == "florence" and b.last_error), None),
                             "Florence's last error in GetStatus", timeout=120)
        assert backend.HasField("last_error_time")
        assert not backend.last_error_resolved
    finally:
        os.kill(florence, signal.SIGCONT)
    wait_until(florence_answers, "Florence answers again", timeout=300)
    backend = next(b for b in client.status().backends if b.name == "florence")
    assert backend.last_error_resolved


def test_an_image_over_the_clients_limit_is_refused_before_sending_and_the_next_call_works(client):
    with pytest.raises(ClientError) as caught:
        client.tag(bytes(40 * 1024 * 1024))
    error = caught.value
    assert (error.code, error.reason_name, error.field) == (grpc.StatusCode.INVALID_ARGUMENT, "IMAGE_TOO_LARGE",
                                                            "image.data")
    assert error.metadata["limit_bytes"] == str(32 * 1024 * 1024)
    assert not error.retryable
    assert client.tag(encode(photo(), "PNG"), bypass_cache=True).tags


def test_a_stream_answers_an_item_over_the_clients_limit_with_its_own_error_and_sends_the_rest(client):
    items = [TagItem(encode(photo(), "PNG"), id="small"), TagItem(bytes(40 * 1024 * 1024), id="huge"),
             TagItem(encode(photo(80, 60), "PNG"), id="other")]
    answers = {answer.id: answer for answer in client.tag_many(items, window=2)}
    assert set(answers) == {"small", "huge", "other"}
    assert answers["small"].ok and answers["other"].ok
    assert answers["huge"].error.reason_name == "IMAGE_TOO_LARGE"
