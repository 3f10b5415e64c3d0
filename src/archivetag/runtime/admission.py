"""Admission of calls and streams, so long-lived streams cannot use up what calls need.

gRPC's own `maximum_concurrent_rpcs` counts every RPC, open streams included: 256 idle
Health/Watch streams locked out every call, Health/Check too. Here instead:

- unary calls (model calls, GetStatus, ...) are limited in number at once; a call over the
  limit is refused at once with RESOURCE_EXHAUSTED;
- streams (Health/Watch, reflection, TagImages) are limited per client, so one client cannot hold
  them all, and never count against the calls. A client is its proven identity when the app's auth
  interceptor (which runs before this one) authenticated the call (`authenticated_client`), else its
  address: idle unauthenticated streams from an address (apps behind one NAT share it) cannot lock
  an authenticated client out of its own stream;
- Health/Check is never refused: a probe must see the truth under any load.
"""

from __future__ import annotations

import contextvars
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc

from archivetag.runtime.interceptors import CallInterceptor

HEALTH_CHECK = "/grpc.health.v1.Health/Check"

# The client an app's auth interceptor proved this call comes from (a valid token), or None.
authenticated_client: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "archivetag_authenticated_client", default=None)


def peer_address(context: grpc.aio.ServicerContext) -> str:
    """The client's address without its port ("ipv4:10.0.0.7"), so every connection of one
    client shares its stream allowance."""
    peer = context.peer() or "unknown"
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rsplit(":", 1)[0]
    return peer


class AdmissionInterceptor(CallInterceptor):
    def __init__(self, max_calls: int, max_streams_per_peer: int):
        self.max_calls = max_calls  # 0: no limit
        self.max_streams_per_peer = max_streams_per_peer  # 0: no limit
        self.calls = 0
        self.streams: Counter[str] = Counter()

    def applies(self, method: str) -> bool:
        return method != HEALTH_CHECK

    @asynccontextmanager
    async def around(self, method: str, context: grpc.aio.ServicerContext, streaming: bool) -> AsyncIterator[None]:
        if streaming:
            peer = await self._open_stream(context)
            try:
                yield
            finally:
                self._close_stream(peer)
            return
        if self.max_calls and self.calls >= self.max_calls:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the server is handling {self.calls} calls, its limit; retry later "
                "(limit: ARCHIVETAG_MAX_CONCURRENT_RPCS)",
            )
        self.calls += 1
        try:
            yield
        finally:
            self.calls -= 1

    async def _open_stream(self, context: grpc.aio.ServicerContext) -> str:
        client = authenticated_client.get()
        peer = f"client {client}" if client is not None else peer_address(context)
        if self.max_streams_per_peer and self.streams[peer] >= self.max_streams_per_peer:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{peer} already has {self.streams[peer]} streams open, its limit; close some first "
                "(limit: ARCHIVETAG_MAX_STREAMS_PER_PEER)",
            )
        self.streams[peer] += 1
        return peer

    def _close_stream(self, peer: str) -> None:
        self.streams[peer] -= 1
        if self.streams[peer] <= 0:
            del self.streams[peer]
