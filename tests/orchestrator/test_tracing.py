"""Traces across the hops (issue 29, item 1): the smoke stack exports to a test OTLP receiver; one photo, failed
over from Florence-2 (its target listens nowhere) to RAM++, gives one trace across three processes."""

from __future__ import annotations

import grpc
import pytest

from archivetag.v1 import tagging_pb2, tagging_pb2_grpc
from tests.conftest import model_service, orchestrator
from tests.support.image_corpus import encode, photo
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.servers import free_port
from tests.support.waiting import wait_for

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01"


@pytest.fixture(scope="module")
def traced_stack(smoke_models, tmp_path_factory):
    logs = tmp_path_factory.mktemp("traced")
    with OtlpReceiver() as receiver:
        rampp = model_service("rampp", smoke_models, logs, env=receiver.env())
        siglip = model_service("siglip", smoke_models, logs, env=receiver.env())
        with rampp, siglip:
            rampp.wait_status("archivetag.v1.TaggerService", "SERVING", timeout=180)
            siglip.wait_status("archivetag.v1.ViewTypeService", "SERVING", timeout=180)
            args = ("--no-auth", "--florence-target", f"127.0.0.1:{free_port()}", "--rampp-target", rampp.address,
                    "--siglip-target", siglip.address)
            with orchestrator(logs, *args, env=receiver.env()) as front:
                front.wait_status("archivetag.v1.TaggingService", "SERVING", timeout=60)
                yield receiver, front, rampp


def tag(address: str, seed: int, metadata=()) -> tuple[tagging_pb2.TagImageResponse, dict[str, str]]:
    request = tagging_pb2.TagImageRequest()
    request.image.data = encode(photo(90 + seed, 70), "PNG")
    api = tagging_pb2_grpc.TaggingServiceStub(grpc.insecure_channel(address))
    response, call = api.TagImage.with_call(request, metadata=metadata, timeout=60)
    return response, dict(call.initial_metadata())


def test_one_photo_is_one_trace_across_the_orchestrator_and_two_model_services(traced_stack):
    receiver, front, rampp = traced_stack
    response, metadata = tag(front.address, 1)
    assert response.tagger == "rampp"  # failed over: Florence-2 is unreachable
    trace_id = metadata["x-archivetag-trace-id"]
    assert len(trace_id) == 32 and trace_id != "0" * 32

    expected = {("archivetag-orchestrator", name) for name in ("TagImage", "fair-share wait", "call rampp",
                                                                "call siglip")}
    expected |= {("archivetag-rampp", name) for name in ("Tag", "decode", "queue wait", "inference")}
    expected |= {("archivetag-siglip", "Classify")}

    def complete(spans):  # each process sends its spans as they end: wait for all of them
        return expected <= {(s.service, s.name) for s in spans}

    spans = wait_for(lambda: receiver.trace(trace_id), complete, timeout=60, describe="the trace's spans")
    by_id = {s.span_id: s for s in spans}
    named = {(s.service, s.name): s for s in spans}
    assert {s.service for s in spans} == {"archivetag-orchestrator", "archivetag-rampp", "archivetag-siglip"}

    def parent(service: str, name: str) -> tuple[str, str]:
        up = by_id[named[(service, name)].parent_span_id]
        return up.service, up.name

    root = named[("archivetag-orchestrator", "TagImage")]
    assert root.parent_span_id == ""
    assert parent("archivetag-orchestrator", "fair-share wait") == ("archivetag-orchestrator", "TagImage")
    assert parent("archivetag-orchestrator", "call rampp") == ("archivetag-orchestrator", "TagImage")
    assert parent("archivetag-rampp", "Tag") == ("archivetag-orchestrator", "call rampp")
    assert parent("archivetag-siglip", "Classify") == ("archivetag-orchestrator", "call siglip")
    for step in ("decode", "queue wait", "inference"):
        assert parent("archivetag-rampp", step) == ("archivetag-rampp", "Tag")
    assert named[("archivetag-rampp", "inference")].attributes["batch_size"] >= 1
    assert "passed over" in root.events  # Florence-2, and why, on the request's span
    assert ("archivetag-orchestrator", "call florence") not in named  # unreachable: never called

    passed_over = [line for line in front.log_tail(200_000).splitlines() if "tagger passed over" in line]
    assert any(f"trace_id={trace_id}" in line for line in passed_over), passed_over[-3:]


def test_a_clients_trace_context_is_continued(traced_stack):
    receiver, front, _ = traced_stack
    _, metadata = tag(front.address, 2, metadata=(("traceparent", TRACEPARENT),))
    assert metadata["x-archivetag-trace-id"] == CLIENT_TRACE
    spans = wait_for(lambda: receiver.trace(CLIENT_TRACE),
                     lambda s: {"Tag", "TagImage"} <= {x.name for x in s}, timeout=60,
                     describe="the client's trace in the orchestrator and the model service")
    root = next(s for s in spans if s.name == "TagImage")
    assert root.parent_span_id == "00f067aa0ba902b7"


def test_the_python_client_continues_the_callers_opentelemetry_context(traced_stack):
    """An app that traces calls the client inside its own span: the photo's spans join that trace."""
    from opentelemetry import context, trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    from archivetag.client import TaggingClient

    receiver, front, _ = traced_stack
    app_trace = "0af7651916cd43dd8448eb211c80319c"
    app_span = SpanContext(int(app_trace, 16), int("b7ad6b7169203331", 16), is_remote=False,
                           trace_flags=TraceFlags(TraceFlags.SAMPLED))
    token = context.attach(trace.set_span_in_context(NonRecordingSpan(app_span)))
    try:
        with TaggingClient(front.address) as client:
            client.tag(encode(photo(77, 55), "PNG"), deadline=60)
    finally:
        context.detach(token)
    spans = wait_for(lambda: receiver.trace(app_trace), lambda s: any(x.name == "TagImage" for x in s), timeout=60,
                     describe="the app's trace in the orchestrator")
    assert next(s for s in spans if s.name == "TagImage").parent_span_id == "b7ad6b7169203331"
