"""Overload is not failure: photos wait in the orchestrator for a busy tagger, not in its queue.

The smoke services run at the CPU's batch size (1), so Florence-2 can start on two photos at once
(one inferring, one decoding). Sent eight at once, the other six wait in the orchestrator, where
their deadline has not started: every photo is answered by Florence-2, none fails over, the breaker
stays closed. With the overflow policy FALLBACK, the photos Florence-2 cannot start on go to RAM++
at once instead, saying OVERLOADED.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from archivetag.v1 import tagging_pb2
from tests.conftest import orchestrator
from tests.orchestrator.test_orchestrator import (
    ALL_SERVING, TAGGING, backend, model_services, stub, tag_request, targets, wait_health,
)

# Florence-2 generating a few dozen tokens per photo: slow enough that eight photos overlap.
FLORENCE_BUSY = ("--florence-max-new-tokens", "24", "--florence-num-beams", "2")
PHOTOS = 8


@pytest.fixture(scope="module")
def busy(smoke_models, tmp_path_factory):
    """The three services at the CPU batch size, and an orchestrator without auth or cache in front."""
    logs = tmp_path_factory.mktemp("overload")
    with model_services(smoke_models, logs, FLORENCE_BUSY) as services:
        addresses = {name: server.address for name, server in services.items()}
        args = ("--no-auth", "--cache", "off", "--florence-deadline-seconds", "120", *targets(**addresses))
        with orchestrator(logs, *args) as server:
            server.wait_status(TAGGING, "SERVING", timeout=60)
            wait_health(server.address, **ALL_SERVING)
            yield server


def tag_at_once(address: str, **fields) -> tuple[list[tagging_pb2.TagImageResponse], list[tagging_pb2.BackendStatus]]:
    """PHOTOS photos sent at once; Florence-2's status seen every few milliseconds meanwhile."""
    seen: list[tagging_pb2.BackendStatus] = []
    done = threading.Event()

    def watch() -> None:
        client = stub(address)
        while not done.is_set():
            seen.append(backend(client.GetStatus(tagging_pb2.GetStatusRequest(), timeout=30), "florence"))
            done.wait(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(PHOTOS) as pool:
            answers = list(pool.map(lambda seed: stub(address).TagImage(tag_request(seed, **fields), timeout=300),
                                    range(PHOTOS)))
    finally:
        done.set()
        watcher.join()
    return answers, seen


def test_a_busy_florence_gets_only_what_it_can_start_on_and_every_photo_is_its_answer(busy):
    answers, seen = tag_at_once(busy.address)
    assert [a.tagger for a in answers] == ["florence"] * PHOTOS, [a.fallback_reason for a in answers]
    assert all(a.fallback == tagging_pb2.FALLBACK_REASON_UNSPECIFIED for a in answers)
    capacity = seen[-1].capacity
    assert capacity == 2  # batch size 1, plus the next photo being decoded
    assert max(s.calls for s in seen) <= capacity
    assert max(s.waiting for s in seen) >= 1  # the rest waited here, not in Florence-2's queue
    assert any(a.timings.tagger_wait_seconds > 0 for a in answers)
    after = backend(stub(busy.address).GetStatus(tagging_pb2.GetStatusRequest(), timeout=30), "florence")
    assert after.breaker == tagging_pb2.BREAKER_STATE_CLOSED
    assert (after.calls, after.waiting) == (0, 0)


def test_with_overflow_fallback_what_florence_cannot_start_on_goes_to_rampp_at_once(busy):
    answers, seen = tag_at_once(busy.address, overflow=tagging_pb2.OVERFLOW_POLICY_FALLBACK)
    taggers = [a.tagger for a in answers]
    assert set(taggers) == {"florence", "rampp"}, taggers
    assert all(a.fallback == tagging_pb2.FALLBACK_REASON_OVERLOADED for a in answers if a.tagger == "rampp")
    assert all("overflow policy FALLBACK" in a.fallback_reason for a in answers if a.tagger == "rampp")
    assert max(s.calls for s in seen) <= seen[-1].capacity
    assert max(s.waiting for s in seen) == 0  # nobody waited for Florence-2
    status = backend(stub(busy.address).GetStatus(tagging_pb2.GetStatusRequest(), timeout=30), "florence")
    assert status.breaker == tagging_pb2.BREAKER_STATE_CLOSED


def test_an_unknown_overflow_policy_is_invalid_argument_naming_the_field(busy):
    with pytest.raises(grpc.RpcError) as caught:
        stub(busy.address).TagImage(tag_request(0, overflow=7), timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "overflow" in caught.value.details()
