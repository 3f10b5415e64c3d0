"""The Python client of TaggingService (sync and async), shared by `tag`, `status` and `demo`.

    with TaggingClient("127.0.0.1:50051", token="...") as client:
        result = client.tag(Path("photo.jpg").read_bytes(), max_tags=10)
        text = client.tag(data, ocr=common_pb2.OCR_MODE_TEXT).ocr.text  # the text in the photo
        found = client.embed_text(["staircase with graffiti"])  # SigLIP text embeddings (docs/search.md)

Errors are raised as ClientError with the contract's typed reason (archivetag.v1.ErrorReason),
its metadata and the bad field. Only what the contract calls retryable is retried:
UNAVAILABLE, and RESOURCE_EXHAUSTED that the server explains ("retry later").
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import grpc
from opentelemetry import propagate

from archivetag.runtime import health_client
from archivetag.runtime.backoff import backoff_seconds
from archivetag.runtime.channels import message_limits
from archivetag.runtime.errors import REASON_PREFIX, read_call_error
from archivetag.runtime.settings import Option, OptionGroup, parse_path
from archivetag.runtime.specs import TAGGING_SERVICE
from archivetag.v1 import common_pb2, errors_pb2, tagging_pb2, tagging_pb2_grpc, view_type_pb2

CLIENT_OPTIONS = OptionGroup(
    "client",
    (
        Option("target", "127.0.0.1:50051", "The orchestrator, host:port."),
        Option("token", "", "Bearer token for the orchestrator (empty when its auth is off)."),
        Option("tls_ca", None, "PEM CA bundle: connect with TLS and verify the server against it.", parse_path,
               metavar="FILE"),
        Option("tls_client_cert", None, "PEM client certificate, when the server asks for one.", parse_path,
               metavar="FILE"),
        Option("tls_client_key", None, "PEM key of --tls-client-cert.", parse_path, metavar="FILE"),
    ),
)

# No client-side size limit: the server's image limit answers with a clear INVALID_ARGUMENT.
CHANNEL_OPTIONS = message_limits(-1)
DEFAULT_DEADLINE = 120.0
DEFAULT_MAX_IMAGE_BYTES = 32 * 1024 * 1024  # the orchestrator's default (ARCHIVETAG_MAX_IMAGE_BYTES)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4  # the first included; 1: no retry
    initial_backoff: float = 0.2  # seconds, doubling (with jitter) up to max_backoff
    max_backoff: float = 5.0

    def backoff(self, attempt: int) -> float:
        return backoff_seconds(attempt, self.initial_backoff, self.max_backoff)


NO_RETRY = RetryPolicy(max_attempts=1)


class ClientError(Exception):
    """A failed call or stream item. Branch on `reason` (and `code`), never on the message."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: int, metadata: dict[str, str], field: str = ""):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.reason = reason  # archivetag.v1.ErrorReason value; UNSPECIFIED: the gRPC library failed
        self.metadata = metadata
        self.field = field

    @property
    def reason_name(self) -> str:
        """E.g. "IMAGE_CORRUPT" (as in ErrorInfo.reason)."""
        return errors_pb2.ErrorReason.Name(self.reason).removeprefix(REASON_PREFIX)

    @property
    def retryable(self) -> bool:
        """UNAVAILABLE; RESOURCE_EXHAUSTED that the server explains (without a reason it is the library refusing
        an oversized message: the same request fails again); and INTERNAL without a reason, which is not an
        archivetag server's (each of its errors carries one) but the transport's: a connection reset under a
        call or stream (e.g. the orchestrator stopping), after which the same call may well succeed."""
        unexplained = self.reason == errors_pb2.ERROR_REASON_UNSPECIFIED
        return (self.code == grpc.StatusCode.UNAVAILABLE
                or (self.code == grpc.StatusCode.RESOURCE_EXHAUSTED and not unexplained)
                or (self.code == grpc.StatusCode.INTERNAL and unexplained))

    @classmethod
    def from_call(cls, call: grpc.RpcError) -> ClientError:
        error = read_call_error(call)
        names = errors_pb2.ErrorReason.keys()
        full_name = REASON_PREFIX + error.reason
        reason = errors_pb2.ErrorReason.Value(full_name) if full_name in names else 0
        return cls(error.code, error.message, reason, error.metadata, error.field)

    @classmethod
    def from_item(cls, error: tagging_pb2.ItemError) -> ClientError:
        code = next((c for c in grpc.StatusCode if c.value[0] == error.code), grpc.StatusCode.UNKNOWN)
        return cls(code, error.message, error.reason, dict(error.metadata), error.field)


@dataclass
class TagItem:
    """One image of tag_many; `id` must be unique in the call ('' → numbered "0", "1", ...)."""

    image: bytes | str  # the file's bytes, or a path/file:// URI the server may read (allowed roots)
    id: str = ""
    max_tags: int = 0
    threshold: float | None = None
    include_embedding: bool = False
    context: dict[str, str] = field(default_factory=dict)
    ocr: int = common_pb2.OCR_MODE_UNSPECIFIED  # an archivetag.v1.OcrMode: read the text in the photo too
    bypass_cache: bool = False  # skip the orchestrator's result cache (docs/cache.md)
    overflow: int = tagging_pb2.OVERFLOW_POLICY_UNSPECIFIED  # an OverflowPolicy: wait for a busy primary, or not
    labels: view_type_pb2.LabelSet | None = None  # score the photo against these labels too (docs/search.md)


@dataclass
class ItemResult:
    """The answer to one tag_many item: its result, or its own error."""

    id: str
    item: TagItem
    response: tagging_pb2.TagImagesResponse  # the answer as the server sent it
    result: tagging_pb2.TagImageResponse | None = None
    error: ClientError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def tag_request(image: bytes | str | Path, max_tags: int = 0, threshold: float | None = None,
                include_embedding: bool = False, context: dict[str, str] | None = None,
                ocr: int = common_pb2.OCR_MODE_UNSPECIFIED, bypass_cache: bool = False,
                overflow: int = tagging_pb2.OVERFLOW_POLICY_UNSPECIFIED,
                labels: view_type_pb2.LabelSet | None = None) -> tagging_pb2.TagImageRequest:
    request = tagging_pb2.TagImageRequest(
        max_tags=max_tags, include_embedding=include_embedding, context=common_pb2.ImageContext(**(context or {})),
        # protoc's .pyi types an enum field as its enum class; any int is a valid (open) proto3 enum value
        ocr=cast(common_pb2.OcrMode, ocr), bypass_cache=bypass_cache,
        overflow=cast(tagging_pb2.OverflowPolicy, overflow),
    )
    if isinstance(image, (bytes, bytearray, memoryview)):
        request.image.data = bytes(image)
    else:
        request.image.uri = str(image)
    if threshold is not None:
        request.threshold = threshold
    if labels is not None:
        request.labels.CopyFrom(labels)
    return request


def label_set(labels: dict[str, list[str]] | list[str], template: str = "") -> view_type_pb2.LabelSet:
    """A LabelSet from {"name": ["prompt", ...]} (an empty list: the template) or a list of names."""
    pairs = labels.items() if isinstance(labels, dict) else ((name, []) for name in labels)
    return view_type_pb2.LabelSet(labels=[view_type_pb2.Label(name=name, prompts=list(prompts))
                                          for name, prompts in pairs], template=template)


def _item_request(item: TagItem) -> tagging_pb2.TagImagesRequest:
    request = tag_request(item.image, item.max_tags, item.threshold, item.include_embedding, item.context, item.ocr,
                          item.bypass_cache, item.overflow, item.labels)
    return tagging_pb2.TagImagesRequest(id=item.id, request=request)


def _answer(item: TagItem, response: tagging_pb2.TagImagesResponse) -> ItemResult:
    if response.WhichOneof("outcome") == "result":
        return ItemResult(response.id, item, response, result=response.result)
    return ItemResult(response.id, item, response, error=ClientError.from_item(response.error))


class _Ids:
    """Id bookkeeping of one tag_many call: numbers items without an id, remembers the unanswered."""

    def __init__(self):
        self.unanswered: dict[str, TagItem] = {}
        self.used: set[str] = set()
        self._next = 0

    def add(self, item: TagItem) -> TagItem:
        if item.id in self.used:
            raise ValueError(f"tag_many: item id {item.id!r} is used twice; ids must be unique within a call")
        if not item.id:
            while str(self._next) in self.used:
                self._next += 1
            item.id = str(self._next)
            self._next += 1
        self.used.add(item.id)
        self.unanswered[item.id] = item
        return item

    def ended_early(self) -> ClientError:
        """The stream closed with items unanswered: like a lost connection, retryable."""
        return ClientError(grpc.StatusCode.UNAVAILABLE, f"stream ended with {len(self.unanswered)} item(s) unanswered",
                           errors_pb2.ERROR_REASON_UNSPECIFIED, {})


def _time_left(deadline_at: float | None) -> float | None:
    return None if deadline_at is None else max(0.001, deadline_at - time.monotonic())


def _credentials(tls_ca: Path | None, cert: Path | None, key: Path | None) -> grpc.ChannelCredentials | None:
    if not tls_ca:
        return None
    return grpc.ssl_channel_credentials(tls_ca.read_bytes(), key.read_bytes() if key else None,
                                        cert.read_bytes() if cert else None)


class _Base:
    def __init__(self, target: str = "127.0.0.1:50051", token: str = "", *, deadline: float = DEFAULT_DEADLINE,
                 retry: RetryPolicy = RetryPolicy(), tls_ca: Path | None = None, tls_client_cert: Path | None = None,
                 tls_client_key: Path | None = None, max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES):
        """max_image_bytes: a larger image is refused before sending (INVALID_ARGUMENT IMAGE_TOO_LARGE), as the
        orchestrator would refuse it; set it as the server's ARCHIVETAG_MAX_IMAGE_BYTES."""
        self.target = target
        self.max_image_bytes = max_image_bytes
        self._auth = (("authorization", f"Bearer {token}"),) if token else ()
        self.deadline = deadline
        self.retry = retry
        self._credentials = _credentials(tls_ca, tls_client_cert, tls_client_key)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Each call's metadata: the token, and the caller's OpenTelemetry trace context when it has one (an app
        that traces gets the photo's spans in its own trace; without OpenTelemetry configured, nothing)."""
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return (*self._auth, *carrier.items())

    @classmethod
    def from_settings(cls, settings, **kwargs):
        """From the CLIENT_OPTIONS settings (--target, --token, --tls-*)."""
        return cls(settings.target, settings.token, tls_ca=settings.tls_ca, tls_client_cert=settings.tls_client_cert,
                   tls_client_key=settings.tls_client_key, **kwargs)

    def _too_large(self, image: bytes | str | Path) -> ClientError | None:
        """The refusal of image bytes over max_image_bytes (they are never sent), or None."""
        if not isinstance(image, (bytes, bytearray, memoryview)) or len(image) <= self.max_image_bytes:
            return None
        size = len(image)
        return ClientError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"image is {size} bytes ({size / 2**20:.1f} MiB); the limit is {self.max_image_bytes} bytes "
            f"({self.max_image_bytes / 2**20:.1f} MiB: the client's max_image_bytes, as the server's "
            "ARCHIVETAG_MAX_IMAGE_BYTES)", errors_pb2.ERROR_REASON_IMAGE_TOO_LARGE,
            {"size_bytes": str(size), "limit_bytes": str(self.max_image_bytes),
             "setting": "ARCHIVETAG_MAX_IMAGE_BYTES"}, "image.data")

    def _refused(self, item: TagItem) -> ItemResult | None:
        error = self._too_large(item.image)
        if error is None:
            return None
        return ItemResult(item.id, item, tagging_pb2.TagImagesResponse(id=item.id), error=error)

    def _should_retry(self, error: ClientError, attempt: int, deadline_at: float | None) -> float | None:
        """Seconds to wait before the next attempt, or None to give up."""
        wait = self.retry.backoff(attempt)
        if not error.retryable or attempt >= self.retry.max_attempts:
            return None
        if deadline_at is not None and time.monotonic() + wait >= deadline_at:
            return None
        return wait


class AsyncTaggingClient(_Base):
    """asyncio client: `async with AsyncTaggingClient(target, token) as client: await client.tag(data)`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.channel = (grpc.aio.secure_channel(self.target, self._credentials, options=CHANNEL_OPTIONS)
                        if self._credentials else grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS))
        self.stub = tagging_pb2_grpc.TaggingServiceStub(self.channel)

    async def __aenter__(self) -> AsyncTaggingClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def _unary(self, method, request, deadline: float | None):
        deadline_at = time.monotonic() + (deadline or self.deadline)
        for attempt in range(1, self.retry.max_attempts + 1):
            try:
                return await method(request, metadata=self.metadata, timeout=max(0.001, deadline_at - time.monotonic()))
            except grpc.aio.AioRpcError as exc:
                error = ClientError.from_call(exc)
                wait = self._should_retry(error, attempt, deadline_at)
                if wait is None:
                    raise error from None
                await asyncio.sleep(wait)

    async def tag(self, image: bytes | str | Path, *, max_tags: int = 0, threshold: float | None = None,
                  include_embedding: bool = False, context: dict[str, str] | None = None,
                  ocr: int = common_pb2.OCR_MODE_UNSPECIFIED,
                  deadline: float | None = None, bypass_cache: bool = False,
                  overflow: int = tagging_pb2.OVERFLOW_POLICY_UNSPECIFIED,
                  labels: view_type_pb2.LabelSet | None = None) -> tagging_pb2.TagImageResponse:
        """Tag one image (bytes, or a path the server may read). ocr: an OcrMode (the text in the photo, one
        more Florence-2 pass). deadline: seconds, retries included. overflow: an OverflowPolicy (WAIT for a
        busy primary tagger, or FALLBACK to the next one at once; unset: the orchestrator's policy for this
        client). The answer's `cached` says whether it came from the orchestrator's result cache."""
        if (too_large := self._too_large(image)) is not None:
            raise too_large
        request = tag_request(image, max_tags, threshold, include_embedding, context, ocr, bypass_cache, overflow,
                              labels)
        return await self._unary(self.stub.TagImage, request, deadline)

    async def embed_text(self, texts: list[str], *, deadline: float | None = None) -> tagging_pb2.EmbedTextResponse:
        """SigLIP text embeddings (normalised, one per text) and the model that made them: compare them only
        with image embeddings of that model (docs/search.md)."""
        return await self._unary(self.stub.EmbedText, tagging_pb2.EmbedTextRequest(texts=list(texts)), deadline)

    async def status(self, deadline: float = 10.0) -> tagging_pb2.GetStatusResponse:
        return await self._unary(self.stub.GetStatus, tagging_pb2.GetStatusRequest(), deadline)

    async def health(self, deadline: float = 10.0) -> str:
        """The orchestrator's health: SERVING, NOT_SERVING, SERVICE_UNKNOWN or UNREACHABLE (no token needed)."""
        status, _ = await health_client.check_async(self.channel, TAGGING_SERVICE, deadline)
        return status

    async def tag_many(self, items: AsyncIterable[TagItem] | Iterable[TagItem], *, window: int = 16,
                       deadline: float | None = None) -> AsyncIterator[ItemResult]:
        """Tag over one TagImages stream: one ItemResult per item, in completion order.

        The next item is taken from `items` only when fewer than `window` are unanswered. If the
        stream breaks with a retryable error, it is reopened and the unanswered items resent.
        """
        source = items.__aiter__() if hasattr(items, "__aiter__") else _aiter(items)
        ids = _Ids()
        refused: list[ItemResult] = []  # items over max_image_bytes: answered here, never sent
        done = False
        deadline_at = None if deadline is None else time.monotonic() + deadline
        for attempt in range(1, self.retry.max_attempts + 1):
            slots = asyncio.Semaphore(max(1, window))

            async def requests(resend: list[TagItem], slots: asyncio.Semaphore):
                nonlocal done
                for item in resend:
                    await slots.acquire()
                    yield _item_request(item)
                while not done:
                    await slots.acquire()
                    try:
                        item = await source.__anext__()
                    except StopAsyncIteration:
                        done = True
                        return
                    item = ids.add(item)
                    if (refusal := self._refused(item)) is not None:
                        ids.unanswered.pop(item.id)
                        refused.append(refusal)
                        slots.release()
                        continue
                    yield _item_request(item)

            timeout = _time_left(deadline_at)
            call = self.stub.TagImages(requests(list(ids.unanswered.values()), slots), metadata=self.metadata,
                                       timeout=timeout)
            try:
                async for response in call:
                    for refusal in _take(refused):
                        yield refusal
                    item = ids.unanswered.pop(response.id, None)
                    if item is None:
                        continue  # answered before a reconnect
                    slots.release()
                    yield _answer(item, response)
                for refusal in _take(refused):
                    yield refusal
                if done and not ids.unanswered:
                    return
                error = ids.ended_early()
            except grpc.aio.AioRpcError as exc:
                error = ClientError.from_call(exc)
            for refusal in _take(refused):
                yield refusal
            wait = self._should_retry(error, attempt, deadline_at)
            if wait is None:
                raise error
            await asyncio.sleep(wait)


def _take(refused: list[ItemResult]) -> list[ItemResult]:
    """The refused items not yielded yet, now taken from the list."""
    taken = refused[:]
    refused.clear()
    return taken


async def _aiter(items: Iterable[TagItem]) -> AsyncIterator[TagItem]:
    for item in items:
        yield item


class TaggingClient(_Base):
    """Blocking client: `with TaggingClient(target, token) as client: client.tag(data)`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.channel = (grpc.secure_channel(self.target, self._credentials, options=CHANNEL_OPTIONS)
                        if self._credentials else grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS))
        self.stub = tagging_pb2_grpc.TaggingServiceStub(self.channel)

    def __enter__(self) -> TaggingClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _unary(self, method, request, deadline: float | None):
        deadline_at = time.monotonic() + (deadline or self.deadline)
        for attempt in range(1, self.retry.max_attempts + 1):
            try:
                return method(request, metadata=self.metadata, timeout=max(0.001, deadline_at - time.monotonic()))
            except grpc.RpcError as exc:
                error = ClientError.from_call(exc)
                wait = self._should_retry(error, attempt, deadline_at)
                if wait is None:
                    raise error from None
                time.sleep(wait)

    def tag(self, image: bytes | str | Path, *, max_tags: int = 0, threshold: float | None = None,
            include_embedding: bool = False, context: dict[str, str] | None = None,
            ocr: int = common_pb2.OCR_MODE_UNSPECIFIED,
            deadline: float | None = None, bypass_cache: bool = False,
            overflow: int = tagging_pb2.OVERFLOW_POLICY_UNSPECIFIED,
            labels: view_type_pb2.LabelSet | None = None) -> tagging_pb2.TagImageResponse:
        """Tag one image (bytes, or a path the server may read). ocr: an OcrMode (the text in the photo, one
        more Florence-2 pass). deadline: seconds, retries included. overflow: an OverflowPolicy (WAIT for a
        busy primary tagger, or FALLBACK to the next one at once; unset: the orchestrator's policy for this
        client). The answer's `cached` says whether it came from the orchestrator's result cache."""
        if (too_large := self._too_large(image)) is not None:
            raise too_large
        request = tag_request(image, max_tags, threshold, include_embedding, context, ocr, bypass_cache, overflow,
                              labels)
        return self._unary(self.stub.TagImage, request, deadline)

    def embed_text(self, texts: list[str], *, deadline: float | None = None) -> tagging_pb2.EmbedTextResponse:
        """SigLIP text embeddings (normalised, one per text) and the model that made them: compare them only
        with image embeddings of that model (docs/search.md)."""
        return self._unary(self.stub.EmbedText, tagging_pb2.EmbedTextRequest(texts=list(texts)), deadline)

    def status(self, deadline: float = 10.0) -> tagging_pb2.GetStatusResponse:
        return self._unary(self.stub.GetStatus, tagging_pb2.GetStatusRequest(), deadline)

    def health(self, deadline: float = 10.0) -> str:
        """The orchestrator's health: SERVING, NOT_SERVING, SERVICE_UNKNOWN or UNREACHABLE (no token needed)."""
        status, _ = health_client.check(self.channel, TAGGING_SERVICE, deadline)
        return status

    def tag_many(self, items: Iterable[TagItem], *, window: int = 16,
                 deadline: float | None = None) -> Iterator[ItemResult]:
        """As AsyncTaggingClient.tag_many, blocking."""
        source = iter(items)
        ids = _Ids()
        lock = threading.Lock()  # the request iterator runs on gRPC's thread
        refused: list[ItemResult] = []  # items over max_image_bytes: answered here, never sent (under lock)
        done = False
        deadline_at = None if deadline is None else time.monotonic() + deadline
        for attempt in range(1, self.retry.max_attempts + 1):
            slots = threading.Semaphore(max(1, window))

            def requests(resend: list[TagItem], slots: threading.Semaphore):
                nonlocal done
                for resent in resend:
                    slots.acquire()
                    yield _item_request(resent)
                while not done:
                    slots.acquire()
                    item = next(source, None)
                    if item is None:
                        done = True
                        return
                    with lock:
                        ids.add(item)
                        refusal = self._refused(item)
                        if refusal is not None:
                            ids.unanswered.pop(item.id)
                            refused.append(refusal)
                    if refusal is not None:
                        slots.release()
                        continue
                    yield _item_request(item)

            with lock:
                resend = list(ids.unanswered.values())
            timeout = _time_left(deadline_at)
            call = self.stub.TagImages(requests(resend, slots), metadata=self.metadata, timeout=timeout)
            try:
                for response in call:
                    with lock:
                        item = ids.unanswered.pop(response.id, None)
                        answered_here = _take(refused)
                    yield from answered_here
                    if item is None:
                        continue
                    slots.release()
                    yield _answer(item, response)
                with lock:
                    answered_here = _take(refused)
                yield from answered_here
                if done and not ids.unanswered:
                    return
                error = ids.ended_early()
            except grpc.RpcError as exc:
                error = ClientError.from_call(exc)
            finally:
                call.cancel()
                slots.release()  # let a request iterator blocked on the window see the end
            with lock:
                answered_here = _take(refused)
            yield from answered_here
            wait = self._should_retry(error, attempt, deadline_at)
            if wait is None:
                raise error
            time.sleep(wait)
