"""Prometheus metrics, the same names for every service, labelled by model or service."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from archivetag.runtime.interceptors import CallInterceptor
from archivetag.runtime.logs import fields

log = logging.getLogger("archivetag.metrics")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

QUEUE_WAIT = Histogram(
    "archivetag_queue_wait_seconds", "Time a request waited in the batch queue.", ["model", "lane"],
    buckets=_LATENCY_BUCKETS,
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


class RequestMetricsInterceptor(CallInterceptor):
    """Counts every archivetag call by method and final status code."""

    def applies(self, method: str) -> bool:
        return method.startswith("/archivetag.")

    @asynccontextmanager
    async def around(self, method: str, context: grpc.aio.ServicerContext, streaming: bool) -> AsyncIterator[None]:
        started, outcome = time.perf_counter(), grpc.StatusCode.UNKNOWN
        try:
            yield
            outcome = grpc.StatusCode.OK
        except asyncio.CancelledError:
            # The caller left, or its deadline passed: the call was cancelled, not a server fault.
            remaining = context.time_remaining()
            expired = remaining is not None and remaining <= 0
            outcome = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            raise
        finally:
            code = _code_name(context, outcome)
            REQUESTS.labels(method, code).inc()
            REQUEST_SECONDS.labels(method).observe(time.perf_counter() - started)
