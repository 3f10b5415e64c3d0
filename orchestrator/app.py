"""The orchestrator as a server: backends, router, fair scheduler, auth, on the shared bootstrap."""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from archivetag.orchestrator.auth import AuthInterceptor, TokenAuthenticator, TokenError, is_loopback_host, load_tokens
from archivetag.orchestrator.backends import Backend, TargetError
from archivetag.orchestrator.breaker import CircuitBreaker
from archivetag.orchestrator.cache import ResultCache, open_store
from archivetag.orchestrator.fairness import MIB, ByteBudget, FairScheduler, parse_weights
from archivetag.orchestrator.routing import Router
from archivetag.orchestrator.service import TaggingServicer
from archivetag.runtime.logs import fields
from archivetag.runtime.channels import message_limit_bytes
from archivetag.runtime.registry import MODEL_NAMES, MODELS, TAGGER_NAMES, TAGGING_SERVICE, ServerSpec, view_type_model
from archivetag.v1 import tagging_pb2_grpc

log = logging.getLogger("archivetag.orchestrator")


class OrchestratorApp:
    name = "orchestrator"
    service_names = [TAGGING_SERVICE]

    def __init__(self, settings):
        self.settings = settings
        unknown = set(settings.disabled_backends) - set(MODEL_NAMES)
        if unknown:
            raise SystemExit(f"--disabled-backends: unknown backend(s) {sorted(unknown)}; use {', '.join(MODEL_NAMES)}")
        try:
            self.backends = {spec.name: self._backend(spec) for spec in MODELS}
        except TargetError as exc:
            raise SystemExit(f"bad backend target: {exc}") from None
        # The primary tagger first, then the other taggers in registry order.
        taggers = [settings.primary_tagger, *(n for n in TAGGER_NAMES if n != settings.primary_tagger)]
        for position, name in enumerate(taggers):
            self.backends[name].role = "primary tagger" if position == 0 else "fallback tagger"
        self.router = Router(
            [self.backends[name] for name in taggers], self.backends[view_type_model().name],
            settings.fallback_reserve_seconds,
        )
        try:
            weights = parse_weights(settings.client_weights)
        except ValueError as exc:
            raise SystemExit(f"bad --client-weights: {exc}") from None
        self.scheduler = FairScheduler(settings.max_in_flight, settings.client_max_in_flight, settings.client_max_queued,
                                       weights=weights, interactive_reserve=settings.interactive_reserve)
        self.budget = ByteBudget(settings.max_mb_in_flight * MIB, settings.client_max_mb_in_flight * MIB)
        try:
            store = open_store(settings)
        except Exception as exc:  # noqa: BLE001 - a cache that cannot open is a setting to fix, said at start
            raise SystemExit(f"cannot open the result cache (--cache {settings.cache}): {exc}") from None
        self.cache = ResultCache(store, self.router.taggers[0], self.router.siglip)
        self.servicer: TaggingServicer | None = None
        self.interceptors = [AuthInterceptor(self._authenticator())]
        self.health: health_aio.HealthServicer | None = None

    def _authenticator(self) -> TokenAuthenticator | None:
        s = self.settings
        if not s.auth:
            if is_loopback_host(s.host):
                log.warning("client authentication is off: every local caller is trusted")
            else:
                log.warning("client authentication is off on a network address: every caller that can reach "
                            "this port is trusted", extra=fields(host=s.host))
            return None
        try:
            tokens = load_tokens(s.api_tokens_file, s.api_tokens)
        except TokenError as exc:
            raise SystemExit(str(exc)) from None
        if not tokens:
            raise SystemExit(
                "auth is on but no client tokens are configured: set --api-tokens-file / ARCHIVETAG_API_TOKENS_FILE "
                "or ARCHIVETAG_API_TOKENS, or turn auth off with --no-auth (ARCHIVETAG_AUTH=false) on a "
                "single-user machine"
            )
        log.info("client authentication on", extra=fields(clients=sorted(set(tokens.values()))))
        return TokenAuthenticator(tokens)

    def _backend(self, spec: ServerSpec) -> Backend:
        s = self.settings
        return Backend(
            spec,
            getattr(s, f"{spec.name}_target"),
            deadline=getattr(s, f"{spec.name}_deadline_seconds"),
            enabled=spec.name not in s.disabled_backends,
            breaker=CircuitBreaker(s.breaker_failures, s.breaker_cooldown_seconds),
            reconnect_max=s.reconnect_max_seconds,
            resolve_every=s.resolve_seconds,
            max_message_bytes=message_limit_bytes(s.max_image_bytes),
            health_check_every=s.health_check_seconds,
            health_check_timeout=s.health_check_timeout_seconds,
            first_health_wait=s.first_health_wait_seconds,
        )

    def register(self, server: grpc.aio.Server, health: health_aio.HealthServicer) -> None:
        self.health = health
        self.servicer = TaggingServicer(self.router, self.scheduler, self.budget, list(self.backends.values()),
                                        self.settings, self.cache)
        tagging_pb2_grpc.add_TaggingServiceServicer_to_server(self.servicer, server)

    async def start(self) -> None:
        for backend in self.backends.values():
            await backend.start()
        # SERVING once every backend's health is known (or the first-health wait is over), so
        # callers who wait for it route on real health; calls that come sooner wait per request.
        await asyncio.gather(*(b.until_health_known() for b in self.backends.values()))
        await self.health.set(TAGGING_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        log.info("orchestrator ready", extra=fields(
            backends={n: b.describe_health() for n, b in self.backends.items()}))

    async def drain(self) -> None:
        if self.servicer is not None:
            self.servicer.drain()

    async def close(self) -> None:
        for backend in self.backends.values():
            await backend.stop()
        await self.cache.close()


def create_app(settings) -> OrchestratorApp:
    return OrchestratorApp(settings)
