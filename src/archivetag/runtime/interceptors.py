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
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import grpc

Around = Callable[[grpc.aio.ServicerContext, bool], AbstractAsyncContextManager[Any]]
Check = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]  # a request in, the request out (or abort)


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


def wrap_handler(handler: grpc.RpcMethodHandler, around: Around | None = None, *,
                 request_deserializer: Callable[[bytes], Any] | None = None,
                 check: Check | None = None) -> grpc.RpcMethodHandler:
    """The same handler, each of its calls run inside `around(context, streaming)`; with `check`, each
    request (every one of a request stream) passes through it first; with `request_deserializer`,
    requests are read by it."""
    codecs = {"request_deserializer": request_deserializer or handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    for inner, make, streaming_request, streaming in (
        (handler.unary_unary, grpc.unary_unary_rpc_method_handler, False, False),
        (handler.unary_stream, grpc.unary_stream_rpc_method_handler, False, True),
        (handler.stream_unary, grpc.stream_unary_rpc_method_handler, True, True),
        (handler.stream_stream, grpc.stream_stream_rpc_method_handler, True, True),
    ):
        if inner:
            return make(_wrapped(inner, around or _nothing, streaming, check, streaming_request), **codecs)
    return handler


@asynccontextmanager
async def _nothing(context: grpc.aio.ServicerContext, streaming: bool) -> AsyncIterator[None]:
    yield


def _wrapped(inner: Callable[..., Any], around: Around, streaming: bool, check: Check | None,
             streaming_request: bool) -> Callable[..., Any]:
    # An async generator stays one (its responses are re-yielded); a coroutine (a unary response, or a
    # streaming one written through context.write) stays a coroutine.
    async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if check is None:
            return request
        if streaming_request:
            return _checked_stream(request, context, check)
        return await check(request, context)

    if inspect.isasyncgenfunction(inner):
        async def generator(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with around(context, streaming):
                async for response in inner(await checked(request, context), context):
                    yield response

        return generator

    async def coroutine(request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with around(context, streaming):
            return await inner(await checked(request, context), context)

    return coroutine


async def _checked_stream(requests: Any, context: grpc.aio.ServicerContext, check: Check) -> Any:
    async for request in requests:
        yield await check(request, context)


class UndecodableRequest:
    """What a request whose bytes are not a message of its type is handed on as, instead of the library's UNKNOWN."""

    def __init__(self, message_type: str, error: BaseException):
        self.message_type = message_type
        self.error = error

    def invalid(self) -> Exception:
        from archivetag.runtime.errors import InvalidInput

        return InvalidInput(f"the request is not a valid {self.message_type}: {type(self.error).__name__}: "
                            f"{self.error}", reason="REQUEST_MALFORMED", metadata={"message": self.message_type})


class RequestDecodingInterceptor(grpc.aio.ServerInterceptor):
    """Bad protobuf (garbage, truncated, invalid UTF-8 in a string) is INVALID_ARGUMENT REQUEST_MALFORMED.

    grpc.aio answers a request its deserializer cannot read with UNKNOWN "Unexpected error", which clients
    read as a server fault and may retry. Here the deserializer hands such a request on as an
    UndecodableRequest and the handler refuses it; in a request stream, the stream ends there."""

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        return tolerant_handler(handler)


def tolerant_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    from archivetag.runtime.errors import abort_with

    decode = handler.request_deserializer
    message_type = getattr(getattr(decode, "__self__", None), "DESCRIPTOR", None)
    name = message_type.full_name if message_type is not None else "request"

    def tolerant(data: bytes) -> Any:
        try:
            return decode(data)
        except Exception as exc:  # noqa: BLE001 - a hostile message may make the parser raise anything
            return UndecodableRequest(name, exc)

    async def refuse_undecodable(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, UndecodableRequest):
            await abort_with(context, request.invalid())
        return request

    return wrap_handler(handler, request_deserializer=tolerant, check=refuse_undecodable)
