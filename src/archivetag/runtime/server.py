"""The one server bootstrap: every archivetag process serves through `serve(app, settings)`.

It registers grpc.health.v1 ("" = the process is alive; each service's full name = its
model is ready) and server reflection, applies message-size and keepalive limits and
admission (runtime/admission.py: calls and streams counted apart), serves Prometheus
metrics, and on SIGTERM/SIGINT turns everything NOT_SERVING, refuses new calls, lets in-flight
calls finish within the grace period and returns 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from archivetag.runtime import tracing
from archivetag.runtime.admission import AdmissionInterceptor
from archivetag.runtime.channels import server_channel_options
from archivetag.runtime.interceptors import RequestDecodingInterceptor
from archivetag.runtime.logs import configure_logging, fields
from archivetag.runtime.metrics import RequestMetricsInterceptor, start_metrics_server
from archivetag.runtime.tracing import TracingInterceptor

log = logging.getLogger("archivetag.server")

REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


class ServerApp(Protocol):
    """What a server plugs into the bootstrap."""

    name: str
    service_names: list[str]  # full gRPC service names, for reflection and health
    # Optional: `interceptors`, a list of grpc.aio.ServerInterceptor run after the metrics one.

    def register(self, server: grpc.aio.Server, health: health_aio.HealthServicer) -> None: ...
    async def start(self) -> None: ...  # runs while serving (e.g. loads the model); sets health
    async def drain(self) -> None: ...  # SIGTERM received; the server still finishes in-flight calls
    async def close(self) -> None: ...  # the server has stopped


class DrainingHealthServicer(health_aio.HealthServicer):
    """The standard health service, whose Watch streams end once shutdown began.

    The stock Watch never returns, so a watching client (the orchestrator) would hold
    every shutdown for the whole grace period. Here a watcher gets NOT_SERVING, then
    its stream completes.
    """

    async def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext):
        await _refuse_long_name(request, context)
        return await super().Check(request, context)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> None:
        await _refuse_long_name(request, context)
        condition = self._server_watchers[request.service]
        self._watcher_count_by_service[request.service] += 1
        try:
            async with condition:
                last_status = None
                while True:
                    status = self._server_status.get(
                        request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
                    )
                    if status != last_status:
                        await context.write(health_pb2.HealthCheckResponse(status=status))
                        last_status = status
                    if self._gracefully_shutting_down:
                        return
                    await condition.wait()
        finally:
            self._watcher_count_by_service[request.service] -= 1
            if self._watcher_count_by_service[request.service] == 0:
                del self._server_watchers[request.service]
                del self._watcher_count_by_service[request.service]


# Service names are short ("archivetag.v1.TaggerService"). A Watch held open with a name of 30 MiB kept
# about 130 MiB for the life of the stream, from a caller that needs no token.
MAX_SERVICE_NAME = 256


async def _refuse_long_name(request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> None:
    if len(request.service) > MAX_SERVICE_NAME:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"service name of {len(request.service)} characters; names are at most {MAX_SERVICE_NAME}")


def metrics_token(settings) -> str:
    """The token the metrics endpoint requires ('' for none), from --metrics-token-file."""
    if not settings.metrics_token_file:
        return ""
    try:
        token = settings.metrics_token_file.read_text().strip()
    except OSError as exc:
        raise SystemExit(f"cannot read --metrics-token-file {settings.metrics_token_file}: {exc.strerror}") from None
    if len(token) < 16:
        raise SystemExit(f"--metrics-token-file {settings.metrics_token_file}: a token of at least 16 characters")
    return token


def _server_credentials(settings) -> grpc.ServerCredentials | None:
    if not settings.tls_cert and not settings.tls_key:
        if settings.tls_client_ca:
            raise SystemExit("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (settings.tls_cert and settings.tls_key):
        raise SystemExit("TLS needs both --tls-cert and --tls-key")
    ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def _enable_reflection(server: grpc.aio.Server, service_names: list[str]) -> None:
    """Server reflection as grpc.reflection.v1 (what current grpcurl, Postman and buf ask for)
    and v1alpha (older tools). grpcio-reflection ships only v1alpha; v1 is the same messages
    under a new package name, so the same servicer answers both."""
    names = [*service_names, reflection.SERVICE_NAME, REFLECTION_V1]
    servicer = reflection.aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": handler}),))


async def serve(app: ServerApp, settings) -> int:
    """Run the server until SIGTERM/SIGINT, then drain. Returns the exit code."""
    configure_logging(settings.log_level, settings.log_format)
    start_metrics_server(settings.host, settings.metrics_port, metrics_token(settings))
    traced = [TracingInterceptor(getattr(app, "answers_trace_id", False))] if tracing.configure(app.name) else []
    server = grpc.aio.server(
        options=server_channel_options(settings),
        interceptors=[
            RequestMetricsInterceptor(),
            *traced,  # OTEL_EXPORTER_OTLP_ENDPOINT set (runtime/tracing.py); before auth, so refusals are traced
            # The app's (auth) before admission: an authenticated client's streams are counted by who it is.
            *getattr(app, "interceptors", []),
            AdmissionInterceptor(settings.max_concurrent_rpcs, settings.max_streams_per_peer),
            # Last, so it sees the handler itself: a malformed request is refused there (and counted as such by
            # the metrics, after the token check), and its tolerant deserializer is what every wrapper hands on.
            RequestDecodingInterceptor(),
        ],
    )
    health = DrainingHealthServicer()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    for name in app.service_names:
        await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    app.register(server, health)
    _enable_reflection(server, [*app.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name])
    address = f"{settings.host}:{settings.port}"
    credentials = _server_credentials(settings)
    try:
        if credentials:
            server.add_secure_port(address, credentials)
        else:
            server.add_insecure_port(address)
    except RuntimeError as exc:
        log.error("cannot listen", extra=fields(address=address, error=str(exc)))
        return 2
    await server.start()
    log.info("listening", extra=fields(server=app.name, address=address, tls=bool(credentials)))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    startup = loop.create_task(app.start(), name=f"{app.name}-start")
    await stop.wait()

    log.info("draining", extra=fields(server=app.name, grace_seconds=settings.grace_seconds))
    await health.enter_graceful_shutdown()
    await app.drain()
    await server.stop(settings.grace_seconds)
    startup.cancel()
    await asyncio.gather(startup, return_exceptions=True)
    await app.close()
    tracing.shutdown()
    log.info("stopped", extra=fields(server=app.name))
    return 0


def run(app: ServerApp, settings) -> int:
    return asyncio.run(serve(app, settings))
