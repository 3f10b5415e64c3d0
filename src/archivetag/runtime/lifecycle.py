"""A model's lifecycle and its health as grpc.health.v1 reports it.

    loading → warming_up → serving ⇄ unhealthy          (watchdog)
          ↘ failed (load or warm-up error: never serves; the reason says why)
    any → draining (SIGTERM)

Only `serving` is SERVING under the model's health name; "" (the process) is SERVING
from start to shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from archivetag.runtime import metrics
from archivetag.runtime.batcher import DynamicBatcher
from archivetag.runtime.images import ImageDecoder
from archivetag.runtime.logs import fields

log = logging.getLogger("archivetag.lifecycle")

LOADING, WARMING_UP, SERVING, UNHEALTHY, FAILED, DRAINING = (
    "loading", "warming_up", "serving", "unhealthy", "failed", "draining",
)


class ModelHealth:
    """Holds the phase and reason, and mirrors them into the health service."""

    def __init__(self, health: health_aio.HealthServicer, service_name: str, model: str):
        self.health = health
        self.service_name = service_name
        self.model = model
        self.phase = LOADING
        self.reason = "loading the model"
        self.changed = asyncio.Event()

    @property
    def serving(self) -> bool:
        return self.phase == SERVING

    async def set(self, phase: str, reason: str = "") -> None:
        if self.phase == DRAINING or (self.phase == phase and self.reason == reason):
            return
        if phase == self.phase:
            # The same state, reworded (a stall's growing duration, each second): shown in health and
            # GetModelInfo, logged once, when the phase changed.
            self.reason = reason
            return
        level = logging.WARNING if phase in (UNHEALTHY, FAILED) else logging.INFO
        log.log(level, f"model {phase}",
                extra=fields(model=self.model, phase=phase, previous=self.phase, reason=reason))
        self.phase, self.reason = phase, reason
        status = (health_pb2.HealthCheckResponse.SERVING if phase == SERVING
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(self.service_name, status)
        metrics.MODEL_SERVING.labels(self.model).set(1 if phase == SERVING else 0)
        self.changed.set()
        self.changed = asyncio.Event()


class InferenceWatchdog:
    """Turns the model NOT_SERVING when inference stalls or keeps failing, and back.

    Stalled: work is waiting and no batch finished for `stall_seconds` (a hung GPU call,
    a deadlock), or one decode step has run that long (a wedged decoder or file read).
    Failing: `max_failures` batches failed in a row (e.g. repeated CUDA
    out-of-memory); while so, `probe` (the warm-up inference) is retried every
    `probe_interval` seconds, and its success brings the model back.
    """

    def __init__(
        self,
        batcher: DynamicBatcher,
        health: ModelHealth,
        probe: Callable[[], Awaitable[None]],
        *,
        decoder: ImageDecoder | None = None,
        stall_seconds: float,
        max_failures: int,
        probe_interval: float,
    ):
        self.batcher = batcher
        self.health = health
        self.probe = probe
        self.decoder = decoder
        self.stall_seconds = stall_seconds
        self.max_failures = max(1, max_failures)
        self.probe_interval = probe_interval
        self._task: asyncio.Task | None = None
        self._last_probe = 0.0

    def fault(self) -> str:
        """Why the model should not serve now, or ''."""
        b = self.batcher
        idle_for = time.monotonic() - b.last_progress
        if b.has_pending_work and idle_for > self.stall_seconds:
            return (
                f"inference stalled: no batch finished for {idle_for:.0f} s with {b.depth} requests waiting "
                f"(limit ARCHIVETAG_STALL_SECONDS={self.stall_seconds:g})"
            )
        decoding_for = self.decoder.longest_step_seconds() if self.decoder else 0.0
        if decoding_for > self.stall_seconds:
            return (
                f"image decoding stalled: one decode has run for {decoding_for:.0f} s "
                f"(limit ARCHIVETAG_STALL_SECONDS={self.stall_seconds:g})"
            )
        if b.consecutive_failures >= self.max_failures:
            return f"{b.consecutive_failures} inference batches failed in a row; last error: {b.last_failure}"
        return ""

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="watchdog")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def check(self) -> None:
        if self.health.phase not in (SERVING, UNHEALTHY):
            return
        fault = self.fault()
        if fault:
            await self.health.set(UNHEALTHY, fault)
            if (
                self.batcher.consecutive_failures >= self.max_failures
                and not self.batcher.has_pending_work
                and time.monotonic() - self._last_probe >= self.probe_interval
            ):
                self._last_probe = time.monotonic()
                try:
                    await self.probe()  # success resets the failure count through the batcher
                except Exception as exc:  # noqa: BLE001
                    log.warning("recovery probe failed", extra=fields(model=self.health.model, error=str(exc)))
                if not self.fault():
                    await self.health.set(SERVING)
        elif self.health.phase == UNHEALTHY:
            await self.health.set(SERVING)

    async def _run(self) -> None:
        interval = max(0.05, min(1.0, self.stall_seconds / 4, self.probe_interval / 2))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check()
            except Exception:  # the watchdog must outlive its own bugs
                log.exception("watchdog check failed")
