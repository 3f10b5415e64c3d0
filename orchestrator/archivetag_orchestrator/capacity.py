"""How many calls a backend gets at once, and where the rest wait: overload is not failure.

A model service starts on one batch per replica and decodes the next meanwhile; whatever is
sent beyond that waits in the service's own queue, where its deadline runs, nobody orders it,
and a photo that waits too long there looks to the orchestrator like a slow, failing backend
(seen: 12 photos at once on a CPU, 10 of them failed over to RAM++ with DEADLINE_EXCEEDED and
the breaker opened on a healthy Florence-2). So the orchestrator sends each backend only what
its serving replicas can start on now (`capacity`: per replica its batch size, from
GetModelInfo, plus one batch being decoded), and the other calls wait here, interactive ones
first, in arrival order within a lane. A call's deadline starts when it is admitted, so only a
backend's own slowness counts against its breaker.
"""

from __future__ import annotations

import asyncio
from collections import deque

from prometheus_client import Gauge

from archivetag.runtime.batcher import LANES

BACKEND_WAITING = Gauge("archivetag_backend_waiting", "Calls waiting in the orchestrator for a busy backend.",
                        ["backend"])
BACKEND_CALLS = Gauge("archivetag_backend_calls", "Calls a backend is working on (admitted, not answered).",
                      ["backend"])


class BackendCapacity:
    def __init__(self, name: str, capacity: int = 2):
        self.name = name
        self.capacity = max(1, capacity)
        self.running = 0
        self.waiting: dict[str, deque[asyncio.Future]] = {lane: deque() for lane in LANES}

    @property
    def queued(self) -> int:
        return sum(1 for queue in self.waiting.values() for f in queue if not f.done())

    def describe(self) -> str:
        return f"{self.running} of {self.capacity} calls running, {self.queued} waiting"

    def resize(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._dispatch()

    def has_room(self, lane: str) -> bool:
        """Would a call in `lane` be admitted now (a free call, and nobody of its lane or a better one waiting)?"""
        ahead = LANES[: LANES.index(lane) + 1]
        return self.running < self.capacity and not any(
            not f.done() for other in ahead for f in self.waiting[other])

    async def acquire(self, lane: str) -> None:
        """Wait for a free call in `lane`; cancel to stop waiting. Each acquire is paired with one release."""
        if self.has_room(lane):
            self._grant()
            return
        future = asyncio.get_running_loop().create_future()
        self.waiting[lane].append(future)
        self._gauges()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted just as the caller left: give the call back
            else:
                future.cancel()
                self._gauges()
            raise

    def release(self) -> None:
        self.running -= 1
        self._dispatch()

    def _grant(self) -> None:
        self.running += 1
        self._gauges()

    def _dispatch(self) -> None:
        while self.running < self.capacity:
            for lane in LANES:
                queue = self.waiting[lane]
                while queue and queue[0].done():  # callers that left while waiting
                    queue.popleft()
                if queue:
                    self._grant()
                    queue.popleft().set_result(None)
                    break
            else:
                break
        self._gauges()

    def _gauges(self) -> None:
        BACKEND_CALLS.labels(self.name).set(self.running)
        BACKEND_WAITING.labels(self.name).set(self.queued)
