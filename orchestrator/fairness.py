"""Fair share of the backends between archive clients.

At most `capacity` images are processed at once, at most `per_client` of them for one
client. Waiting images queue per client, and a freed slot goes to the waiting client with
the least work running (round-robin among equals), so one client's 50,000-photo import
makes another client's single photo wait for one slot, not for the import.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from contextlib import asynccontextmanager
from typing import AsyncIterator

from archivetag.runtime.errors import QueueFull


class FairScheduler:
    def __init__(self, capacity: int, per_client: int, max_queued: int):
        self.capacity = max(1, capacity)
        self.per_client = max(1, min(per_client, self.capacity))
        self.max_queued = max(1, max_queued)
        self.running = 0
        self.running_by_client: dict[str, int] = {}
        self.waiting: dict[str, deque[asyncio.Future]] = {}
        self.turns: deque[str] = deque()  # clients with waiting work, next turn first

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self.waiting.values())

    @asynccontextmanager
    async def slot(self, client: str) -> AsyncIterator[float]:
        """Hold one processing slot for `client`; yields the seconds spent waiting for it."""
        waited = await self.acquire(client)
        try:
            yield waited
        finally:
            self.release(client)

    async def acquire(self, client: str) -> float:
        started = time.monotonic()
        if client not in self.waiting and self._may_run(client):
            self._grant(client)
            return 0.0
        queue = self.waiting.setdefault(client, deque())
        if len(queue) >= self.max_queued:
            raise QueueFull(
                f"client {client!r} has {len(queue)} images waiting; the limit is {self.max_queued} "
                "(ARCHIVETAG_CLIENT_MAX_QUEUED): wait for answers before sending more"
            )
        future = asyncio.get_running_loop().create_future()
        queue.append(future)
        if client not in self.turns:
            self.turns.append(client)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(client)  # granted just as the caller left: give the slot back
            else:
                self._forget(client, future)
            raise
        return time.monotonic() - started

    def release(self, client: str) -> None:
        self.running -= 1
        self.running_by_client[client] -= 1
        if not self.running_by_client[client]:
            del self.running_by_client[client]
        self._dispatch()

    def _may_run(self, client: str) -> bool:
        return self.running < self.capacity and self.running_by_client.get(client, 0) < self.per_client

    def _grant(self, client: str) -> None:
        self.running += 1
        self.running_by_client[client] = self.running_by_client.get(client, 0) + 1

    def _forget(self, client: str, future: asyncio.Future) -> None:
        queue = self.waiting.get(client)
        if queue is not None and future in queue:
            queue.remove(future)
        if queue is not None and not queue:
            del self.waiting[client]
            if client in self.turns:
                self.turns.remove(client)

    def _dispatch(self) -> None:
        """Hand free slots to waiting clients: the one with the least work running first,
        ties in turn order; a served client goes to the back of the line."""
        while self.running < self.capacity:
            for client in list(self.turns):
                queue = self.waiting[client]
                while queue and queue[0].done():  # callers that left while waiting
                    queue.popleft()
                if not queue:
                    del self.waiting[client]
                    self.turns.remove(client)
            eligible = [c for c in self.turns if self._may_run(c)]
            if not eligible:
                return
            client = min(eligible, key=lambda c: self.running_by_client.get(c, 0))  # min() keeps turn order on ties
            self._grant(client)
            queue = self.waiting[client]
            queue.popleft().set_result(None)
            self.turns.remove(client)
            if queue:
                self.turns.append(client)
            else:
                del self.waiting[client]


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
            return (f"client {client!r} has {mine / MIB:.1f} MiB of images in flight and this one is {size / MIB:.1f} MiB; "
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
            raise QueueFull(refusal)
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
