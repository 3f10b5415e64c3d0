"""The model's health as the runtime reports it: phases, reasons, and the log a person reads."""

from __future__ import annotations

import logging

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from archivetag.runtime.lifecycle import SERVING, UNHEALTHY, ModelHealth


async def test_a_reason_that_only_rewords_the_same_state_is_shown_but_logged_once(caplog):
    health = health_aio.HealthServicer()
    model = ModelHealth(health, "archivetag.v1.TaggerService", "trivial")
    await model.set(SERVING)
    with caplog.at_level(logging.INFO, logger="archivetag.lifecycle"):
        for seconds in range(5, 10):  # what the watchdog says each second of a stalled decode
            await model.set(UNHEALTHY, f"image decoding stalled: one decode has run for {seconds} s")
        await model.set(SERVING)
    phases = [record.getMessage() for record in caplog.records]
    assert phases == ["model unhealthy", "model serving"]
    assert model.phase == SERVING


async def test_the_latest_reason_is_what_health_and_model_info_show(caplog):
    health = health_aio.HealthServicer()
    model = ModelHealth(health, "archivetag.v1.TaggerService", "trivial")
    await model.set(UNHEALTHY, "stalled for 5 s")
    await model.set(UNHEALTHY, "stalled for 6 s")
    assert (model.phase, model.reason) == (UNHEALTHY, "stalled for 6 s")
    reply = await health.Check(health_pb2.HealthCheckRequest(service="archivetag.v1.TaggerService"), None)
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
