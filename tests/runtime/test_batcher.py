"""The dynamic batcher, in process (the gRPC-level behaviour is in test_model_server.py)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from archivetag.runtime.batcher import DynamicBatcher
from archivetag.runtime.errors import DeadlineExpired, QueueFull
from tests.support.waiting import wait_for_async


class RecordingModel:
    """Doubles numbers; records every batch it sees; can be held on a gate."""

    def __init__(self):
        self.batches: list[list] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, items, abandoned):
        self.batches.append(list(items))
        self.entered.set()
        self.gate.wait(10)
        return [ValueError(f"cannot double {x!r}") if isinstance(x, str) else x * 2 for x in items]


async def _started(model, **kwargs) -> DynamicBatcher:
    batcher = DynamicBatcher(model, name="test", **kwargs)
    batcher.start()
    return batcher


async def test_concurrent_requests_are_served_in_batches():
    model = RecordingModel()
    batcher = await _started(model, max_batch_size=8, max_queue_delay=0.05)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(16)))
    assert [r for r, _ in results] == [i * 2 for i in range(16)]
    assert max(len(b) for b in model.batches) == 8
    assert len(model.batches) == 2
    assert {info.batch_size for _, info in results} == {8}
    await batcher.stop()


async def test_a_single_request_is_served_alone_once_the_queue_delay_has_passed():
    model = RecordingModel()
    batcher = await _started(model, max_batch_size=8, max_queue_delay=0.02)
    result, info = await asyncio.wait_for(batcher.submit(21), 60)  # not waiting for 7 more requests
    assert result == 42
    assert info.batch_size == 1
    assert info.queue_seconds >= 0.02 - 1e-6  # it waited for company, as long as the delay allows
    assert model.batches == [[21]]
    await batcher.stop()


async def test_without_a_queue_delay_what_arrives_while_the_model_is_busy_forms_the_next_batch():
    model = RecordingModel()
    batcher = await _started(model, max_batch_size=8)  # the default delay: 0 (how soon is the stack benchmark's)
    answers = await _held_then_queued(model, batcher, [(i, "interactive") for i in range(3)])
    assert answers == [0, 2, 4]
    assert model.batches == [[-1], [0, 1, 2]]
    await batcher.stop()


async def _held_then_queued(model: RecordingModel, batcher: DynamicBatcher, items: list[tuple[int, str]]):
    """Hold the model on a first item, queue `items` (value, lane) in that order, release; the answers."""
    model.gate.clear()
    blocker = asyncio.create_task(batcher.submit(-1))
    await asyncio.to_thread(model.entered.wait, 30)
    tasks = [asyncio.create_task(batcher.submit(value, lane=lane)) for value, lane in items]
    await wait_for_async(lambda: batcher.depth, lambda n: n == len(items), describe="every item queued")
    model.gate.set()
    results = await asyncio.gather(blocker, *tasks)
    return [r for r, _ in results[1:]]


async def test_interactive_items_go_first_and_bulk_items_fill_the_rest_of_the_batch():
    model = RecordingModel()
    batcher = await _started(model, max_batch_size=8, max_queue_delay=0)
    bulk = [(100 + i, "bulk") for i in range(10)]
    interactive = [(i, "interactive") for i in range(3)]
    answers = await _held_then_queued(model, batcher, bulk + interactive)  # bulk queued first
    assert answers == [v * 2 for v, _ in bulk + interactive]
    assert model.batches[1] == [0, 1, 2, 100, 101, 102, 103, 104]
    assert model.batches[2] == [105, 106, 107, 108, 109]
    await batcher.stop()


async def test_bulk_keeps_one_place_in_every_batch_while_interactive_items_wait():
    model = RecordingModel()
    batcher = await _started(model, max_batch_size=4, max_queue_delay=0)
    bulk = [(100 + i, "bulk") for i in range(3)]
    interactive = [(i, "interactive") for i in range(20)]
    await _held_then_queued(model, batcher, bulk + interactive)
    batches = model.batches[1:]
    assert batches[:3] == [[0, 1, 2, 100], [3, 4, 5, 101], [6, 7, 8, 102]]
    assert batches[3:] == [[9, 10, 11, 12], [13, 14, 15, 16], [17, 18, 19]]
    await batcher.stop()


async def test_with_batches_of_one_bulk_gets_every_second_batch_while_both_wait():
    model = RecordingModel()
    batcher = await _started(model, max_batch_size=1, max_queue_delay=0)
    await _held_then_queued(model, batcher, [(100, "bulk"), (101, "bulk"), (0, "interactive"), (1, "interactive"),
                                             (2, "interactive")])
    assert model.batches[1:] == [[100], [0], [101], [1], [2]]
    await batcher.stop()


async def test_an_unknown_lane_is_refused():
    batcher = await _started(RecordingModel())
    with pytest.raises(ValueError, match="unknown lane"):
        await batcher.submit(1, lane="urgent")
    await batcher.stop()


async def test_a_full_queue_refuses_with_a_message_that_says_so():
    model = RecordingModel()
    model.gate.clear()
    batcher = await _started(model, max_batch_size=1, max_queue_delay=0, max_queue_size=2)
    first = asyncio.create_task(batcher.submit(0))
    await asyncio.to_thread(model.entered.wait, 5)  # the worker is busy with item 0
    queued = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
    await wait_for_async(lambda: batcher.depth, lambda depth: depth == 2, describe="queue depth")
    with pytest.raises(QueueFull, match="queue is full"):
        await batcher.submit(3)
    model.gate.set()
    assert [r for r, _ in await asyncio.gather(first, *queued)] == [0, 2, 4]
    await batcher.stop()


async def test_cancelled_and_expired_requests_never_reach_the_model():
    model = RecordingModel()
    model.gate.clear()
    batcher = await _started(model, max_batch_size=8, max_queue_delay=0)
    blocker = asyncio.create_task(batcher.submit(100))
    await asyncio.to_thread(model.entered.wait, 5)
    cancelled = asyncio.create_task(batcher.submit(1))
    expiring = asyncio.create_task(batcher.submit(2, timeout=0.05))
    kept = asyncio.create_task(batcher.submit(3))
    await wait_for_async(lambda: batcher.depth, lambda depth: depth == 3, describe="queue depth")
    cancelled.cancel()
    # The deadline of item 2 (0.05 s after it was queued) passes while the model is busy.
    passed = time.monotonic() + 0.05
    await wait_for_async(time.monotonic, lambda now: now > passed, describe="item 2's deadline to pass")
    model.gate.set()
    assert (await kept)[0] == 6
    with pytest.raises(DeadlineExpired):
        await expiring
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await blocker
    seen = [x for batch in model.batches for x in batch]
    assert seen == [100, 3]
    await batcher.stop()


async def test_an_item_error_fails_only_that_item():
    model = RecordingModel()
    batcher = await _started(model, max_batch_size=8, max_queue_delay=0.05)
    results = await asyncio.gather(batcher.submit(1), batcher.submit("bad"), batcher.submit(3), return_exceptions=True)
    assert results[0][0] == 2
    assert results[2][0] == 6
    assert isinstance(results[1], ValueError)
    assert batcher.consecutive_failures == 0  # the model worked; one input was bad
    await batcher.stop()


async def test_a_batch_that_raises_is_retried_item_by_item_so_only_the_poison_fails():
    calls = []

    def model(items, abandoned):
        calls.append(list(items))
        if "poison" in items:
            raise RuntimeError("kernel crashed on poison")
        return [x * 2 for x in items]

    batcher = await _started(model, max_batch_size=8, max_queue_delay=0.05)
    results = await asyncio.gather(batcher.submit(1), batcher.submit("poison"), batcher.submit(3), return_exceptions=True)
    assert results[0][0] == 2
    assert results[2][0] == 6
    assert isinstance(results[1], RuntimeError)
    assert calls[0] == [1, "poison", 3]
    assert [1] in calls
    assert [3] in calls
    assert batcher.consecutive_failures == 0
    await batcher.stop()


async def test_failed_batches_are_counted_until_one_succeeds():
    broken = {"on": True}

    def model(items, abandoned):
        if broken["on"]:
            raise RuntimeError("CUDA error: device-side assert")
        return items

    batcher = await _started(model, max_batch_size=4, max_queue_delay=0)
    for _ in range(3):
        with pytest.raises(RuntimeError):
            await batcher.submit(1)
    assert batcher.consecutive_failures == 3
    assert "device-side assert" in batcher.last_failure
    broken["on"] = False
    await batcher.submit(1)
    assert batcher.consecutive_failures == 0
    await batcher.stop()


async def test_abandoned_tells_the_model_when_every_caller_is_gone():
    seen = {}
    release = threading.Event()

    def model(items, abandoned):
        seen["before"] = abandoned()
        release.wait(60)
        seen["after"] = abandoned()
        return items

    batcher = await _started(model, max_batch_size=4, max_queue_delay=0.02)
    tasks = [asyncio.create_task(batcher.submit(i)) for i in range(2)]
    await wait_for_async(lambda: dict(seen), lambda s: "before" in s, timeout=60, describe="the model to be called")
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    release.set()
    await wait_for_async(lambda: dict(seen), lambda s: "after" in s, timeout=60, describe="the model to look again")
    assert seen == {"before": False, "after": True}
    await batcher.stop()


async def test_inference_runs_off_the_event_loop():
    loop_thread = threading.get_ident()
    threads = []

    def model(items, abandoned):
        threads.append(threading.get_ident())
        return items

    batcher = await _started(model)
    await batcher.submit(1)
    assert threads
    assert loop_thread not in threads
    await batcher.stop()


async def test_requests_still_being_prepared_count_against_the_queue_bound():
    model = RecordingModel()
    batcher = await _started(model, max_batch_size=4, max_queue_delay=0, max_queue_size=2)
    decoded = asyncio.Event()

    async def slow_decode(value: int):
        await decoded.wait()
        return value

    preparing = [asyncio.create_task(batcher.submit(prepare=lambda v=v: slow_decode(v))) for v in (1, 2)]
    await wait_for_async(lambda: batcher.preparing, until=lambda n: n == 2, describe="both requests preparing")
    assert batcher.depth == 0  # nothing has reached the inference queue yet ...
    started_decoding = []

    async def never_called():
        started_decoding.append(True)
        return 0

    with pytest.raises(QueueFull, match="2 being decoded"):  # ... yet the server is full
        await batcher.submit(prepare=never_called)
    assert started_decoding == []  # refused before its decode began
    decoded.set()
    assert [r for r, _ in await asyncio.gather(*preparing)] == [2, 4]
    assert batcher.preparing == 0
    assert (await batcher.submit(5))[0] == 10  # the places were given back
    await batcher.stop()


async def test_a_failed_preparation_gives_its_place_back_and_reaches_the_caller():
    batcher = await _started(RecordingModel(), max_queue_size=1)

    async def corrupt():
        raise ValueError("corrupt image")

    with pytest.raises(ValueError, match="corrupt image"):
        await batcher.submit(prepare=corrupt)
    assert batcher.preparing == 0
    assert (await batcher.submit(1))[0] == 2
    await batcher.stop()
