"""Prometheus metrics, the same names for every service, labelled by model or service."""

from __future__ import annotations

import logging
import time
from typing import Any, Awaitable, Callable

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from archivetag.runtime.logs import fields

log = logging.getLogger("archivetag.metrics")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

QUEUE_WAIT = Histogram(
    "archivetag_queue_wait_seconds", "Time a request waited in the batch queue.", ["model", "lane"], buckets=_LATENCY_BUCKETS
)
BATCH_SIZE = Histogram(
    "archivetag_batch_size", "Requests per inference batch.", ["model"], buckets=(1, 2, 4, 8, 16, 32, 64)
)
INFERENCE_SECONDS = Histogram(
    "archivetag_inference_seconds", "Time of one batched inference call.", ["model"], buckets=_LATENCY_BUCKETS
)
QUEUE_DEPTH = Gauge("archivetag_queue_depth", "Requests waiting for inference.", ["model"])
MODEL_SERVING = Gauge("archivetag_model_serving", "1 when the model's health is SERVING.", ["model"])
REQUESTS = Counter(
    "archivetag_requests_total", "Finished gRPC calls by method and status code.", ["method", "code"]
)
REQUEST_SECONDS = Histogram(
    "archivetag_request_seconds", "Time of a gRPC call in the server.", ["method"], buckets=_LATENCY_BUCKETS
)


def start_metrics_server(host: str, port: int) -> None:
    if port:
        start_http_server(port, addr=host)
        log.info("metrics listening", extra=fields(address=f"{host}:{port}", path="/metrics"))


def _code_name(context: grpc.aio.ServicerContext, default: grpc.StatusCode) -> str:
    code = context.code()
    if code is None:
        return default.name
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class RequestMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every archivetag call by method and final status code."""

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method
        if handler is None or not method.startswith("/archivetag."):
            return handler

        def record(context: grpc.aio.ServicerContext, started: float, failed: bool) -> None:
            code = _code_name(context, grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK)
            REQUESTS.labels(method, code).inc()
            REQUEST_SECONDS.labels(method).observe(time.perf_counter() - started)

        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started, failed = time.perf_counter(), True
                try:
                    response = await inner(request, context)
                    failed = False
                    return response
                finally:
                    record(context, started, failed)

            return grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:
            inner_stream = handler.stream_stream

            async def stream(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
                started, failed = time.perf_counter(), True
                try:
                    async for response in inner_stream(request_iterator, context):
                        yield response
                    failed = False
                finally:
                    record(context, started, failed)

            return grpc.stream_stream_rpc_method_handler(
                stream, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
