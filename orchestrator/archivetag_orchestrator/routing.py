"""One image through the backends: tagger with deadline and failover, SigLIP beside it.

    the taggers in the configured order (--taggers; default by their specs' priority: Florence-2,
    then RAM++): the primary, if SERVING and its breaker allows,
        with deadline = min(its setting, the caller's time left − a reserve for the fallback)
    on DEADLINE_EXCEEDED, UNAVAILABLE, RESOURCE_EXHAUSTED, INTERNAL, UNKNOWN (any failure but
        INVALID_ARGUMENT), or when not SERVING / breaker open → the fallback tagger, and say why;
        only the backend's own faults count against its breaker (backends.is_backend_fault)
    INVALID_ARGUMENT → the image's fault: back to the caller (with the backend's reason), no failover
    no tagger answered → DEADLINE_EXCEEDED if the caller's deadline is what stopped one, else UNAVAILABLE
    the view-type providers (SigLIP) run concurrently, the first that can answer; if none can, the
        result is degraded, not an error; the request's label set goes with it and its scores come back
    EmbedText (texts -> SigLIP text embeddings): the first view-type provider that can answer; a bad
        text is INVALID_ARGUMENT (the provider's field named); none answering is UNAVAILABLE
    OCR asked of a tagger that cannot read text (RAM++) → its tags, ocr NOT_AVAILABLE, degraded
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import grpc
from prometheus_client import Counter

from archivetag.runtime import tracing
from archivetag.runtime.batcher import INTERACTIVE
from archivetag.runtime.errors import DeadlineExpired, NotServing, QueueFull, reraise_from_call
from archivetag.runtime.logs import fields
from archivetag.v1 import common_pb2, tagger_pb2, tagging_pb2, view_type_pb2
from archivetag_orchestrator.backends import HEALTH_FALLBACK, Backend, BackendBusy

log = logging.getLogger("archivetag.orchestrator.routing")

FAILOVERS = Counter("archivetag_failovers_total", "Images answered by the fallback tagger.", ["primary", "fallback"])
DEGRADED = Counter("archivetag_degraded_total", "Answers missing a part (e.g. the view type).", ["backend"])

# What a failed call to the primary means for the fallback reason (others: CALL_FAILED).
CALL_FALLBACK = {
    grpc.StatusCode.DEADLINE_EXCEEDED: tagging_pb2.FALLBACK_REASON_DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: tagging_pb2.FALLBACK_REASON_OVERLOADED,
}

# Below this, a call cannot usefully start.
MIN_CALL_SECONDS = 0.05


def with_image(message, image: bytes) -> bytes:
    """A TagRequest or ClassifyRequest with `image` as its image bytes, serialized once for every attempt."""
    message.image.data = image
    return message.SerializeToString()


@dataclass
class ViewOutcome:
    view: tagging_pb2.ViewType
    seconds: float = 0.0
    problem: str = ""  # why there is no view type; '' when a provider answered
    backend: str = "view type"  # the provider that answered, or the last one tried
    model: common_pb2.ModelIdentity | None = None
    embedding: tuple[float, ...] = ()
    labels: tuple[view_type_pb2.LabelScore, ...] = ()


@dataclass
class TaggerOutcome:
    response: tagger_pb2.TagResponse
    tagger: str
    fallback_reason: str
    tagger_seconds: float
    failover_seconds: float
    fallback: tagging_pb2.FallbackReason  # FallbackReason of the primary; UNSPECIFIED when it answered
    primary_health: tagging_pb2.BackendHealth  # BackendHealth of the primary when the call was routed
    primary_breaker: tagging_pb2.BreakerState  # BreakerState of the primary when the call was routed
    wait_seconds: float = 0.0  # the answering tagger's call waited this long for it to be free


class Router:
    def __init__(self, taggers: list[Backend], view_types: list[Backend], fallback_reserve: float):
        self.taggers = taggers  # primary first
        self.view_types = view_types  # tried in order
        self.fallback_reserve = fallback_reserve

    def a_tagger_serving(self) -> bool:
        """Is a tagger SERVING by its health watch (the orchestrator's readiness)?"""
        return any(b.health() == tagging_pb2.BACKEND_HEALTH_SERVING for b in self.taggers)

    def view_type_provider(self) -> Backend | None:
        """The view-type backend a request would be sent to now (enabled and usable by health), if any."""
        return next((b for b in self.view_types
                     if b.enabled and b.health() == tagging_pb2.BACKEND_HEALTH_SERVING), None)

    async def tag_image(
        self, request: tagging_pb2.TagImageRequest, image: bytes, deadline: float, admission_seconds: float = 0.0,
        lane: str = INTERACTIVE, overflow: tagging_pb2.OverflowPolicy = tagging_pb2.OVERFLOW_POLICY_WAIT,
    ) -> tagging_pb2.TagImageResponse:
        """lane: the batcher lane the backends queue this image in (runtime/batcher.py)."""
        started = time.monotonic()
        view_task = asyncio.create_task(self._view_type(image, request, deadline, lane))
        try:
            outcome = await self._tag_with_failover(request, image, deadline, lane, overflow)
        except BaseException:
            view_task.cancel()
            await asyncio.gather(view_task, return_exceptions=True)
            raise
        view = await view_task
        response = tagging_pb2.TagImageResponse(
            tags=outcome.response.tags,
            caption=outcome.response.caption,
            tagger=outcome.tagger,
            fallback_reason=outcome.fallback_reason,
            fallback=outcome.fallback,
            primary_health=outcome.primary_health,
            primary_breaker=outcome.primary_breaker,
            view_type=view.view,
            models=[outcome.response.model, *([view.model] if view.model else [])],
            context=request.context,
            timings=tagging_pb2.StageTimings(
                total_seconds=time.monotonic() - started + admission_seconds,
                tagger_seconds=outcome.tagger_seconds,
                view_type_seconds=view.seconds,
                failover_seconds=outcome.failover_seconds,
                admission_seconds=admission_seconds,
                tagger_wait_seconds=outcome.wait_seconds,
            ),
        )
        if view.problem:
            response.degraded = True
            response.degraded_reasons.append(view.problem)
            DEGRADED.labels(view.backend).inc()
        response.embedding.extend(view.embedding)
        response.labels.extend(view.labels)
        if outcome.response.HasField("ocr"):
            response.ocr.CopyFrom(outcome.response.ocr)
            if response.ocr.status == common_pb2.OCR_STATUS_NOT_AVAILABLE:
                response.degraded = True
                response.degraded_reasons.append(f"ocr: not available ({outcome.tagger} cannot read text)")
                DEGRADED.labels(self.taggers[0].name).inc()  # the primary's part (the text) is missing
        response.tagged_at.GetCurrentTime()
        return response

    # -- tagging ----------------------------------------------------------------------
    async def _tag_with_failover(
        self, request: tagging_pb2.TagImageRequest, image: bytes, deadline: float, lane: str,
        overflow: tagging_pb2.OverflowPolicy,
    ) -> TaggerOutcome:
        reasons: list[str] = []  # for a person
        fallbacks: dict[str, tagging_pb2.FallbackReason] = {}  # tagger → FallbackReason, for programs
        out_of_time = False  # a tagger was skipped or cut off because the caller's deadline was near
        failover_seconds = 0.0
        primary = self.taggers[0]
        primary_state = (primary.health(), primary.breaker_state())
        tag_request = tagger_pb2.TagRequest(context=request.context, max_tags=request.max_tags, ocr=request.ocr)
        if request.HasField("threshold"):
            tag_request.threshold = request.threshold
        tag_bytes = with_image(tag_request, image)  # once for both taggers and their retries

        def passed_over(backend: Backend, fallback: tagging_pb2.FallbackReason, why: str) -> None:
            fallbacks[backend.name] = fallback
            reasons.append(f"{backend.name}: {why}")
            reason = tagging_pb2.FallbackReason.Name(fallback)
            tracing.event("passed over", backend=backend.name, reason=reason, why=why)
            log.info("tagger passed over", extra=fields(backend=backend.name, reason=reason, why=why))

        if not self.a_tagger_serving():
            # None serving by the health watches: ask each once now (a replica that just came up is seen here,
            # not when its watch next reconnects), then route or refuse on what they said.
            await asyncio.gather(*(b.probe(deadline - time.monotonic() - MIN_CALL_SECONDS) for b in self.taggers))

        for index, backend in enumerate(self.taggers):
            if not backend.enabled:
                passed_over(backend, tagging_pb2.FALLBACK_REASON_DISABLED, "disabled")
                continue
            has_fallback = any(b.enabled for b in self.taggers[index + 1:])
            await backend.until_health_known(deadline - time.monotonic() - MIN_CALL_SECONDS)
            reserve = self.fallback_reserve if has_fallback else 0.0
            left = deadline - time.monotonic()
            if left - reserve < MIN_CALL_SECONDS:
                out_of_time = True
                passed_over(backend, tagging_pb2.FALLBACK_REASON_NO_TIME_LEFT,
                            f"skipped, {left:.1f} s left before the caller's deadline")
                continue
            busy = not backend.capacity.has_room(lane)
            if overflow == tagging_pb2.OVERFLOW_POLICY_FALLBACK and has_fallback and busy:
                passed_over(backend, tagging_pb2.FALLBACK_REASON_OVERLOADED,
                            f"busy ({backend.capacity.describe()}); overflow policy FALLBACK")
                continue
            fallback, why_not = backend.usable()
            if why_not:
                passed_over(backend, fallback, why_not)
                continue
            # Wait here, not in the backend's queue, until it can start on the image: its deadline counts from then.
            try:
                waited = await backend.admit(lane, deadline - time.monotonic() - reserve - MIN_CALL_SECONDS)
            except BackendBusy as exc:
                backend.breaker.release_probe()
                failover_seconds += exc.waited
                if exc.unusable:
                    passed_over(backend, HEALTH_FALLBACK.get(backend.health(), tagging_pb2.FALLBACK_REASON_NOT_SERVING),
                                str(exc))
                else:
                    out_of_time = True
                    passed_over(backend, tagging_pb2.FALLBACK_REASON_NO_TIME_LEFT,
                                f"{exc}, and the caller's deadline is near")
                continue
            attempt_started = time.monotonic()
            try:
                timeout = min(backend.deadline, deadline - attempt_started - reserve)
                tag = backend.raw_method("Tag", tagger_pb2.TagResponse)
                response = await backend.call(tag, tag_bytes, timeout, timeout >= backend.deadline, lane)
            except grpc.aio.AioRpcError as exc:
                spent = time.monotonic() - attempt_started
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise reraise_from_call(exc) from None
                failover_seconds += waited + spent
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    out_of_time = out_of_time or timeout < backend.deadline
                passed_over(backend, CALL_FALLBACK.get(exc.code(), tagging_pb2.FALLBACK_REASON_CALL_FAILED),
                            f"{exc.code().name} after {spent:.1f} s ({exc.details()})")
                log.warning("tagger failed", extra=fields(backend=backend.name, code=exc.code().name,
                                                          seconds=round(spent, 3), detail=exc.details()))
                continue
            finally:
                backend.capacity.release()
            if index > 0 or reasons:
                FAILOVERS.labels(primary.name, backend.name).inc()
            return TaggerOutcome(
                response, backend.name, "; ".join(reasons), time.monotonic() - attempt_started, failover_seconds,
                fallbacks.get(primary.name, tagging_pb2.FALLBACK_REASON_UNSPECIFIED), *primary_state, waited,
            )
        states = {name: tagging_pb2.FallbackReason.Name(value) for name, value in fallbacks.items()}
        if out_of_time or time.monotonic() >= deadline:
            raise DeadlineExpired("deadline passed before a tagger answered: " + "; ".join(reasons), metadata=states)
        raise NotServing("no tagger could answer: " + "; ".join(reasons), reason="NO_TAGGER_AVAILABLE", metadata=states)

    # -- view type --------------------------------------------------------------------
    async def _view_type(self, image: bytes, request: tagging_pb2.TagImageRequest, deadline: float,
                         lane: str) -> ViewOutcome:
        """The view type from the first provider that answers, or 'unknown' with why none did. Never raises."""
        problems: list[str] = []
        started = time.monotonic()
        classify = with_image(view_type_pb2.ClassifyRequest(include_embedding=request.include_embedding,
                                                            labels=request.labels), image)
        last = "view type"
        for backend in self.view_types:
            last = backend.name
            if not backend.enabled:
                problems.append(f"{backend.name}: disabled")
                continue
            await backend.until_health_known(deadline - time.monotonic() - MIN_CALL_SECONDS)
            timeout = min(backend.deadline, deadline - time.monotonic())
            why_not = (backend.usable()[1] if timeout >= MIN_CALL_SECONDS
                       else "no time left before the caller's deadline")
            if why_not:
                problems.append(f"{backend.name}: {why_not}")
                continue
            try:
                await backend.admit(lane, timeout - MIN_CALL_SECONDS)  # within its deadline: SigLIP is quick
            except BackendBusy as exc:
                backend.breaker.release_probe()
                problems.append(f"{backend.name}: {exc}")
                continue
            attempt = time.monotonic()
            try:
                timeout = min(backend.deadline, deadline - attempt)
                method = backend.raw_method("Classify", view_type_pb2.ClassifyResponse)
                reply = await backend.call(method, classify, timeout, timeout >= backend.deadline, lane)
            except grpc.aio.AioRpcError as exc:
                spent = time.monotonic() - attempt
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT and request.labels.labels:
                    raise reraise_from_call(exc) from None  # a bad label set is the caller's to fix
                problems.append(f"{backend.name}: {exc.code().name} after {spent:.1f} s ({exc.details()})")
                continue
            finally:
                backend.capacity.release()
            view = tagging_pb2.ViewType(name=reply.view_type, confidence=reply.confidence, scores=reply.scores)
            return ViewOutcome(view, time.monotonic() - started, "", backend.name, reply.model, tuple(reply.embedding),
                               tuple(reply.labels))
        return ViewOutcome(tagging_pb2.ViewType(name="unknown"), time.monotonic() - started,
                           "; ".join(problems) or "no view-type service is installed", last)

    # -- texts ------------------------------------------------------------------------
    async def embed_text(self, texts: list[str], deadline: float,
                         lane: str = INTERACTIVE) -> view_type_pb2.ViewTypeServiceEmbedTextResponse:
        """Texts embedded by the first view-type provider that can (SigLIP's text tower)."""
        problems: list[str] = []
        payload = view_type_pb2.ViewTypeServiceEmbedTextRequest(texts=texts).SerializeToString()
        busy = False
        for backend in self.view_types:
            if not backend.enabled:
                problems.append(f"{backend.name}: disabled")
                continue
            await backend.until_health_known(deadline - time.monotonic() - MIN_CALL_SECONDS)
            timeout = min(backend.deadline, deadline - time.monotonic())
            why_not = (backend.usable()[1] if timeout >= MIN_CALL_SECONDS
                       else "no time left before the caller's deadline")
            if not why_not and backend.model_settings.get("text_tower") != "yes":
                # Not called: an export without a text tower (or a service from before EmbedText) would
                # answer UNAVAILABLE / UNIMPLEMENTED, counted against the breaker its Classify calls share.
                why_not = "its model has no text tower (re-export it: archivetag models export-siglip)"
            if why_not:
                problems.append(f"{backend.name}: {why_not}")
                continue
            try:
                await backend.admit(lane, timeout - MIN_CALL_SECONDS)
            except BackendBusy as exc:
                backend.breaker.release_probe()
                busy = busy or not exc.unusable
                problems.append(f"{backend.name}: {exc}")
                continue
            try:
                timeout = min(backend.deadline, deadline - time.monotonic())
                method = backend.raw_method("EmbedText", view_type_pb2.ViewTypeServiceEmbedTextResponse)
                return await backend.call(method, payload, timeout, timeout >= backend.deadline, lane)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise reraise_from_call(exc) from None
                busy = busy or exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                problems.append(f"{backend.name}: {exc.code().name} ({exc.details()})")
            finally:
                backend.capacity.release()
        why = "; ".join(problems) or "no view-type service is installed"
        if time.monotonic() >= deadline:
            raise DeadlineExpired(f"deadline passed before the texts were embedded: {why}")
        if busy:
            raise QueueFull(f"every view-type service is busy: {why}; retry later")
        raise NotServing(f"no view-type service could embed the texts: {why}")
