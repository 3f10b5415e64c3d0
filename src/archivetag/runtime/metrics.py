"""Prometheus metrics, the same names for every service, labelled by model or service."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app

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
DECODE_SECONDS = Histogram(
    "archivetag_decode_seconds", "Time of one image decode step: its header, or its pixels and preprocessing.",
    ["step"], buckets=_LATENCY_BUCKETS,
)
# The CPU time of the thread that ran the work (time.thread_time): all of it when the model runs on that one thread
# (--torch-threads 1, --siglip-ort-threads 1), its share otherwise. What the serving path costs beyond the models
# is every process's CPU less these (benchmarks/stack_bench.py --serving-cpu-only).
THREAD_CPU_SECONDS = Counter(
    "archivetag_thread_cpu_seconds", "CPU seconds of the threads running inference and image decodes.", ["work"]
)
DECODES_STOPPED = Counter(
    "archivetag_decodes_stopped_total", "Image decodes stopped part-way because their caller left."
)
QUEUE_DEPTH = Gauge("archivetag_queue_depth", "Requests waiting for inference.", ["model"])
MODEL_SERVING = Gauge("archivetag_model_serving", "1 when the model's health is SERVING.", ["model"])
REQUESTS = Counter(
    "archivetag_requests_total", "Finished gRPC calls by method and status code.", ["method", "code"]
)
REQUEST_SECONDS = Histogram(
    "archivetag_request_seconds", "Time of a gRPC call in the server.", ["method"], buckets=_LATENCY_BUCKETS
)


def start_metrics_server(host: str, port: int, token: str = "") -> None:
    """/metrics on host:port (port 0: none); with a token, only for 'Authorization: Bearer <token>'."""
    if not port:
        return
    app = make_wsgi_app()
    expected = hashlib.sha256(f"Bearer {token}".encode()).digest()

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        offered = hashlib.sha256(environ.get("HTTP_AUTHORIZATION", "").encode()).digest()
        if token and not hmac.compare_digest(offered, expected):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")])
            return [b"the metrics endpoint needs 'Authorization: Bearer <token>' (--metrics-token-file)\n"]
        return app(environ, start_response)

    server = make_server(host, port, guarded, ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics listening", extra=fields(address=f"{host}:{port}", path="/metrics", token=bool(token)))


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not worth a log line each
        pass


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
