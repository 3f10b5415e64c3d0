"""Admission of calls and streams, so long-lived streams cannot use up what calls need.

gRPC's own `maximum_concurrent_rpcs` counts every RPC, open streams included: 256 idle
Health/Watch streams locked out every call, Health/Check too. Here instead:

- unary calls (model calls, GetStatus, ...) are limited in number at once; a call over the
  limit is refused at once with RESOURCE_EXHAUSTED;
- streams (Health/Watch, reflection, TagImages) are limited per client address, so one
  client cannot hold them all, and never count against the calls;
- Health/Check is never refused: a probe must see the truth under any load.
"""

from __future__ import annotations

import inspect
from collections import Counter
from typing import Any, Awaitable, Callable

import grpc

HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def peer_address(context: grpc.aio.ServicerContext) -> str:
    """The client's address without its port ("ipv4:10.0.0.7"), so every connection of one
    client shares its stream allowance."""
    peer = context.peer() or "unknown"
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rsplit(":", 1)[0]
    return peer


class AdmissionInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, max_calls: int, max_streams_per_peer: int):
        self.max_calls = max_calls  # 0: no limit
        self.max_streams_per_peer = max_streams_per_peer  # 0: no limit
        self.calls = 0
        self.streams: Counter[str] = Counter()

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method == HEALTH_CHECK:
            return handler
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._admit_call(handler.unary_unary),
                request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._admit_stream(handler.unary_stream),
                request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                self._admit_stream(handler.stream_stream),
                request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer,
            )
        return handler

    def _admit_call(self, inner: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]):
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if self.max_calls and self.calls >= self.max_calls:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the server is handling {self.calls} calls, its limit; retry later "
                    "(limit: ARCHIVETAG_MAX_CONCURRENT_RPCS)",
                )
            self.calls += 1
            try:
                return await inner(request, context)
            finally:
                self.calls -= 1

        return call

    async def _open_stream(self, context: grpc.aio.ServicerContext) -> str:
        peer = peer_address(context)
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

    def _admit_stream(self, inner: Callable[..., Any]):
        # A streaming handler is either an async generator or a coroutine that writes
        # through context.write (the health Watch); the wrapper keeps the same shape.
        if inspect.isasyncgenfunction(inner):
            async def generator(request: Any, context: grpc.aio.ServicerContext) -> Any:
                peer = await self._open_stream(context)
                try:
                    async for response in inner(request, context):
                        yield response
                finally:
                    self._close_stream(peer)

            return generator

        async def writer(request: Any, context: grpc.aio.ServicerContext) -> Any:
            peer = await self._open_stream(context)
            try:
                return await inner(request, context)
            finally:
                self._close_stream(peer)

        return writer
