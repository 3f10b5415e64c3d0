"""Fair share of the backends between archive clients.

At most `capacity` images are processed at once (the window each backend sees: about what
it batches next, so order is decided here and not by a queue inside the backend), at most
`per_client` of them for one client (times its weight). Waiting images queue per client
and lane. A freed slot goes first to interactive images (TagImage: a person waits), then
to bulk ones (TagImages); within a lane, to the waiting client with the least work running
for its weight (round-robin among equals). Interactive images may use `interactive_reserve`
slots beyond the window, so a person's photo reaches a busy backend at once and its
batcher takes it first (runtime/batcher.py lanes), while one client's 50,000-photo import
keeps the window full.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from prometheus_client import Counter, Gauge, Histogram

from archivetag.runtime import tracing
from archivetag.runtime.batcher import INTERACTIVE, LANES
from archivetag.runtime.errors import QueueFull

CLIENT_QUEUE_WAIT = Histogram(
    "archivetag_client_queue_wait_seconds", "Time an image waited for a processing slot.", ["client", "lane"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
CLIENT_IN_FLIGHT = Gauge("archivetag_client_in_flight", "Images of a client being processed now.", ["client"])
CLIENT_ANSWERED = Counter("archivetag_client_answered_total", "Images of a client that left their slot.",
                          ["client", "lane"])


def parse_weights(entries: list[str]) -> dict[str, float]:
    """'name:weight' entries (the client_weights option) as {name: weight}; ValueError if malformed."""
    weights = {}
    for entry in entries:
        name, sep, value = entry.rpartition(":")
        try:
            weight = float(value)
        except ValueError:
            weight = 0.0
        if not sep or not name or weight <= 0:
            raise ValueError(f"client weight {entry!r} is not 'client-name:positive-number'")
        weights[name] = weight
    return weights


class FairScheduler:
    def __init__(self, capacity: int, per_client: int, max_queued: int, *,
                 weights: dict[str, float] | None = None, interactive_reserve: int = 0,
                 client_label: Callable[[str], str] = str):
        """client_label: a client's name as its metrics show it (auth.metrics_names)."""
        self.client_label = client_label
        self.capacity = max(1, capacity)
        self.per_client = max(1, min(per_client, self.capacity))
        self.max_queued = max(1, max_queued)
        self.weights = dict(weights or {})
        self.interactive_reserve = max(0, interactive_reserve)
        self.running = 0
        self.running_by_client: dict[str, int] = {}
        self.waiting: dict[str, dict[str, deque[asyncio.Future]]] = {lane: {} for lane in LANES}
        self.turns: dict[str, deque[str]] = {lane: deque() for lane in LANES}  # next turn first

    @property
    def queued(self) -> int:
        return sum(len(q) for by_client in self.waiting.values() for q in by_client.values())

    def weight(self, client: str) -> float:
        return self.weights.get(client, 1.0)

    def _queued_by(self, client: str) -> int:
        return sum(len(by_client.get(client, ())) for by_client in self.waiting.values())

    @asynccontextmanager
    async def slot(self, client: str, lane: str = INTERACTIVE) -> AsyncIterator[float]:
        """Hold one processing slot for `client`; yields the seconds spent waiting for it."""
        with tracing.span("fair-share wait", client=client, lane=lane):
            waited = await self.acquire(client, lane)
        CLIENT_QUEUE_WAIT.labels(self.client_label(client), lane).observe(waited)
        try:
            yield waited
        finally:
            self.release(client)
            CLIENT_ANSWERED.labels(self.client_label(client), lane).inc()

    async def acquire(self, client: str, lane: str = INTERACTIVE) -> float:
        started = time.monotonic()
        if client not in self.waiting[lane] and self._may_run(client, lane):
            self._grant(client)
            return 0.0
        if self._queued_by(client) >= self.max_queued:
            raise QueueFull(
                f"client {client!r} has {self._queued_by(client)} images waiting; the limit is {self.max_queued} "
                "(ARCHIVETAG_CLIENT_MAX_QUEUED): wait for answers before sending more",
                reason="CLIENT_QUEUE_FULL",
                metadata={"client": client, "limit": self.max_queued, "setting": "ARCHIVETAG_CLIENT_MAX_QUEUED"},
            )
        queue = self.waiting[lane].setdefault(client, deque())
        future = asyncio.get_running_loop().create_future()
        queue.append(future)
        if client not in self.turns[lane]:
            self.turns[lane].append(client)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(client)  # granted just as the caller left: give the slot back
            else:
                self._forget(client, lane, future)
            raise
        return time.monotonic() - started

    def release(self, client: str) -> None:
        self.running -= 1
        self.running_by_client[client] -= 1
        if not self.running_by_client[client]:
            del self.running_by_client[client]
        CLIENT_IN_FLIGHT.labels(self.client_label(client)).set(self.running_by_client.get(client, 0))
        self._dispatch()

    def _may_run(self, client: str, lane: str) -> bool:
        extra = self.interactive_reserve if lane == INTERACTIVE else 0
        client_limit = max(1, min(self.capacity, round(self.per_client * self.weight(client))))
        return (self.running < self.capacity + extra
                and self.running_by_client.get(client, 0) < client_limit + extra)

    def _grant(self, client: str) -> None:
        self.running += 1
        self.running_by_client[client] = self.running_by_client.get(client, 0) + 1
        CLIENT_IN_FLIGHT.labels(self.client_label(client)).set(self.running_by_client[client])

    def _forget(self, client: str, lane: str, future: asyncio.Future) -> None:
        queue = self.waiting[lane].get(client)
        if queue is not None and future in queue:
            queue.remove(future)
        if queue is not None and not queue:
            del self.waiting[lane][client]
            if client in self.turns[lane]:
                self.turns[lane].remove(client)

    def _drop_departed(self, lane: str) -> None:
        for client in list(self.turns[lane]):
            queue = self.waiting[lane][client]
            while queue and queue[0].done():  # callers that left while waiting
                queue.popleft()
            if not queue:
                del self.waiting[lane][client]
                self.turns[lane].remove(client)

    def _dispatch(self) -> None:
        """Hand free slots to waiting images: interactive ones first; within a lane the client
        with the least work running for its weight, ties in turn order; a served client goes
        to the back of its lane's line."""
        while True:
            for lane in LANES:
                self._drop_departed(lane)
                eligible = [c for c in self.turns[lane] if self._may_run(c, lane)]
                if eligible:
                    break
            else:
                return
            # min() keeps turn order on ties
            client = min(eligible, key=lambda c: self.running_by_client.get(c, 0) / self.weight(c))
            self._grant(client)
            queue = self.waiting[lane][client]
            queue.popleft().set_result(None)
            self.turns[lane].remove(client)
            if queue:
                self.turns[lane].append(client)
            else:
                del self.waiting[lane][client]


MIB = 1024 * 1024


class ByteBudget:
    """Bytes of images the orchestrator holds (waiting or in flight), per client and in total.

    Taken as soon as a request is read, before its image is copied into backend requests
    or waits for a slot, so a client sending large files can hold at most `per_client`
    bytes and all clients together at most `total` (the process also keeps a few copies
    of each image: the request, and one serialized request per backend).
    """

    def __init__(self, total: int, per_client: int):
        self.total = max(1, total)
        self.per_client = max(1, min(per_client, self.total))
        self.held = 0
        self.held_by_client: dict[str, int] = {}
        self._freed = asyncio.Event()  # set (and replaced) whenever bytes are given back

    def _refusal(self, client: str, size: int) -> str:
        """Why `size` more bytes for `client` do not fit now ('' when they do)."""
        mine = self.held_by_client.get(client, 0)
        if mine + size > self.per_client:
            return (f"client {client!r} has {mine / MIB:.1f} MiB of images in flight "
                    f"and this one is {size / MIB:.1f} MiB; "
                    f"the limit is {self.per_client / MIB:.0f} MiB (ARCHIVETAG_CLIENT_MAX_MB_IN_FLIGHT): "
                    "wait for answers before sending more")
        if self.held + size > self.total:
            return (f"the orchestrator holds {self.held / MIB:.1f} MiB of images for all clients; the limit is "
                    f"{self.total / MIB:.0f} MiB (ARCHIVETAG_MAX_MB_IN_FLIGHT): retry in a moment")
        return ""

    def take(self, client: str, size: int) -> None:
        """Hold `size` bytes for `client` now, or raise QueueFull (RESOURCE_EXHAUSTED) saying why."""
        refusal = self._refusal(client, size)
        if refusal:
            over_share = self.held_by_client.get(client, 0) + size > self.per_client
            raise QueueFull(refusal, reason="CLIENT_QUEUE_FULL" if over_share else None)
        self.held += size
        self.held_by_client[client] = self.held_by_client.get(client, 0) + size

    async def wait_and_take(self, client: str, size: int) -> None:
        """As take(), but wait for room (a stream's reader: it reads no further meanwhile)."""
        if size > self.per_client:
            self.take(client, size)  # can never fit: raise now
        while self._refusal(client, size):
            await self._freed.wait()
        self.take(client, size)

    def give_back(self, client: str, size: int) -> None:
        self.held -= size
        self.held_by_client[client] -= size
        if not self.held_by_client[client]:
            del self.held_by_client[client]
        self._freed.set()
        self._freed = asyncio.Event()
