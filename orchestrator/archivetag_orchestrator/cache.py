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

Per client by default: the key includes the client's name, so a client never learns from the cache
(a hit, its timing, a request in flight) that another client sent the same photo. Sharing between
clients is the operator's opt-in (--cache-scope shared); a shared answer then carries this request's
own time and no timings of another client's request.

A failing store costs a model call within a bounded time, never an answer: each store call has
STORE_SECONDS, a stored answer that cannot be read is dropped and recomputed, and errors are counted.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from prometheus_client import Counter

from archivetag.runtime import tracing
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
KEY_VERSION = b"archivetag-result/2\0"
# Longest a lookup or a write may take: beyond it (a store that hangs, a SQLite file another process holds
# locked) the image is tagged by the models and the error counted.
STORE_SECONDS = 1.0
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

    async def delete(self, key: bytes) -> None: ...

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


def result_key(image_sha256: bytes, request: tagging_pb2.TagImageRequest, backends: list[Backend],
               scope: str = "") -> bytes:
    """scope: the client's name when answers are per client; '' when they are shared."""
    digest = hashlib.sha256(KEY_VERSION)
    for part in (scope.encode(), image_sha256, options_bytes(request), *map(backend_fingerprint, backends)):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


class ResultCache:
    """Answers from `store` (None: the cache is off) for the router's primary tagger and view-type provider."""

    def __init__(self, store: Store | None, router: Router, shared: bool = False):
        self.store = store
        self.router = router
        self.shared_between_clients = shared
        self.primary = router.taggers[0]
        self.in_flight: dict[bytes, asyncio.Future] = {}
        self.counts: dict[str, list[int]] = {}  # client -> [hits, misses, shared]: each client sees its own
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
        compute: Callable[[], Awaitable[tagging_pb2.TagImageResponse]], client: str = "",
    ) -> tagging_pb2.TagImageResponse:
        """The cached answer to the client's request, or `compute()`'s (stored when it may be kept)."""
        if self.store is None:
            return await compute()
        if request.bypass_cache:
            LOOKUPS.labels("bypassed").inc()
            return await compute()
        backends = self.answering()
        if backends is None:
            LOOKUPS.labels("skipped").inc()
            return await compute()
        counts = self.counts.setdefault(client, [0, 0, 0])
        # Off the event loop: tens of milliseconds for a photo of tens of megabytes (hashlib releases the GIL).
        image_sha256 = await asyncio.to_thread(lambda: hashlib.sha256(image).digest())
        key = result_key(image_sha256, request, backends, "" if self.shared_between_clients else client)
        while (flight := self.in_flight.get(key)) is not None:
            shared = await asyncio.shield(flight)
            if shared is not None:
                counts[2] += 1
                LOOKUPS.labels("shared").inc()
                return self._cached(shared, request, client)
            # The first one's answer could not be kept: another waiter may lead now, else this one does.
        flight = self.in_flight[key] = asyncio.get_running_loop().create_future()
        kept = None
        try:
            with tracing.span("cache lookup", shared=self.shared_between_clients):
                stored = await self._get(key)
            if stored is not None:
                try:
                    answer = self._cached(stored, request, client)
                except Exception as exc:  # noqa: BLE001 - a rotted answer is dropped and made again, never served
                    self._failed("get", exc)
                    await self._delete(key)
                else:
                    kept = stored
                    counts[0] += 1
                    LOOKUPS.labels("hit").inc()
                    return answer
            counts[1] += 1
            LOOKUPS.labels("miss").inc()
            response = await compute()
            if self._may_keep(response, backends):
                keeping = tagging_pb2.TagImageResponse()
                keeping.CopyFrom(response)
                keeping.ClearField("context")  # echoed per request, never part of the answer
                kept = _pack(client, keeping.SerializeToString())
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
    def _cached(stored: bytes, request: tagging_pb2.TagImageRequest, client: str) -> tagging_pb2.TagImageResponse:
        """The stored answer for this request; ValueError (or DecodeError) when it cannot be read."""
        owner, serialized = _unpack(stored)
        response = tagging_pb2.TagImageResponse.FromString(serialized)
        response.cached = True
        response.context.CopyFrom(request.context)
        if owner != client:  # shared between clients: nothing of another client's request
            response.ClearField("timings")
            response.tagged_at.GetCurrentTime()
        return response

    async def _get(self, key: bytes) -> bytes | None:
        assert self.store is not None
        try:
            return await asyncio.wait_for(self.store.get(key), STORE_SECONDS)
        except Exception as exc:  # noqa: BLE001 - a broken store costs a model call, never the answer
            self._failed("get", exc)
            return None

    async def _put(self, key: bytes, value: bytes) -> None:
        assert self.store is not None
        try:
            await asyncio.wait_for(self.store.put(key, value), STORE_SECONDS)
        except Exception as exc:  # noqa: BLE001 - as _get
            self._failed("put", exc)

    async def _delete(self, key: bytes) -> None:
        assert self.store is not None
        try:
            await asyncio.wait_for(self.store.delete(key), STORE_SECONDS)
        except Exception as exc:  # noqa: BLE001 - as _get
            self._failed("delete", exc)

    def _failed(self, operation: str, exc: Exception) -> None:
        ERRORS.labels(operation).inc()
        assert self.store is not None  # as _get
        what = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
        self.last_error = f"{self.store.name} {operation}: {what}"
        log.warning("result cache failed", extra=fields(operation=operation, error=self.last_error))

    async def status(self, client: str = "") -> tagging_pb2.CacheStatus:
        """The cache as `client` sees it: its own hits, misses and shared answers; the store's size."""
        hits, misses, shared = self.counts.get(client, (0, 0, 0))
        status = tagging_pb2.CacheStatus(backend=self.store.name if self.store else "off", hits=hits,
                                         misses=misses, shared=shared, last_error=self.last_error)
        if self.store is not None:
            try:
                status.entries, status.bytes, status.evictions = await self.store.usage()
            except Exception as exc:  # noqa: BLE001 - status reports the failure instead
                status.last_error = f"{self.store.name} usage: {type(exc).__name__}: {exc}"
        return status

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()


def _pack(owner: str, serialized: bytes) -> bytes:
    """A stored answer: the client whose request made it, then the answer."""
    name = owner.encode()
    return len(name).to_bytes(2, "big") + name + serialized


def _unpack(stored: bytes) -> tuple[str, bytes]:
    length = int.from_bytes(stored[:2], "big")
    if len(stored) < 2 + length:
        raise ValueError(f"a stored answer of {len(stored)} bytes is cut short")
    return stored[2:2 + length].decode(), stored[2 + length:]


def open_store(settings) -> Store | None:
    """The store the settings name (imported only when chosen: Redis needs its client)."""
    if settings.cache == "sqlite":
        from archivetag_orchestrator.cache_sqlite import SqliteStore

        return SqliteStore(settings.cache_path, int(settings.cache_max_mb * 1024 * 1024))
    if settings.cache == "redis":
        from archivetag_orchestrator.cache_redis import RedisStore

        return RedisStore(settings.cache_redis_url, settings.cache_ttl_seconds)
    return None
