"""Traces across the hops (OpenTelemetry): on when an OTLP endpoint is configured, off and free otherwise.

Configured by the standard variables: OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)
turns tracing on and says where spans go (OTLP over gRPC); OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG
choose the sampling (default: parent-based, always on); OTEL_SERVICE_NAME overrides the service name
(archivetag-<server>). W3C trace context (`traceparent` metadata) flows from a client through the
orchestrator to each model service. Off, no interceptor is installed and every helper here is a no-op.

Spans: each call a server handles (the method's name); in the orchestrator the fair-share wait, the cache
lookup and each backend call ("call <backend>", with why it was passed over when it was); in a model service
the decode, the queue wait and the inference (with the batch size). Every log line of a traced request
carries its trace id, and the orchestrator's answers carry it in the `x-archivetag-trace-id` metadata.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from archivetag.runtime.interceptors import CallInterceptor

TRACE_ID_METADATA = "x-archivetag-trace-id"
_tracer = trace.get_tracer("archivetag")
_enabled = False


def configured() -> bool:
    """Is an OTLP endpoint set for traces (the switch)?"""
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def configure(server_name: str) -> bool:
    """Install the SDK's tracer provider with an OTLP exporter, when configured; returns whether tracing is on."""
    global _enabled
    if _enabled or not configured():
        return _enabled
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = os.environ.get("OTEL_SERVICE_NAME") or f"archivetag-{server_name}"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _enabled = True
    return True


def shutdown() -> None:
    """Send the spans still buffered (at the end of a process)."""
    if _enabled:
        provider: Any = trace.get_tracer_provider()
        provider.shutdown()


def enabled() -> bool:
    return _enabled


def current_trace_id() -> str:
    """The trace id of the span in effect (32 hex digits), or '' when there is none."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


def outgoing_metadata(metadata: tuple[tuple[str, str], ...] = ()) -> tuple[tuple[str, str], ...]:
    """`metadata` plus the current trace context (traceparent), for a call to the next hop."""
    if not _enabled:
        return metadata
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return (*metadata, *carrier.items())


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[Any]:
    """A child span of the current one around a block (nothing when tracing is off)."""
    if not _enabled:
        yield None
        return
    with _tracer.start_as_current_span(name, attributes=_clean(attributes)) as current:
        yield current


def past_span(name: str, started: float, ended: float, **attributes: Any) -> None:
    """A child span of the current one for an interval already over (time.monotonic() values): the queue
    wait and the inference of a batch, known once the batch has answered."""
    if not _enabled:
        return
    offset = time.time_ns() - time.monotonic_ns()
    at = _tracer.start_span(name, attributes=_clean(attributes), start_time=int(started * 1e9) + offset)
    at.end(end_time=int(ended * 1e9) + offset)


def failed(current: Any, why: str) -> None:
    """Mark a span (from `span`; None when tracing is off) as failed, and why."""
    if current is not None:
        current.set_status(Status(StatusCode.ERROR, why))


def event(name: str, **attributes: Any) -> None:
    """An event on the current span (a tagger passed over, say)."""
    if _enabled:
        trace.get_current_span().add_event(name, attributes=_clean(attributes))


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (str, bool, int, float)) else str(v) for k, v in attributes.items()
            if v is not None}


class TracingInterceptor(CallInterceptor):
    """A server span per call, child of the caller's trace context; its id goes back in the answer's metadata."""

    def __init__(self, answer_trace_id: bool = False):
        self.answer_trace_id = answer_trace_id

    def applies(self, method: str) -> bool:
        return method.startswith("/archivetag.")

    @asynccontextmanager
    async def around(self, method: str, context: grpc.aio.ServicerContext, streaming: bool) -> AsyncIterator[None]:
        parent = propagate.extract({k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)})
        with _tracer.start_as_current_span(method.rpartition("/")[2], context=parent, kind=SpanKind.SERVER,
                                           attributes={"rpc.method": method}) as current:
            if self.answer_trace_id:
                await context.send_initial_metadata(((TRACE_ID_METADATA, current_trace_id()),))
            try:
                yield
            except BaseException as exc:
                code = context.code()
                current.set_status(Status(StatusCode.ERROR, getattr(code, "name", None) or type(exc).__name__))
                raise
