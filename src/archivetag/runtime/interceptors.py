"""One base for the server's interceptors: code run around every call, whatever its shape.

grpc.aio hands an interceptor a method handler of one of four kinds (unary or streaming request,
unary or streaming response), and a streaming response is either an async generator or a
coroutine that writes through `context.write` (the health service's Watch). Wrapping each kind
by hand, per interceptor, is where copies drift (an interceptor that took every non-unary call
for stream-stream). Here a subclass says which methods it applies to and what happens around a
call, as an async context manager; `wrap_handler` does the rest, once.

Why not the grpc-interceptor package: its asyncio server interceptor (0.15.4, 2023) takes an
`intercept(method, request, context, name)` that must itself call and re-yield the handler, so
each interceptor still handles the response shapes, and it does not cover the writer-shaped
streaming handlers that grpcio-health-checking's Watch uses.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc

Around = Callable[[grpc.aio.ServicerContext, bool], AbstractAsyncContextManager[Any]]


class CallInterceptor(grpc.aio.ServerInterceptor, abc.ABC):
    """A server interceptor that runs `around(method, context, streaming)` around each call it applies to."""

    def applies(self, method: str) -> bool:
        return True

    @abc.abstractmethod
    def around(self, method: str, context: grpc.aio.ServicerContext,
               streaming: bool) -> AbstractAsyncContextManager[Any]:
        """Entered before the handler runs (it may abort the call), left when the call ends, raising or not.
        streaming: the call has a streaming request or response (a long-lived stream)."""

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method
        if handler is None or not self.applies(method):
            return handler
        return wrap_handler(handler, lambda context, streaming: self.around(method, context, streaming))


def wrap_handler(handler: grpc.RpcMethodHandler, around: Around) -> grpc.RpcMethodHandler:
    """The same handler, each of its calls run inside `around(context, streaming)`."""
    codecs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(_wrapped(handler.unary_unary, around, False), **codecs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(_wrapped(handler.unary_stream, around, True), **codecs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(_wrapped(handler.stream_unary, around, True), **codecs)
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(_wrapped(handler.stream_stream, around, True), **codecs)
    return handler


def _wrapped(inner: Callable[..., Any], around: Around, streaming: bool) -> Callable[..., Any]:
    # An async generator stays one (its responses are re-yielded); a coroutine (a unary response, or a
    # streaming one written through context.write) stays a coroutine.
    if inspect.isasyncgenfunction(inner):
        async def generator(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with around(context, streaming):
                async for response in inner(request, context):
                    yield response

        return generator

    async def coroutine(request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with around(context, streaming):
            return await inner(request, context)

    return coroutine
