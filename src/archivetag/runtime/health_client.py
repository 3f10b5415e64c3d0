"""The one health client: ask a server's grpc.health.v1 for one service's status."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# The health states as strings, for every health client (this one, the orchestrator's watch): the
# protocol's names, and UNREACHABLE for a server that does not answer.
SERVING, NOT_SERVING, SERVICE_UNKNOWN = "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"
UNREACHABLE = "UNREACHABLE"


def _status_name(reply: health_pb2.HealthCheckResponse) -> str:
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def _failure(exc: grpc.RpcError) -> tuple[str, str]:
    if exc.code() == grpc.StatusCode.NOT_FOUND:
        return SERVICE_UNKNOWN, exc.details() or "unknown service"
    return UNREACHABLE, f"{exc.code().name}: {exc.details()}"


def check(channel: grpc.Channel, service: str = "", timeout: float = 2.0) -> tuple[str, str]:
    """(SERVING / NOT_SERVING / SERVICE_UNKNOWN / UNREACHABLE, detail) over a blocking channel."""
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                          timeout=timeout)
    except grpc.RpcError as exc:
        return _failure(exc)
    return _status_name(reply), ""


async def check_async(channel: grpc.aio.Channel, service: str = "", timeout: float = 2.0) -> tuple[str, str]:
    """The same over an asyncio channel."""
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                                timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        return _failure(exc)
    return _status_name(reply), ""


def check_address(address: str, service: str = "", timeout: float = 2.0,
                  credentials: grpc.ChannelCredentials | None = None, options=None) -> tuple[str, str]:
    """Open a channel to address (TLS when credentials are given), check once, close."""
    channel = (grpc.secure_channel(address, credentials, options=options) if credentials
               else grpc.insecure_channel(address, options=options))
    with channel:
        return check(channel, service, timeout)
