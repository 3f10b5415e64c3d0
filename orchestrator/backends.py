"""A backend model service as the orchestrator sees it: replicas, live health, breaker, stats.

Health comes from a grpc.health.v1 Watch stream kept open to every replica (reconnected
with backoff), never from files. Calls go through one channel per backend, balanced
round-robin over the replicas with gRPC's client-side health checking, so a replica
that says NOT_SERVING gets no calls while its siblings serve.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import random
import socket
import statistics
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from archivetag.runtime.channels import client_channel_options
from archivetag.runtime.logs import fields
from archivetag.runtime.registry import ServerSpec
from archivetag.v1 import common_pb2, tagging_pb2
from archivetag.orchestrator.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker

log = logging.getLogger("archivetag.orchestrator.backends")

SERVING, NOT_SERVING, UNREACHABLE = "SERVING", "NOT_SERVING", "UNREACHABLE"

# Why a backend that is not SERVING gets no call, as a FallbackReason.
HEALTH_FALLBACK = {
    tagging_pb2.BACKEND_HEALTH_UNSPECIFIED: tagging_pb2.FALLBACK_REASON_HEALTH_UNKNOWN,
    tagging_pb2.BACKEND_HEALTH_NOT_SERVING: tagging_pb2.FALLBACK_REASON_NOT_SERVING,
    tagging_pb2.BACKEND_HEALTH_UNREACHABLE: tagging_pb2.FALLBACK_REASON_UNREACHABLE,
    tagging_pb2.BACKEND_HEALTH_DISABLED: tagging_pb2.FALLBACK_REASON_DISABLED,
}
BREAKER_STATES = {
    CLOSED: tagging_pb2.BREAKER_STATE_CLOSED,
    OPEN: tagging_pb2.BREAKER_STATE_OPEN,
    HALF_OPEN: tagging_pb2.BREAKER_STATE_HALF_OPEN,
}


class TargetError(ValueError):
    """A backend target that cannot be used."""


@dataclass(frozen=True)
class Target:
    """Where a backend's replicas are."""

    channel_target: str  # what the call channel dials
    dns_name: str | None  # a name re-resolved to find replicas, or None for a fixed list
    port: int
    addresses: tuple[str, ...]  # "ip:port" of the replicas known now


def _split_host_port(entry: str) -> tuple[str, int]:
    host, sep, port = entry.rpartition(":")
    if not sep or not port.isdigit():
        raise TargetError(f"{entry!r} is not host:port")
    return host.strip("[]"), int(port)


def _format(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({_format(info[4][0], port) for info in infos})


def parse_target(text: str) -> Target:
    """'host:port' (a DNS name may stand for many replicas) or 'ip:port,ip:port,...'."""
    text = text.strip().removeprefix("dns:///")
    entries = [e.strip() for e in text.split(",") if e.strip()]
    if not entries:
        raise TargetError("empty target")
    hosts = [_split_host_port(e) for e in entries]
    if len(hosts) == 1 and not _is_ip(hosts[0][0]):
        host, port = hosts[0]
        return Target(f"dns:///{host}:{port}", host, port, ())
    addresses: list[str] = []
    for host, port in hosts:
        addresses += [_format(host, port)] if _is_ip(host) else resolve(host, port)
    families = {"ipv6" if a.startswith("[") else "ipv4" for a in addresses}
    if len(families) > 1:
        raise TargetError(f"target {text!r} mixes IPv4 and IPv6 replicas")
    return Target(f"{families.pop()}:{','.join(addresses)}", None, hosts[0][1], tuple(addresses))


@dataclass
class Replica:
    address: str
    status: str = "UNKNOWN"
    detail: str = ""


class Backend:
    """One model service (florence, rampp or siglip)."""

    def __init__(
        self,
        spec: ServerSpec,
        target: str,
        *,
        deadline: float,
        enabled: bool,
        breaker: CircuitBreaker,
        reconnect_max: float,
        resolve_every: float,
        max_message_bytes: int,
    ):
        self.spec = spec
        self.name = spec.name
        self.role = spec.role
        self.target_text = target
        self.health_service = spec.health_service
        self.deadline = deadline
        self.enabled = enabled
        self.breaker = breaker
        self.reconnect_max = reconnect_max
        self.resolve_every = resolve_every
        self.max_message_bytes = max_message_bytes
        self.target = parse_target(target) if enabled else None
        self.replicas: dict[str, Replica] = {}
        self.model = common_pb2.ModelIdentity(family=spec.name)
        self.not_serving_reason = ""
        self.latencies: deque[float] = deque(maxlen=256)
        self.ok_count = 0
        self.error_count = 0
        self.last_error = ""
        self.last_error_time: float | None = None  # wall-clock seconds
        self.last_error_resolved = False
        self.channel: grpc.aio.Channel | None = None
        self.stub: Any = None
        self._watchers: dict[str, asyncio.Task] = {}
        self._resolver: asyncio.Task | None = None
        self.health_changed = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------
    def _channel_options(self, balanced: bool) -> list[tuple[str, Any]]:
        options = [
            *client_channel_options(self.max_message_bytes, reconnect_max_seconds=self.reconnect_max),
            ("grpc.dns_min_time_between_resolutions_ms", int(self.resolve_every * 1000)),
        ]
        if balanced:
            config = {
                "loadBalancingConfig": [{"round_robin": {}}],
                "healthCheckConfig": {"serviceName": self.health_service},
                # Inference is idempotent: a call cut off by a dying replica is retried on
                # another one (the next in the round-robin) before it counts as a failure.
                "methodConfig": [{
                    "name": [{"service": self.health_service}],
                    "retryPolicy": {
                        "maxAttempts": 3, "initialBackoff": "0.05s", "maxBackoff": "0.5s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }],
            }
            options += [
                ("grpc.service_config", json.dumps(config)),
                # Retries resend the request, so it is kept; photos are larger than the 256 KiB default.
                ("grpc.per_rpc_retry_buffer_size", self.max_message_bytes),
                ("grpc.retry_buffer_size", 8 * self.max_message_bytes),
            ]
        return options

    async def start(self) -> None:
        if not self.enabled:
            return
        self.channel = grpc.aio.insecure_channel(self.target.channel_target, options=self._channel_options(True))
        self.stub = self.spec.stub(self.channel)
        if self.target.dns_name:
            self._resolver = asyncio.get_running_loop().create_task(self._resolve_loop(), name=f"{self.name}-resolve")
        else:
            for address in self.target.addresses:
                self._start_watch(address)

    async def stop(self) -> None:
        tasks = [*self._watchers.values(), *([self._resolver] if self._resolver else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.channel is not None:
            await self.channel.close()

    # -- replicas and their health ---------------------------------------------------
    async def _resolve_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                infos = await loop.getaddrinfo(self.target.dns_name, self.target.port, type=socket.SOCK_STREAM)
                found = {_format(info[4][0], self.target.port) for info in infos}
            except OSError as exc:
                found = set()
                self._record_error(f"cannot resolve {self.target.dns_name}: {exc}")
                log.warning("cannot resolve backend", extra=fields(backend=self.name, error=str(exc)))
            for address in found - set(self._watchers):
                self._start_watch(address)
            for address in set(self._watchers) - found:
                self._watchers.pop(address).cancel()
                self.replicas.pop(address, None)
                self._changed()
            await asyncio.sleep(self.resolve_every)

    def _start_watch(self, address: str) -> None:
        self.replicas[address] = Replica(address)
        self._watchers[address] = asyncio.get_running_loop().create_task(
            self._watch(address), name=f"{self.name}-watch-{address}"
        )

    def _set_replica(self, address: str, status: str, detail: str = "") -> None:
        replica = self.replicas.get(address)
        if replica is None or (replica.status, replica.detail) == (status, detail):
            return
        log.info("backend replica health", extra=fields(backend=self.name, replica=address, status=status,
                                                         previous=replica.status, detail=detail))
        replica.status, replica.detail = status, detail
        if status == SERVING:
            self.last_error_resolved = True
        self._changed()

    def _changed(self) -> None:
        self.health_changed.set()
        self.health_changed = asyncio.Event()

    async def _watch(self, address: str) -> None:
        """Keep a Watch stream open to one replica; reconnect with capped, jittered backoff."""
        backoff = 0.2
        async with grpc.aio.insecure_channel(address, options=self._channel_options(False)) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            info_stub = self.spec.stub(channel)
            while True:
                try:
                    call = health.Watch(health_pb2.HealthCheckRequest(service=self.health_service))
                    async for reply in call:
                        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                        if status == "SERVICE_UNKNOWN":
                            status, detail = NOT_SERVING, f"no {self.health_service} at this address"
                        else:
                            detail = await self._model_info(info_stub, status)
                        self._set_replica(address, status, detail)
                        backoff = 0.2
                    self._set_replica(address, UNREACHABLE, "health stream ended (server shutting down)")
                except grpc.aio.AioRpcError as exc:
                    self._set_replica(address, UNREACHABLE, f"{exc.code().name}: {exc.details()}")
                await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, self.reconnect_max)

    async def _model_info(self, stub: Any, status: str) -> str:
        """Refresh the model identity; return why the replica does not serve ('' if it does)."""
        try:
            info = await stub.GetModelInfo(self.spec.model_info_request(), timeout=5)
        except grpc.aio.AioRpcError:
            return ""
        if info.model.name:
            self.model = info.model
        return "" if status == SERVING else f"{info.state.phase}: {info.state.reason}"

    def health(self) -> int:
        """Aggregated health over the replicas, as a BackendHealth value."""
        if not self.enabled:
            return tagging_pb2.BACKEND_HEALTH_DISABLED
        statuses = [r.status for r in self.replicas.values()]
        if SERVING in statuses:
            return tagging_pb2.BACKEND_HEALTH_SERVING
        if NOT_SERVING in statuses:
            return tagging_pb2.BACKEND_HEALTH_NOT_SERVING
        if statuses and all(s == UNREACHABLE for s in statuses):
            return tagging_pb2.BACKEND_HEALTH_UNREACHABLE
        if self.target and self.target.dns_name and not statuses and self.last_error:
            return tagging_pb2.BACKEND_HEALTH_UNREACHABLE
        return tagging_pb2.BACKEND_HEALTH_UNSPECIFIED

    def describe_health(self) -> str:
        health = self.health()
        if health == tagging_pb2.BACKEND_HEALTH_DISABLED:
            return "disabled"
        if health == tagging_pb2.BACKEND_HEALTH_UNSPECIFIED:
            return "health not known yet (connecting)"
        details = sorted({r.detail for r in self.replicas.values() if r.detail})
        text = tagging_pb2.BackendHealth.Name(health).removeprefix("BACKEND_HEALTH_")
        return f"{text} ({'; '.join(details)})" if details and health != tagging_pb2.BACKEND_HEALTH_SERVING else text

    def usable(self) -> tuple[int, str]:
        """(FALLBACK_REASON_UNSPECIFIED, '') if a call may go to this backend now, else why not,
        as a FallbackReason and for a person. May take the breaker's probe slot."""
        health = self.health()
        if health != tagging_pb2.BACKEND_HEALTH_SERVING:
            return HEALTH_FALLBACK[health], self.describe_health()
        if not self.breaker.allow():
            return tagging_pb2.FALLBACK_REASON_BREAKER_OPEN, self.breaker.describe()
        return tagging_pb2.FALLBACK_REASON_UNSPECIFIED, ""

    def breaker_state(self) -> int:
        """The breaker as a BreakerState value."""
        return BREAKER_STATES[self.breaker.current_state()]

    def _record_error(self, text: str) -> None:
        self.last_error, self.last_error_time, self.last_error_resolved = text, time.time(), False

    # -- calls ----------------------------------------------------------------------
    async def call(self, method: Callable[..., Awaitable[Any]], request: Any, timeout: float) -> Any:
        """Call the backend; record latency, errors and the breaker's verdict.

        INVALID_ARGUMENT is the request's fault: it does not count against the backend.
        """
        started = time.monotonic()
        try:
            response = await method(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                self.breaker.record_success()
            else:
                self.error_count += 1
                self._record_error(f"{exc.code().name}: {exc.details()}")
                self.breaker.record_failure()
            raise
        except asyncio.CancelledError:
            self.breaker.release_probe()
            raise
        self.latencies.append(time.monotonic() - started)
        self.ok_count += 1
        self.last_error_resolved = True
        self.breaker.record_success()
        if response.model.name:
            self.model = response.model
        return response

    def status(self) -> tagging_pb2.BackendStatus:
        latencies = sorted(self.latencies)
        p50 = statistics.median(latencies) if latencies else 0.0
        p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else 0.0
        status = tagging_pb2.BackendStatus(
            name=self.name,
            role=self.role,
            target=self.target_text,
            health=self.health(),
            breaker=self.breaker_state(),
            replicas=len(self.replicas),
            serving_replicas=sum(r.status == SERVING for r in self.replicas.values()),
            latency_p50_seconds=p50,
            latency_p95_seconds=p95,
            ok_count=self.ok_count,
            error_count=self.error_count,
            last_error=self.last_error,
            model=self.model,
            last_error_resolved=bool(self.last_error) and self.last_error_resolved,
        )
        if self.last_error_time is not None:
            status.last_error_time.FromNanoseconds(int(self.last_error_time * 1e9))
        return status
