"""The result cache: an identical request is answered from a store instead of the models.

Identical means the same key (result_key): the image bytes' SHA-256, the request's options that change
the answer, and the identities of every model that would contribute to the answer now (the primary
tagger and the view-type provider that would answer: name, revision, weights SHA-256, dtype, and the
settings each service reports in GetModelInfo).
So a model swap misses by construction: the orchestrator learns the new identity from the backend's
health watch (GetModelInfo) and looks under another key.

Only complete answers of the primary tagger are kept and served: a fallback answer (RAM++ while
Florence-2 was down) or a degraded one (no view type) is never stored, and while the primary or every
view-type provider is not SERVING (or the primary's breaker is not closed) the cache is not consulted at
all, because the models that would answer are not the ones in any key. See docs/cache.md.

Identical requests in flight at once are single-flight: the first calls the models, the others wait
for its answer (counted as shared) and call the models themselves only if it could not be kept.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from prometheus_client import Counter

from archivetag.runtime.logs import fields
from archivetag.v1 import common_pb2, tagging_pb2
from archivetag_orchestrator.backends import Backend
from archivetag_orchestrator.routing import Router

log = logging.getLogger("archivetag.orchestrator.cache")

LOOKUPS = Counter(
    "archivetag_cache_lookups_total",
    "Result cache lookups: hit, miss, shared (waited for an identical request in flight), bypassed (the "
    "request opted out), skipped (the models that would answer are not the cached ones' kind: failover).",
    ["result"],
)
EVICTIONS = Counter("archivetag_cache_evictions_total", "Answers evicted from the SQLite cache to keep it bounded.")
ERRORS = Counter("archivetag_cache_errors_total", "Failed cache reads and writes (the image was tagged uncached).",
                 ["operation"])

# Bump when the key's recipe or the stored format changes: old entries then simply miss.
KEY_VERSION = b"archivetag-result/1\0"
# TagImageRequest fields that do not change the answer, left out of the key: the image (its SHA-256
# stands for it), the context (taggers echo it and never use it), the opt-out itself and the overflow
# policy (only the primary's complete answers are kept, whatever the policy). Every other field,
# including ones added later, is part of the key.
NOT_IN_KEY = ("image", "context", "bypass_cache", "overflow")


class Store(Protocol):
    """Where answers live: key → serialized TagImageResponse."""

    name: str

    async def get(self, key: bytes) -> bytes | None: ...

    async def put(self, key: bytes, value: bytes) -> None: ...

    async def usage(self) -> tuple[int, int, int]:
        """(entries, bytes, evictions)."""
        ...

    async def close(self) -> None: ...


def options_bytes(request: tagging_pb2.TagImageRequest) -> bytes:
    """The request's answer-changing options, deterministically serialized."""
    options = tagging_pb2.TagImageRequest()
    options.CopyFrom(request)
    for name in NOT_IN_KEY:
        options.ClearField(name)
    return options.SerializeToString(deterministic=True)


def identity_bytes(model: common_pb2.ModelIdentity) -> bytes:
    """A model identity without the device: the same weights answer alike on every replica."""
    identity = common_pb2.ModelIdentity()
    identity.CopyFrom(model)
    identity.ClearField("device")
    return identity.SerializeToString(deterministic=True)


def backend_fingerprint(backend: Backend) -> bytes:
    settings = "\n".join(f"{k}={v}" for k, v in sorted(backend.model_settings.items())).encode()
    return identity_bytes(backend.model) + b"\0" + settings


def result_key(image_sha256: bytes, request: tagging_pb2.TagImageRequest, backends: list[Backend]) -> bytes:
    digest = hashlib.sha256(KEY_VERSION)
    for part in (image_sha256, options_bytes(request), *map(backend_fingerprint, backends)):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


class ResultCache:
    """Answers from `store` (None: the cache is off) for the router's primary tagger and view-type provider."""

    def __init__(self, store: Store | None, router: Router):
        self.store = store
        self.router = router
        self.primary = router.taggers[0]
        self.in_flight: dict[bytes, asyncio.Future] = {}
        self.hits = self.misses = self.shared = 0
        self.last_error = ""

    def answering(self) -> list[Backend] | None:
        """The backends that would answer now, if their answer may come from the cache; else None."""
        view = self.router.view_type_provider()
        if view is None:
            return None
        for backend in (self.primary, view):
            if backend.health() != tagging_pb2.BACKEND_HEALTH_SERVING or not backend.model.name:
                return None
        if self.primary.breaker_state() != tagging_pb2.BREAKER_STATE_CLOSED:
            return None
        return [self.primary, view]

    async def answer(
        self, request: tagging_pb2.TagImageRequest, image: bytes,
        compute: Callable[[], Awaitable[tagging_pb2.TagImageResponse]],
    ) -> tagging_pb2.TagImageResponse:
        """The cached answer to the request, or `compute()`'s (stored when it may be kept)."""
        if self.store is None:
            return await compute()
        if request.bypass_cache:
            LOOKUPS.labels("bypassed").inc()
            return await compute()
        backends = self.answering()
        if backends is None:
            LOOKUPS.labels("skipped").inc()
            return await compute()
        # Off the event loop: tens of milliseconds for a photo of tens of megabytes (hashlib releases the GIL).
        image_sha256 = await asyncio.to_thread(lambda: hashlib.sha256(image).digest())
        key = result_key(image_sha256, request, backends)
        while (flight := self.in_flight.get(key)) is not None:
            shared = await asyncio.shield(flight)
            if shared is not None:
                self.shared += 1
                LOOKUPS.labels("shared").inc()
                return self._cached(shared, request)
            # The first one's answer could not be kept: another waiter may lead now, else this one does.
        flight = self.in_flight[key] = asyncio.get_running_loop().create_future()
        kept = None
        try:
            kept = await self._get(key)
            if kept is not None:
                self.hits += 1
                LOOKUPS.labels("hit").inc()
                return self._cached(kept, request)
            self.misses += 1
            LOOKUPS.labels("miss").inc()
            response = await compute()
            if self._may_keep(response, backends):
                stored = tagging_pb2.TagImageResponse()
                stored.CopyFrom(response)
                stored.ClearField("context")  # echoed per request, never part of the answer
                kept = stored.SerializeToString()
                await self._put(key, kept)
            return response
        finally:
            del self.in_flight[key]
            flight.set_result(kept)

    def _may_keep(self, response: tagging_pb2.TagImageResponse, backends: list[Backend]) -> bool:
        """A complete answer of the primary, from the very models the key names (not a replica that
        changed model meanwhile)."""
        if response.tagger != self.primary.name or response.degraded:
            return False
        answered = {m.family: identity_bytes(m) for m in response.models}
        return all(answered.get(b.name) == identity_bytes(b.model) for b in backends)

    @staticmethod
    def _cached(stored: bytes, request: tagging_pb2.TagImageRequest) -> tagging_pb2.TagImageResponse:
        response = tagging_pb2.TagImageResponse.FromString(stored)
        response.cached = True
        response.context.CopyFrom(request.context)
        return response

    async def _get(self, key: bytes) -> bytes | None:
        assert self.store is not None  # answer() returns first without a store
        try:
            return await self.store.get(key)
        except Exception as exc:  # noqa: BLE001 - a broken store costs a model call, never the answer
            self._failed("get", exc)
            return None

    async def _put(self, key: bytes, value: bytes) -> None:
        assert self.store is not None  # as _get
        try:
            await self.store.put(key, value)
        except Exception as exc:  # noqa: BLE001 - as _get
            self._failed("put", exc)

    def _failed(self, operation: str, exc: Exception) -> None:
        ERRORS.labels(operation).inc()
        assert self.store is not None  # as _get
        self.last_error = f"{self.store.name} {operation}: {type(exc).__name__}: {exc}"
        log.warning("result cache failed", extra=fields(operation=operation, error=self.last_error))

    async def status(self) -> tagging_pb2.CacheStatus:
        status = tagging_pb2.CacheStatus(backend=self.store.name if self.store else "off", hits=self.hits,
                                         misses=self.misses, shared=self.shared, last_error=self.last_error)
        if self.store is not None:
            try:
                status.entries, status.bytes, status.evictions = await self.store.usage()
            except Exception as exc:  # noqa: BLE001 - status reports the failure instead
                status.last_error = f"{self.store.name} usage: {type(exc).__name__}: {exc}"
        return status

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()


def open_store(settings) -> Store | None:
    """The store the settings name (imported only when chosen: Redis needs its client)."""
    if settings.cache == "sqlite":
        from archivetag_orchestrator.cache_sqlite import SqliteStore

        return SqliteStore(settings.cache_path, int(settings.cache_max_mb * 1024 * 1024))
    if settings.cache == "redis":
        from archivetag_orchestrator.cache_redis import RedisStore

        return RedisStore(settings.cache_redis_url, settings.cache_ttl_seconds)
    return None
