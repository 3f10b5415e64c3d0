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
import math
import socket
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import Gauge

from archivetag.runtime import tracing
from archivetag.runtime.backoff import backoff_seconds
from archivetag.runtime.batcher import INTERACTIVE, LANE_METADATA_KEY
from archivetag.runtime.channels import client_channel_options
from archivetag.runtime.health_client import NOT_SERVING, SERVICE_UNKNOWN, SERVING, UNREACHABLE
from archivetag.runtime.logs import fields
from archivetag.runtime.registry import ServerSpec
from archivetag.v1 import common_pb2, tagging_pb2
from archivetag_orchestrator.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from archivetag_orchestrator.capacity import BackendCapacity

log = logging.getLogger("archivetag.orchestrator.backends")

# Ping backends this often, and drop a connection whose ping is unanswered this long.
KEEPALIVE_SECONDS, KEEPALIVE_TIMEOUT_SECONDS = 4.0, 3.0
BACKEND_SERVING = Gauge("archivetag_backend_serving", "1 while the orchestrator sees a replica of the backend SERVING.",
                        ["backend"])
BACKEND_BREAKER_OPEN = Gauge("archivetag_backend_breaker_open", "1 while the backend's circuit breaker is open.",
                             ["backend"])
# A probe (Backend.probe) waits this long at most for a replica's answer.
PROBE_SECONDS = 1.0

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


class BackendBusy(Exception):
    """No call to the backend could start within the wait allowed, or it turned unusable while waiting."""

    def __init__(self, message: str, waited: float, unusable: bool):
        super().__init__(message)
        self.waited = waited
        self.unusable = unusable


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
    return sorted({_format(str(info[4][0]), port) for info in infos})


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


# A backend's fault: these count against its breaker and error count. The others are the
# caller's (INVALID_ARGUMENT, CANCELLED...) or load shedding by a working backend
# (RESOURCE_EXHAUSTED: opening the breaker on it would let one flooding client switch a
# busy backend off for everyone); they fail over or go back to the caller, uncounted.
BACKEND_FAULTS = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DATA_LOSS, grpc.StatusCode.UNIMPLEMENTED,
})


def is_backend_fault(code: grpc.StatusCode, own_deadline: bool) -> bool:
    """DEADLINE_EXCEEDED counts only when the backend used its own deadline, not a caller's shorter one."""
    return code in BACKEND_FAULTS or (code == grpc.StatusCode.DEADLINE_EXCEEDED and own_deadline)


@dataclass
class Replica:
    address: str
    status: str = "UNKNOWN"  # what its health watch last said
    detail: str = ""
    hung: str = ""  # why it counts as UNREACHABLE although the watch said otherwise ('' when it answers)

    @property
    def effective_status(self) -> str:
        return UNREACHABLE if self.hung else self.status


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
        health_check_every: float,
        health_check_timeout: float,
        first_health_wait: float = 10.0,
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
        self.health_check_every = health_check_every
        self.health_check_timeout = health_check_timeout
        self.first_health_wait = first_health_wait
        self.target = parse_target(target) if enabled else None
        self.replicas: dict[str, Replica] = {}
        self.model = common_pb2.ModelIdentity(family=spec.name)
        self.model_settings: dict[str, str] = {}  # GetModelInfo's settings in effect (part of the cache key)
        self.not_serving_reason = ""
        self.latencies: deque[float] = deque(maxlen=256)
        self.ok_count = 0
        self.error_count = 0
        self.last_error = ""
        self.last_error_time: float | None = None  # wall-clock seconds
        self.last_error_resolved = False
        self.channel: grpc.aio.Channel | None = None
        self._raw_methods: dict[str, Any] = {}
        self._watchers: dict[str, asyncio.Task] = {}
        self._reconnect_now: dict[str, asyncio.Event] = {}  # cuts a watch's backoff short (a probe saw it serve)
        self._probe: asyncio.Future | None = None
        self._resolver: asyncio.Task | None = None
        self.health_changed = asyncio.Event()
        self.capacity = BackendCapacity(spec.name)
        # Read at scrape time: the orchestrator's own view, which is what routing acts on.
        BACKEND_SERVING.labels(self.name).set_function(
            lambda: float(self.health() == tagging_pb2.BACKEND_HEALTH_SERVING))
        BACKEND_BREAKER_OPEN.labels(self.name).set_function(lambda: float(self.breaker.current_state() == OPEN))

    # -- lifecycle ----------------------------------------------------------------
    def _channel_options(self, balanced: bool) -> list[tuple[str, Any]]:
        options = [
            # A replica that stops answering (SIGSTOP, a wedged host) loses its connection within
            # keepalive time + timeout, so round-robin stops sending it calls; the servers accept
            # pings this often (runtime/channels.py server_channel_options).
            *client_channel_options(self.max_message_bytes, keepalive_seconds=KEEPALIVE_SECONDS,
                                    keepalive_timeout_seconds=KEEPALIVE_TIMEOUT_SECONDS,
                                    reconnect_max_seconds=self.reconnect_max),
            ("grpc.dns_min_time_between_resolutions_ms", int(self.resolve_every * 1000)),
            # Its own connections: grpc shares subchannels between channels of equal options, and a new channel
            # (after a probe saw a replica serve) would inherit the old one's reconnect backoff.
            ("grpc.use_local_subchannel_pool", 1),
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
        assert self.target is not None  # parsed whenever enabled
        self.channel = grpc.aio.insecure_channel(self.target.channel_target, options=self._channel_options(True))
        if self.target.dns_name:
            self._resolver = asyncio.get_running_loop().create_task(self._resolve_loop(), name=f"{self.name}-resolve")
        else:
            for address in self.target.addresses:
                self._start_watch(address)

    def raw_method(self, name: str, response_class: type[Message]) -> Any:
        """A unary method of the service that sends a request already serialized (bytes), so a
        large image is not copied again for the call (routing.with_image)."""
        method = self._raw_methods.get(name)
        if method is None:
            assert self.channel is not None, "start() first"
            method = self._raw_methods[name] = self.channel.unary_unary(
                f"/{self.health_service}/{name}", response_deserializer=response_class.FromString
            )
        return method

    async def stop(self) -> None:
        tasks = [*self._watchers.values(), *([self._resolver] if self._resolver else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.channel is not None:
            await self.channel.close()

    # -- replicas and their health ---------------------------------------------------
    async def _resolve_loop(self) -> None:
        target = self.target
        assert target is not None  # started only for an enabled backend with a DNS name
        loop = asyncio.get_running_loop()
        while True:
            try:
                infos = await loop.getaddrinfo(target.dns_name, target.port, type=socket.SOCK_STREAM)
                found = {_format(str(info[4][0]), target.port) for info in infos}
            except OSError as exc:
                found = set()
                self._record_error(f"cannot resolve {target.dns_name}: {exc}")
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
        self._reconnect_now[address] = asyncio.Event()
        self._watchers[address] = asyncio.get_running_loop().create_task(
            self._watch(address), name=f"{self.name}-watch-{address}"
        )

    def _set_hung(self, address: str, hung: str) -> None:
        replica = self.replicas.get(address)
        if replica is None or replica.hung == hung:
            return
        log.warning("backend replica answers health checks" if not hung else "backend replica hung",
                    extra=fields(backend=self.name, replica=address, detail=hung))
        replica.hung = hung
        if hung:  # what `archivetag status` shows as the backend's last error
            self._record_error(f"{address}: no answer to health checks ({hung})")
        self._changed()

    def _set_replica(self, address: str, status: str, detail: str = "") -> None:
        replica = self.replicas.get(address)
        if replica is None or (replica.status, replica.detail) == (status, detail):
            return
        log.info("backend replica health", extra=fields(backend=self.name, replica=address, status=status,
                                                         previous=replica.status, detail=detail))
        if status == UNREACHABLE and replica.status == SERVING:
            # A serving replica lost (killed, or stopped until keepalive closed its connection, so its
            # health checks then fail at once rather than time out): `archivetag status` shows it.
            self._record_error(f"{address}: lost ({detail or 'unreachable'})")
        replica.status, replica.detail = status, detail
        if status == SERVING:
            self.last_error_resolved = True
        self._changed()

    def _changed(self) -> None:
        self._resize()
        self.health_changed.set()
        self.health_changed = asyncio.Event()

    def _resize(self) -> None:
        """What the serving replicas can start on at once: per replica one batch (its batch size, from
        GetModelInfo) and the next one being decoded."""
        try:
            batch = max(1, int(self.model_settings.get("max_batch_size") or 1))
        except ValueError:
            batch = 1
        serving = sum(r.effective_status == SERVING for r in self.replicas.values())
        self.capacity.resize(max(1, serving) * (batch + 1))

    async def _watch(self, address: str) -> None:
        """Keep a Watch stream open to one replica (reconnected with capped, jittered backoff),
        and beside it a Health/Check with a short deadline: a stopped process keeps its
        connection and its stream open, and only an unanswered check shows it is hung."""
        while True:  # a new channel each time a probe saw the replica serve: this one may be in a reconnect backoff
            async with grpc.aio.insecure_channel(address, options=self._channel_options(False)) as channel:
                checker = asyncio.get_running_loop().create_task(self._check(address, channel))
                try:
                    await self._watch_stream(address, channel)
                finally:
                    checker.cancel()
                    await asyncio.gather(checker, return_exceptions=True)

    async def _check(self, address: str, channel: grpc.aio.Channel) -> None:
        health = health_pb2_grpc.HealthStub(channel)
        info_stub = self.spec.stub(channel)
        request = health_pb2.HealthCheckRequest(service=self.health_service)
        while True:
            await asyncio.sleep(self.health_check_every)
            try:
                reply = await health.Check(request, timeout=self.health_check_timeout)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    self._set_hung(address, f"health check unanswered for {self.health_check_timeout:g} s (hung?)")
                continue  # other failures (refused, NOT_FOUND) are the watch's to report
            self._set_hung(address, "")
            if not self.model.name and reply.status == health_pb2.HealthCheckResponse.SERVING:
                # The watch's GetModelInfo timed out (a busy machine): ask again, or the identity
                # (answers' provenance, `tag`'s store key, the cache key) stays unknown.
                await self._model_info(info_stub, SERVING)

    async def _watch_stream(self, address: str, channel: grpc.aio.Channel) -> None:
        """Watch until a probe asks for a reconnect now (then return, for a new channel)."""
        failures = 0
        health = health_pb2_grpc.HealthStub(channel)
        info_stub = self.spec.stub(channel)
        while True:
            try:
                call = health.Watch(health_pb2.HealthCheckRequest(service=self.health_service))
                async for reply in call:
                    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                    if status == SERVICE_UNKNOWN:
                        status, detail = NOT_SERVING, f"no {self.health_service} at this address"
                    else:
                        detail = await self._model_info(info_stub, status)
                    self._set_replica(address, status, detail)
                    failures = 0
                self._set_replica(address, UNREACHABLE, "health stream ended (server shutting down)")
            except grpc.aio.AioRpcError as exc:
                self._set_replica(address, UNREACHABLE, f"{exc.code().name}: {exc.details()}")
            failures += 1
            wake = self._reconnect_now[address]
            try:
                await asyncio.wait_for(wake.wait(), backoff_seconds(failures, 0.2, self.reconnect_max))
            except TimeoutError:
                continue
            wake.clear()
            return

    async def _model_info(self, stub: Any, status: str) -> str:
        """Refresh the model identity; return why the replica does not serve ('' if it does)."""
        try:
            info = await stub.GetModelInfo(self.spec.model_info_request(), timeout=5)
        except grpc.aio.AioRpcError:
            return ""
        if info.model.name:
            self.model, self.model_settings = info.model, dict(info.settings)
            self._resize()
        return "" if status == SERVING else f"{info.state.phase}: {info.state.reason}"

    async def probe(self, seconds: float) -> None:
        """Ask every replica that is not SERVING for its health now, on a fresh connection, rather than when its
        watch next reconnects (up to --reconnect-max-seconds after failures): a request that finds no tagger
        asks once before it is refused. Concurrent callers share one probe; each waits at most `seconds`."""
        if not self.enabled or seconds <= 0:
            return
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._probe_replicas(min(seconds, PROBE_SECONDS)))
        await asyncio.wait({self._probe}, timeout=seconds)  # a caller that gives up leaves the probe to others

    async def _probe_replicas(self, seconds: float) -> None:
        request = health_pb2.HealthCheckRequest(service=self.health_service)

        async def ask(address: str) -> None:
            options = client_channel_options(self.max_message_bytes)
            async with grpc.aio.insecure_channel(address, options=options) as channel:
                try:
                    reply = await health_pb2_grpc.HealthStub(channel).Check(request, timeout=seconds)
                except grpc.aio.AioRpcError:
                    return  # still down: the watch goes on reporting it
                if reply.status != health_pb2.HealthCheckResponse.SERVING:
                    return
                await self._model_info(self.spec.stub(channel), SERVING)
            log.info("backend replica serving (probed)", extra=fields(backend=self.name, replica=address))
            self._set_replica(address, SERVING, "")
            self._reconnect_now[address].set()
            self._reconnect_calls()

        await asyncio.gather(*(ask(r.address) for r in list(self.replicas.values()) if r.status != SERVING))

    def _reconnect_calls(self) -> None:
        """The call channel, if it is waiting out a reconnect backoff, replaced by one that connects now:
        otherwise the first calls to a replica a probe found serving would fail fast until the backoff ends."""
        if self.channel is None or self.channel.get_state() != grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            return
        assert self.target is not None
        old, self.channel = self.channel, grpc.aio.insecure_channel(self.target.channel_target,
                                                                    options=self._channel_options(True))
        self._raw_methods.clear()
        asyncio.get_running_loop().create_task(old.close(grace=None))

    def health(self) -> tagging_pb2.BackendHealth:
        """Aggregated health over the replicas, as a BackendHealth value."""
        if not self.enabled:
            return tagging_pb2.BACKEND_HEALTH_DISABLED
        statuses = [r.effective_status for r in self.replicas.values()]
        if SERVING in statuses:
            return tagging_pb2.BACKEND_HEALTH_SERVING
        if NOT_SERVING in statuses:
            return tagging_pb2.BACKEND_HEALTH_NOT_SERVING
        if statuses and all(s == UNREACHABLE for s in statuses):
            return tagging_pb2.BACKEND_HEALTH_UNREACHABLE
        if self.target and self.target.dns_name and not statuses and self.last_error:
            return tagging_pb2.BACKEND_HEALTH_UNREACHABLE
        return tagging_pb2.BACKEND_HEALTH_UNSPECIFIED

    async def until_health_known(self, seconds: float = math.inf) -> None:
        """Wait while this backend's health is not known yet (at most `seconds`, and at most the
        first-health wait); no wait once it is.

        A request that arrives before the first health answer (the orchestrator just started,
        or restarted under a client that reconnected at once) is not refused for a health nobody
        has seen yet. A reachable replica answers its Watch within milliseconds and a refused
        connect fails at once, so the wait is only long for a replica that black-holes connects
        (until the hung check or the connect timeout says so) or a DNS name with no address yet."""
        loop = asyncio.get_running_loop()
        end = loop.time() + min(seconds, self.first_health_wait)
        while self.health() == tagging_pb2.BACKEND_HEALTH_UNSPECIFIED and (left := end - loop.time()) > 0:
            try:
                await asyncio.wait_for(self.health_changed.wait(), left)
            except TimeoutError:
                return

    def describe_health(self) -> str:
        health = self.health()
        if health == tagging_pb2.BACKEND_HEALTH_DISABLED:
            return "disabled"
        if health == tagging_pb2.BACKEND_HEALTH_UNSPECIFIED:
            return "health not known yet (connecting)"
        details = sorted({r.hung or r.detail for r in self.replicas.values() if r.hung or r.detail})
        text = tagging_pb2.BackendHealth.Name(health).removeprefix("BACKEND_HEALTH_")
        return f"{text} ({'; '.join(details)})" if details and health != tagging_pb2.BACKEND_HEALTH_SERVING else text

    def usable(self) -> tuple[tagging_pb2.FallbackReason, str]:
        """(FALLBACK_REASON_UNSPECIFIED, '') if a call may go to this backend now, else why not,
        as a FallbackReason and for a person. May take the breaker's probe slot."""
        health = self.health()
        if health != tagging_pb2.BACKEND_HEALTH_SERVING:
            return HEALTH_FALLBACK[health], self.describe_health()
        if not self.breaker.allow():
            return tagging_pb2.FALLBACK_REASON_BREAKER_OPEN, self.breaker.describe()
        return tagging_pb2.FALLBACK_REASON_UNSPECIFIED, ""

    def breaker_state(self) -> tagging_pb2.BreakerState:
        """The breaker as a BreakerState value."""
        return BREAKER_STATES[self.breaker.current_state()]

    def _record_error(self, text: str) -> None:
        self.last_error, self.last_error_time, self.last_error_resolved = text, time.time(), False

    # -- calls ----------------------------------------------------------------------
    async def call(self, method: Callable[..., Any], request: Any, timeout: float, own_deadline: bool = True,
                   lane: str = INTERACTIVE) -> Any:
        """Call the backend in batcher lane `lane`; record latency, errors and the breaker's verdict.

        Only the backend's faults count against it (is_backend_fault). A call still waiting
        when the backend turns unusable (every replica hung or gone) is abandoned at once
        with UNAVAILABLE, so it fails over instead of paying the rest of its deadline.
        """
        with tracing.span(f"call {self.name}", backend=self.name, lane=lane, timeout_seconds=timeout) as span:
            try:
                return await self._call(method, request, timeout, own_deadline, lane)
            except grpc.aio.AioRpcError as exc:
                tracing.failed(span, f"{exc.code().name}: {exc.details()}")
                raise

    async def _call(self, method: Callable[..., Any], request: Any, timeout: float, own_deadline: bool,
                    lane: str) -> Any:
        started = time.monotonic()
        call = method(request, timeout=timeout, metadata=tracing.outgoing_metadata(((LANE_METADATA_KEY, lane),)))
        down = asyncio.ensure_future(self._until_unusable())
        try:
            answered = asyncio.ensure_future(call)  # awaited below, so its failure is retrieved
            done, _ = await asyncio.wait({answered, down}, return_when=asyncio.FIRST_COMPLETED)
            if down in done:
                call.cancel()
                raise grpc.aio.AioRpcError(
                    grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                    f"call abandoned after {time.monotonic() - started:.1f} s: {self.describe_health()}",
                )
            response = await answered
        except grpc.aio.AioRpcError as exc:
            if is_backend_fault(exc.code(), own_deadline):
                self.error_count += 1
                self._record_error(f"{exc.code().name}: {exc.details()}")
                self.breaker.record_failure()
            else:
                self.breaker.release_probe()
            raise
        except asyncio.CancelledError:
            call.cancel()
            self.breaker.release_probe()
            raise
        finally:
            down.cancel()
        self.latencies.append(time.monotonic() - started)
        self.ok_count += 1
        self.last_error_resolved = True
        self.breaker.record_success()
        if response.model.name:
            self.model = response.model
        return response

    async def admit(self, lane: str, seconds: float) -> float:
        """Wait for a call this backend can start on now (capacity.py), at most `seconds` and only while it
        stays usable; returns the seconds waited. Raises BackendBusy. The caller then makes one call and
        gives it back with `capacity.release()`."""
        if self.capacity.has_room(lane):
            await self.capacity.acquire(lane)  # admitted at once
            return 0.0
        started = time.monotonic()
        acquiring = asyncio.ensure_future(self.capacity.acquire(lane))
        down = asyncio.ensure_future(self._until_unusable())
        try:
            await asyncio.wait({acquiring, down}, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED)
        finally:
            down.cancel()
            if not acquiring.done():
                acquiring.cancel()
                await asyncio.gather(acquiring, return_exceptions=True)  # a grant that raced the cancel is released
        waited = time.monotonic() - started
        if not acquiring.cancelled() and acquiring.exception() is None:
            return waited
        unusable = self.health() != tagging_pb2.BACKEND_HEALTH_SERVING
        why = self.describe_health() if unusable else f"busy ({self.capacity.describe()})"
        raise BackendBusy(f"{why} after waiting {waited:.1f} s", waited, unusable)

    async def _until_unusable(self) -> None:
        while self.health() == tagging_pb2.BACKEND_HEALTH_SERVING:
            await self.health_changed.wait()

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
            serving_replicas=sum(r.effective_status == SERVING for r in self.replicas.values()),
            latency_p50_seconds=p50,
            latency_p95_seconds=p95,
            ok_count=self.ok_count,
            error_count=self.error_count,
            last_error=self.last_error,
            model=self.model,
            last_error_resolved=bool(self.last_error) and self.last_error_resolved,
            calls=self.capacity.running,
            capacity=self.capacity.capacity,
            waiting=self.capacity.queued,
        )
        if self.last_error_time is not None:
            status.last_error_time.FromNanoseconds(int(self.last_error_time * 1e9))
        return status
