"""The orchestrator as a server: backends, router, fair scheduler, auth, on the shared bootstrap."""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from archivetag.runtime import registry
from archivetag.runtime.channels import is_loopback_host, message_limit_bytes
from archivetag.runtime.logs import fields
from archivetag.runtime.specs import TAGGER, TAGGING_SERVICE, VIEW_TYPE, ServerSpec
from archivetag.v1 import tagging_pb2_grpc
from archivetag_orchestrator.auth import AuthInterceptor, TokenAuthenticator, TokenError, load_tokens, metrics_names
from archivetag_orchestrator.backends import Backend, TargetError
from archivetag_orchestrator.breaker import CircuitBreaker
from archivetag_orchestrator.cache import ResultCache, open_store
from archivetag_orchestrator.fairness import MIB, ByteBudget, FairScheduler, parse_weights
from archivetag_orchestrator.routing import Router
from archivetag_orchestrator.service import TaggingServicer, parse_client_overflow

log = logging.getLogger("archivetag.orchestrator")


class OrchestratorApp:
    name = "orchestrator"
    service_names = [TAGGING_SERVICE]
    answers_trace_id = True  # with tracing on, each answer's metadata carries its trace id (runtime/tracing.py)

    def __init__(self, settings):
        self.settings = settings
        models = registry.models()
        names = [spec.name for spec in models]
        unknown = set(settings.disabled_backends) - set(names)
        if unknown:
            raise SystemExit(f"--disabled-backends: unknown backend(s) {sorted(unknown)}; use {', '.join(names)}")
        try:
            self.backends = {spec.name: self._backend(spec) for spec in models}
        except TargetError as exc:
            raise SystemExit(f"bad backend target: {exc}") from None
        # Routing is data: the taggers in the configured order (primary first), and the view-type providers.
        taggers = tagger_order(settings.taggers)
        for position, name in enumerate(taggers):
            self.backends[name].role = "primary tagger" if position == 0 else "fallback tagger"
        view_types = [self.backends[spec.name] for spec in registry.with_capability(VIEW_TYPE)]
        self.router = Router([self.backends[name] for name in taggers], view_types, settings.fallback_reserve_seconds)
        try:
            weights = parse_weights(settings.client_weights)
        except ValueError as exc:
            raise SystemExit(f"bad --client-weights: {exc}") from None
        try:
            parse_client_overflow(settings.client_overflow)
        except ValueError as exc:
            raise SystemExit(f"bad --client-overflow: {exc}") from None
        self.budget = ByteBudget(settings.max_mb_in_flight * MIB, settings.client_max_mb_in_flight * MIB)
        try:
            store = open_store(settings)
        except Exception as exc:  # noqa: BLE001 - a cache that cannot open is a setting to fix, said at start
            raise SystemExit(f"cannot open the result cache (--cache {settings.cache}): {exc}") from None
        self.cache = ResultCache(store, self.router, shared=settings.cache_scope == "shared")
        self.servicer: TaggingServicer | None = None
        tokens = self._tokens()
        self.interceptors = [AuthInterceptor(TokenAuthenticator(tokens) if tokens else None)]
        open_metrics = (bool(settings.metrics_port) and not settings.metrics_token_file
                        and not is_loopback_host(settings.host))
        self.scheduler = FairScheduler(settings.max_in_flight, settings.client_max_in_flight,
                                       settings.client_max_queued, weights=weights,
                                       interactive_reserve=settings.interactive_reserve,
                                       client_label=metrics_names(tokens, open_metrics))
        self.health: health_aio.HealthServicer | None = None
        self._readiness: asyncio.Task | None = None

    def _tokens(self) -> dict[str, str]:
        """{token: client name}; empty with auth off."""
        s = self.settings
        if not s.auth:
            if is_loopback_host(s.host):
                log.warning("client authentication is off: every local caller is trusted")
            else:
                log.warning("client authentication is off on a network address: every caller that can reach "
                            "this port is trusted", extra=fields(host=s.host))
            return {}
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
        return tokens

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
        assert self.health is not None, "register() first"
        for backend in self.backends.values():
            await backend.start()
        # SERVING once every backend's health is known (or the first-health wait is over), so
        # callers who wait for it route on real health; calls that come sooner wait per request.
        await asyncio.gather(*(b.until_health_known() for b in self.backends.values()))
        self._readiness = asyncio.get_running_loop().create_task(self._follow_taggers(), name="readiness")

    async def _follow_taggers(self) -> None:
        """The orchestrator's readiness (health of archivetag.v1.TaggingService): SERVING while a tagger can
        answer (one SERVING by its health), NOT_SERVING while none can. A probe of the process ("") says only
        that it is alive. docs/operations.md says how Kubernetes and compose use each."""
        assert self.health is not None, "register() first"
        taggers = [b for b in self.router.taggers if b.enabled]
        ready: bool | None = None
        while True:
            changed = [asyncio.ensure_future(b.health_changed.wait()) for b in taggers]
            now = self.router.a_tagger_serving()
            if now != ready:
                ready = now
                await self.health.set(TAGGING_SERVICE, health_pb2.HealthCheckResponse.SERVING if ready
                                      else health_pb2.HealthCheckResponse.NOT_SERVING)
                log.info("orchestrator ready" if ready else "orchestrator not ready: no tagger can answer",
                         extra=fields(backends={n: b.describe_health() for n, b in self.backends.items()}))
            if not changed:
                return  # every tagger disabled: never ready (asyncio.wait refuses an empty set)
            try:
                await asyncio.wait(changed, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in changed:
                    waiter.cancel()

    async def drain(self) -> None:
        if self._readiness is not None:
            self._readiness.cancel()  # the bootstrap has turned every service NOT_SERVING for the shutdown
        if self.servicer is not None:
            self.servicer.drain()

    async def close(self) -> None:
        for backend in self.backends.values():
            await backend.stop()
        await self.cache.close()


def tagger_order(names: list[str]) -> list[str]:
    """--taggers checked: installed taggers, each once, at least one."""
    taggers = [spec.name for spec in registry.with_capability(TAGGER)]
    wrong = [name for name in names if name not in taggers]
    if wrong or not names or len(set(names)) != len(names):
        raise SystemExit(f"--taggers {','.join(names)}: give installed taggers ({', '.join(taggers)}), each once, "
                         "the primary first")
    return names


def create_app(settings) -> OrchestratorApp:
    return OrchestratorApp(settings)
