"""A model service: one ModelBackend on the shared runtime.

A backend (services/<model>/archivetag_<model>/backend.py) implements a few hooks: load the
weights, give a warm-up input, prepare one decoded image, infer a batch, say who it is. Its
spec (services/<model>/archivetag_<model>/spec.py) declares its capability, and the runtime
serves that capability's API with the generic servicer (runtime/servicers.py) and owns
everything else: gRPC, health, decoding, batching, the watchdog, metrics and errors.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1.health import aio as health_aio
from PIL import Image

from archivetag.runtime.batcher import DynamicBatcher, lane_from_metadata
from archivetag.runtime.errors import InvalidInput, ModelLoadError, NotServing
from archivetag.runtime.images import ImageDecoder, ImageLimits
from archivetag.runtime.lifecycle import (
    DRAINING,
    FAILED,
    SERVING,
    WARMING_UP,
    InferenceWatchdog,
    ModelHealth,
)
from archivetag.runtime.logs import fields
from archivetag.runtime.model_files import check_readable

# Backends name the service they implement through these (their spec is the source of truth).
from archivetag.runtime.specs import TAGGER_SERVICE, VIEW_TYPE_SERVICE, ServerSpec, load  # noqa: F401 - re-exported
from archivetag.v1 import common_pb2

log = logging.getLogger("archivetag.model_service")


@dataclass
class OcrText:
    """The text a tagger read in one image."""

    text: str
    regions: list[tuple[str, list[float]]] = field(default_factory=list)  # (text, quad x1..y4 in image pixels)


@dataclass
class TagResult:
    """What a tagger infers for one image."""

    tags: list[tuple[str, float]]  # (name, confidence), most confident first
    caption: str = ""
    ocr: OcrText | None = None  # None: no text was read (not asked, or the tagger cannot read)


@dataclass
class ViewTypeResult:
    """What the view-type classifier infers for one image."""

    view_type: str
    confidence: float
    scores: list[tuple[str, float, float]]  # (class, probability, logit), most probable first
    embedding: list[float] = field(default_factory=list)


@dataclass
class TagOptions:
    """What a TagRequest asks of a tagger beyond the image, checked once for every tagger."""

    threshold: float | None  # one threshold for every tag instead of the model's own; None: the model's
    max_tags: int  # 0: no cap
    vocabulary: list[str]  # empty: every tag
    ocr: int = common_pb2.OCR_MODE_UNSPECIFIED  # an OcrMode: which text reading is asked for

    @classmethod
    def of(cls, request) -> TagOptions:
        if request is None:
            return cls(None, 0, [])
        threshold = float(request.threshold) if request.HasField("threshold") else None
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise InvalidInput(f"threshold {threshold} is outside [0, 1]", reason="FIELD_INVALID", field="threshold")
        return cls(threshold, int(request.max_tags), list(request.vocabulary), ocr_mode(request.ocr))


def ocr_mode(value: int) -> int:
    """The request's OcrMode; InvalidInput for a number the enum does not name (proto3 keeps unknown values)."""
    if value not in common_pb2.OcrMode.values():
        names = ", ".join(common_pb2.OcrMode.keys())
        raise InvalidInput(f"ocr {value} is not an OcrMode; use one of {names}", reason="FIELD_INVALID", field="ocr")
    return value


def ocr_answer(asked: int, read: OcrText | None) -> common_pb2.OcrResult | None:
    """The response's ocr field: unset when not asked; NOT_AVAILABLE when asked of a tagger that cannot read."""
    if asked == common_pb2.OCR_MODE_UNSPECIFIED:
        return None
    if read is None:
        return common_pb2.OcrResult(status=common_pb2.OCR_STATUS_NOT_AVAILABLE)
    return common_pb2.OcrResult(
        status=common_pb2.OCR_STATUS_READ, text=read.text,
        regions=[common_pb2.OcrRegion(text=text, quad=quad) for text, quad in read.regions],
    )


# max_batch_size 0 picks by device. On this project's 2-core CPU, batch 8 vs 1 bought 4% for
# SigLIP (ONNX Runtime), 1% for RAM++ (batch 4) and 2% for Florence-2 base (batch 4)
# (benchmarks/results/{siglip,rampp,florence}.json), while a photo arriving mid-batch waits for
# all of it: on a CPU, one image at a time; on a GPU, a batch costs little more than one image.
GPU_BATCH_SIZE = 8
CPU_BATCH_SIZE = 1


def batch_size_for(device: str) -> int:
    """The batch size for max_batch_size 0, by the device the model loaded on ("cpu", "cuda:0", "mps")."""
    return CPU_BATCH_SIZE if device in ("", "cpu") else GPU_BATCH_SIZE


def warmup_image() -> Image.Image:
    """A fixed photo-like image made from code: not square and not any model's size, so the warm-up also
    runs resizing; smooth gradients with edges, so every layer sees non-trivial input."""
    height, width = 240, 320
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    red = 127.5 + 127.5 * np.sin(x / 23.0) * np.cos(y / 31.0)
    green = 255.0 * (x + y) / (width + height)
    blue = np.where(((x // 40) + (y // 40)) % 2 == 0, 50.0, 205.0)
    return Image.fromarray(np.stack([red, green, blue], axis=-1).round().clip(0, 255).astype(np.uint8), "RGB")


class ModelBackend(abc.ABC):
    """The hooks a model implements. Everything here runs off the event loop."""

    family: str  # the spec's name: <models>/<family>, the metrics label
    service: str  # the gRPC service it implements: its capability's (spec.capability.service)
    # The model's input edge as loaded (set by load()): large JPEGs are decoded at a reduced scale
    # that still covers it. None: always decode at full size.
    input_edge: int | None = None

    @abc.abstractmethod
    def load(self) -> None:
        """Load the weights (and set input_edge); raise ModelLoadError with a reason a person can act on."""

    def warmup_input(self) -> tuple[Image.Image, Any]:
        """The image and request that must infer without error before serving: the one synthetic photo
        every service warms up with, and no request options."""
        return warmup_image(), None

    @abc.abstractmethod
    def prepare(self, image: Image.Image, request: Any) -> Any:
        """Turn one decoded image and its request into a batch item; InvalidInput for bad options."""

    @abc.abstractmethod
    def infer_batch(self, items: list[Any], abandoned: Callable[[], bool]) -> Sequence[Any]:
        """Infer a batch: one TagResult/ViewTypeResult (or Exception) per item, in order."""

    @abc.abstractmethod
    def identity(self) -> common_pb2.ModelIdentity:
        """Who the model is (name, revision, weights checksum, device, dtype)."""

    def describe(self) -> dict[str, str]:
        """Settings in effect, for GetModelInfo."""
        return {}

    # A torch service: on CUDA its JPEGs are decoded there (images.finish_decode_with_torch).
    # False for SigLIP, which stays torch-free.
    decodes_with_torch = False

    def vocabulary(self) -> list[str]:
        """Tag or class names the model chooses from."""
        return []


class ModelServiceApp:
    """The ServerApp that serves one backend."""

    def __init__(self, spec: ServerSpec, backend: ModelBackend, settings):
        assert spec.capability is not None, f"{spec.name} is not a model service"
        if backend.service != spec.capability.service or backend.family != spec.name:
            raise ValueError(f"{type(backend).__name__} serves {backend.service} as {backend.family!r}; its spec "
                             f"declares {spec.capability.service} as {spec.name!r}")
        self.spec = spec
        self.capability = spec.capability
        self.backend = backend
        self.settings = settings
        self.name = backend.family
        self.service_names = [backend.service]
        self.decoder = ImageDecoder(
            ImageLimits(settings.max_image_bytes, settings.max_image_pixels, settings.jpeg_draft,
                        settings.max_jpeg_scans, settings.decode_memory_mb * 1024 * 1024),
            threads=settings.decode_threads,
            allowed_roots=settings.allowed_roots,
        )
        self.batcher = DynamicBatcher(
            backend.infer_batch,
            name=backend.family,
            max_batch_size=settings.max_batch_size or GPU_BATCH_SIZE,  # 0 (by device) is settled once loaded
            max_queue_delay=settings.max_queue_delay_ms / 1000,
            max_queue_size=settings.max_queue_size,
        )
        self.health: ModelHealth | None = None
        self.watchdog: InferenceWatchdog | None = None
        self._identity: common_pb2.ModelIdentity | None = None

    # -- ServerApp ------------------------------------------------------------------
    def register(self, server: grpc.aio.Server, health: health_aio.HealthServicer) -> None:
        self.health = ModelHealth(health, self.backend.service, self.backend.family)
        self.capability.add_servicer(load(self.capability.servicer)(self), server)

    async def start(self) -> None:
        assert self.health is not None
        started = time.monotonic()
        try:
            check_readable(Path(self.settings.models) / self.backend.family)
            await asyncio.to_thread(self.backend.load)
        except ModelLoadError as exc:
            await self.health.set(FAILED, str(exc))
            return
        except Exception as exc:  # whatever breaks, say so and stay NOT_SERVING
            log.exception("model load crashed")
            await self.health.set(FAILED, f"loading the model failed: {type(exc).__name__}: {exc}")
            return
        self._identity = self.backend.identity()
        self.decoder.min_edge = self.backend.input_edge  # known once loaded; no request is decoded before
        if self.backend.decodes_with_torch:
            self.decoder.device = self._identity.device or "cpu"
        if not self.settings.max_batch_size:
            self.batcher.resize(batch_size_for(self._identity.device))
        log.info("model loaded", extra=fields(model=self.backend.family, seconds=round(time.monotonic() - started, 2),
                                               name=self._identity.name, device=self._identity.device))
        await self.health.set(WARMING_UP, "running the warm-up inference")
        self.batcher.start()
        try:
            await self.warmup()
        except Exception as exc:
            log.exception("warm-up failed")
            await self.health.set(FAILED, f"warm-up inference failed: {type(exc).__name__}: {exc}")
            return
        await self.health.set(SERVING)
        s = self.settings
        self.watchdog = InferenceWatchdog(
            self.batcher, self.health, self.warmup, decoder=self.decoder, stall_seconds=s.stall_seconds,
            max_failures=s.max_failed_batches, probe_interval=s.recovery_probe_seconds,
        )
        self.watchdog.start()

    async def drain(self) -> None:
        if self.health:
            await self.health.set(DRAINING, "shutting down")

    async def close(self) -> None:
        if self.watchdog:
            await self.watchdog.stop()
        await self.batcher.stop()
        self.decoder.close()

    def settings_in_effect(self) -> dict[str, str]:
        """The backend's settings and the batch size chosen, for GetModelInfo."""
        return {**self.backend.describe(), "max_batch_size": str(self.batcher.max_batch_size)}

    # -- inference ------------------------------------------------------------------
    async def warmup(self) -> None:
        image, request = self.backend.warmup_input()
        item = await asyncio.to_thread(self.backend.prepare, image, request)
        await self.batcher.submit(item)

    async def infer(
        self, image_proto: common_pb2.Image, request: Any, context: grpc.aio.ServicerContext
    ) -> tuple[Any, common_pb2.ServiceTimings]:
        """Decode, prepare and infer one request through the batcher."""
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        decode_seconds = 0.0

        async def decode_and_prepare() -> Any:
            nonlocal decode_seconds
            started = time.perf_counter()
            try:
                return await self.decoder.decode(
                    image_proto, then=lambda image: self.backend.prepare(image, request), deadline=deadline
                )
            finally:
                decode_seconds = time.perf_counter() - started

        result, timings = await self.infer_prepared(decode_and_prepare, context)
        timings.decode_seconds = decode_seconds
        return result, timings

    async def infer_prepared(self, prepare: Callable[[], Awaitable[Any]],
                             context: grpc.aio.ServicerContext) -> tuple[Any, common_pb2.ServiceTimings]:
        """One request through the batcher: `prepare` makes its batch item (decodes the image, or tokenizes
        SigLIP's texts) after admission, so a full server refuses before spending anything on it."""
        assert self.health is not None
        if self.health.phase not in (SERVING, DRAINING):
            raise NotServing(f"{self.backend.family} model is not serving ({self.health.phase}): {self.health.reason}",
                             metadata={"model": self.backend.family, "phase": self.health.phase})
        lane = lane_from_metadata(context.invocation_metadata())
        result, info = await self.batcher.submit(timeout=context.time_remaining(), prepare=prepare, lane=lane)
        return result, common_pb2.ServiceTimings(queue_seconds=info.queue_seconds,
                                                 inference_seconds=info.inference_seconds, batch_size=info.batch_size)

    def identity(self) -> common_pb2.ModelIdentity:
        return self._identity or common_pb2.ModelIdentity(family=self.backend.family)

    def state(self) -> common_pb2.ServiceState:
        assert self.health is not None
        return common_pb2.ServiceState(
            serving=self.health.serving, phase=self.health.phase, reason=self.health.reason
        )
