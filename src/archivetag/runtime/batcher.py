"""The one dynamic batcher: concurrent requests → batched inference on one worker thread.

A batch goes when it holds `max_batch_size` items or its oldest item has waited
`max_queue_delay`. With the default delay of 0 that is continuous batching: an idle model
starts at once with what is queued, and what arrives while a batch runs forms the next one.

Two lanes: interactive items (a person waiting for one photo) are taken first and bulk
items fill the rest of the batch. Bulk never starves: while bulk waits, every batch
keeps one place for it (with max_batch_size 1, every second batch is bulk's).

Items whose caller went away (cancelled) or whose deadline passed
are dropped before inference. The queue is bounded: a full queue raises QueueFull
(RESOURCE_EXHAUSTED). The bound admits a request once, before its item is prepared
(decoding), so requests still decoding count against it too. Inference runs on a dedicated
thread, off the event loop, one batch at a time (a GPU runs one batch at a time anyway). If a batch raises, its items
are retried one by one, so a poison item fails only itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from archivetag.runtime import metrics, tracing
from archivetag.runtime.errors import DeadlineExpired, InvalidInput, NotServing, QueueFull
from archivetag.runtime.logs import fields

log = logging.getLogger("archivetag.batcher")

# infer(payloads, abandoned) -> one result or Exception per payload, in order.
# abandoned() is True once every item of the batch was cancelled or expired, so a long
# generation can stop early.
InferFn = Callable[[list[Any], Callable[[], bool]], Sequence[Any]]

INTERACTIVE, BULK = "interactive", "bulk"
LANES = (INTERACTIVE, BULK)
# gRPC metadata naming the lane of a call to a model service (absent: interactive).
LANE_METADATA_KEY = "archivetag-lane"


def lane_from_metadata(metadata) -> str:
    """The lane a caller asked for, from (key, value) pairs; InvalidInput if it names none."""
    for key, value in metadata or ():
        if key == LANE_METADATA_KEY:
            if value not in LANES:
                raise InvalidInput(f"{LANE_METADATA_KEY} metadata is {value!r}; use one of {', '.join(LANES)}")
            return value
    return INTERACTIVE


@dataclass(frozen=True)
class BatchInfo:
    """How one item was served, for the response's timings."""

    queue_seconds: float
    inference_seconds: float
    batch_size: int


@dataclass
class _Item:
    payload: Any
    future: asyncio.Future
    deadline: float | None  # time.monotonic() value
    enqueued: float
    lane: str = INTERACTIVE

    def gone(self, now: float) -> bool:
        return self.future.done() or (self.deadline is not None and now >= self.deadline)


class DynamicBatcher:
    def __init__(
        self,
        infer: InferFn,
        *,
        name: str,
        max_batch_size: int = 8,
        max_queue_delay: float = 0.0,
        max_queue_size: int = 64,
    ):
        if max_batch_size < 1 or max_queue_size < 1:
            raise ValueError("max_batch_size and max_queue_size must be at least 1")
        self.infer = infer
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay
        self.max_queue_size = max_queue_size
        self._queues: dict[str, list[_Item]] = {lane: [] for lane in LANES}
        self._last_batch_was_bulk = False  # for max_batch_size 1: bulk's turn alternates
        self._preparing = 0  # admitted requests whose item is still being prepared
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}")
        self._task: asyncio.Task | None = None
        # Read by the watchdog.
        self.batch_running_since: float | None = None
        self.last_progress = time.monotonic()
        self.consecutive_failures = 0
        self.last_failure = ""
        self.batches_done = 0

    # -- public -------------------------------------------------------------------
    def resize(self, max_batch_size: int) -> None:
        """Set the batch size once the device is known (the batcher is built before the model loads)."""
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.max_batch_size = max_batch_size

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for queue in self._queues.values():
            for item in queue:
                if not item.future.done():
                    item.future.set_exception(self._shutting_down())
            queue.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _shutting_down(self) -> NotServing:
        return NotServing("the server is shutting down", metadata={"model": self.name, "phase": "draining"})

    @property
    def depth(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    @property
    def has_pending_work(self) -> bool:
        return bool(self.depth) or self.batch_running_since is not None

    @property
    def preparing(self) -> int:
        return self._preparing

    async def submit(
        self, payload: Any = None, timeout: float | None = None,
        prepare: Callable[[], Awaitable[Any]] | None = None, lane: str = INTERACTIVE,
    ) -> tuple[Any, BatchInfo]:
        """Admit one request, queue its item in `lane` and wait for the result.

        prepare: makes the item (decodes the image) after admission, so a full server refuses
        a request before spending anything on it. timeout: seconds the caller still has,
        counted from now, preparation included.
        """
        if lane not in self._queues:
            raise ValueError(f"unknown lane {lane!r}; one of {', '.join(LANES)}")
        waiting = self.depth + self._preparing
        if waiting >= self.max_queue_size:
            raise QueueFull(
                f"inference queue is full ({self.depth} requests waiting for {self.name}, "
                f"{self._preparing} being decoded); retry later (limit: ARCHIVETAG_MAX_QUEUE_SIZE)",
                metadata={"model": self.name, "limit": self.max_queue_size, "setting": "ARCHIVETAG_MAX_QUEUE_SIZE"},
            )
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        if prepare is not None:
            self._preparing += 1
            try:
                with tracing.span("decode", model=self.name):
                    payload = await prepare()
            finally:
                self._preparing -= 1
        now = time.monotonic()
        if not self.has_pending_work:
            self.last_progress = now  # the stall clock starts when work arrives at an idle batcher
        item = _Item(payload, asyncio.get_running_loop().create_future(), deadline, now, lane)
        self._queues[lane].append(item)
        metrics.QUEUE_DEPTH.labels(self.name).set(self.depth)
        self._arrived.set()
        # Cancelling this coroutine (the client went away) cancels item.future, which
        # the batch loop sees and skips.
        result, info = await item.future
        started = item.enqueued + info.queue_seconds
        tracing.past_span("queue wait", item.enqueued, started, model=self.name, lane=lane)
        tracing.past_span("inference", started, started + info.inference_seconds, model=self.name,
                          batch_size=info.batch_size)
        return result, info

    # -- the loop -----------------------------------------------------------------
    def _prune(self) -> None:
        now = time.monotonic()
        for lane, queue in self._queues.items():
            kept = []
            for item in queue:
                if item.future.done():
                    continue
                if item.deadline is not None and now >= item.deadline:
                    item.future.set_exception(DeadlineExpired("deadline passed while waiting in the inference queue"))
                    continue
                kept.append(item)
            self._queues[lane] = kept

    def _take_batch(self) -> list[_Item]:
        """Interactive items first, bulk fills the rest; bulk keeps one place while it waits."""
        interactive, bulk = self._queues[INTERACTIVE], self._queues[BULK]
        size = self.max_batch_size
        if size == 1:
            bulk_places = 1 if bulk and (not interactive or not self._last_batch_was_bulk) else 0
        else:
            bulk_places = max(1 if bulk else 0, size - len(interactive))
        bulk_taken = bulk[:bulk_places]
        interactive_taken = interactive[:size - len(bulk_taken)]
        self._queues[INTERACTIVE] = interactive[len(interactive_taken):]
        self._queues[BULK] = bulk[len(bulk_taken):]
        self._last_batch_was_bulk = bool(bulk_taken)
        metrics.QUEUE_DEPTH.labels(self.name).set(self.depth)
        return interactive_taken + bulk_taken

    async def _next_batch(self) -> list[_Item]:
        while True:
            self._prune()
            queued = self.depth
            if not queued:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            oldest = min(queue[0].enqueued for queue in self._queues.values() if queue)
            remaining = oldest + self.max_queue_delay - time.monotonic()
            if queued >= self.max_batch_size or remaining <= 0:
                return self._take_batch()
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                pass

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            started = time.monotonic()
            self.batch_running_since = started
            for item in batch:
                metrics.QUEUE_WAIT.labels(self.name, item.lane).observe(started - item.enqueued)
            metrics.BATCH_SIZE.labels(self.name).observe(len(batch))

            def abandoned(batch: list[_Item] = batch) -> bool:
                now = time.monotonic()
                return all(item.gone(now) for item in batch)

            try:
                results, failed = await loop.run_in_executor(
                    self._executor, self._infer_isolating_failures, [i.payload for i in batch], abandoned
                )
            except asyncio.CancelledError:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(self._shutting_down())
                raise
            finished = time.monotonic()
            self.batch_running_since = None
            self.last_progress = finished
            self.batches_done += 1
            metrics.INFERENCE_SECONDS.labels(self.name).observe(finished - started)
            if failed:
                self.consecutive_failures += 1
                self.last_failure = f"{type(results[0]).__name__}: {results[0]}"
                log.warning(
                    "inference batch failed",
                    extra=fields(model=self.name, batch_size=len(batch), error=self.last_failure,
                                 consecutive_failures=self.consecutive_failures),
                )
            else:
                self.consecutive_failures = 0
            for item, result in zip(batch, results):
                if item.future.done():
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    info = BatchInfo(started - item.enqueued, finished - started, len(batch))
                    item.future.set_result((result, info))

    def _infer_isolating_failures(
        self, payloads: list[Any], abandoned: Callable[[], bool]
    ) -> tuple[list[Any], bool]:
        """Run a batch; if it raises, run its items one by one. Returns (results, batch_failed)."""
        cpu_started = time.thread_time()
        try:
            return self._infer_or_split(payloads, abandoned)
        finally:
            metrics.THREAD_CPU_SECONDS.labels("inference").inc(time.thread_time() - cpu_started)

    def _infer_or_split(self, payloads: list[Any], abandoned: Callable[[], bool]) -> tuple[list[Any], bool]:
        try:
            results = list(self.infer(payloads, abandoned))
            if len(results) != len(payloads):
                raise RuntimeError(f"model returned {len(results)} results for {len(payloads)} inputs")
            return results, False
        except Exception as exc:  # noqa: BLE001 - any model error becomes the items' errors
            if len(payloads) == 1:
                return [exc], True
            log.warning("batch raised; retrying its items one by one", extra=fields(model=self.name, error=str(exc)))
        results = []
        for payload in payloads:
            try:
                results.extend(self.infer([payload], abandoned))
            except Exception as exc:  # noqa: BLE001
                results.append(exc)
        return results, all(isinstance(r, BaseException) for r in results)
