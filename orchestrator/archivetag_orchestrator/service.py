"""TaggingService: the one API archive apps call."""

from __future__ import annotations

import asyncio
import time

import grpc

from archivetag.runtime.batcher import BULK, INTERACTIVE
from archivetag.runtime.errors import DeadlineExpired, InvalidInput, NotServing, QueueFull, abort_with, status_for
from archivetag.runtime.images import check_image_size, read_image_source_async
from archivetag.v1 import tagging_pb2, tagging_pb2_grpc
from archivetag_orchestrator.auth import current_client
from archivetag_orchestrator.backends import Backend
from archivetag_orchestrator.cache import ResultCache
from archivetag_orchestrator.fairness import ByteBudget, FairScheduler
from archivetag_orchestrator.routing import Router


class Draining(Exception):
    """Shutdown began while a stream waited for its next item."""


POLICIES = {"wait": tagging_pb2.OVERFLOW_POLICY_WAIT, "fallback": tagging_pb2.OVERFLOW_POLICY_FALLBACK}


def parse_client_overflow(entries: list[str]) -> dict[str, tagging_pb2.OverflowPolicy]:
    """'client-name:wait|fallback' entries (the client_overflow option); ValueError if malformed."""
    policies = {}
    for entry in entries:
        name, sep, policy = entry.rpartition(":")
        if not sep or not name or policy not in POLICIES:
            raise ValueError(f"client overflow {entry!r} is not 'client-name:wait' or 'client-name:fallback'")
        policies[name] = POLICIES[policy]
    return policies


def _error_answer(item_id: str, exc: BaseException) -> tagging_pb2.TagImagesResponse:
    return tagging_pb2.TagImagesResponse(id=item_id, error=status_for(exc).item_error())


class TaggingServicer(tagging_pb2_grpc.TaggingServiceServicer):
    def __init__(self, router: Router, scheduler: FairScheduler, budget: ByteBudget, backends: list[Backend], settings,
                 cache: ResultCache):
        self.router = router
        self.cache = cache
        self.scheduler = scheduler
        self.budget = budget
        self.backends = backends
        self.settings = settings
        self.overflow = POLICIES[settings.overflow]
        self.client_overflow = parse_client_overflow(settings.client_overflow)
        self.draining = asyncio.Event()

    def drain(self) -> None:
        """SIGTERM: streams read no new items, finish those in flight, then end with UNAVAILABLE."""
        self.draining.set()

    # -- one image ----------------------------------------------------------------------
    async def _tag(self, request: tagging_pb2.TagImageRequest, client: str, time_left: float,
                   prepaid: bool = False, lane: str = INTERACTIVE) -> tagging_pb2.TagImageResponse:
        """Tag one image in `lane` (TagImage: interactive; TagImages: bulk). Its bytes are held in the client's
        byte budget (taken here unless the stream reading it took them already) before they are copied or wait
        for a slot."""
        deadline = time.monotonic() + time_left
        held = 0
        try:
            if not prepaid:
                self.budget.take(client, request.ByteSize())
                held = request.ByteSize()
            async with asyncio.timeout(time_left):
                # A path is read in the decoder's own file pool: regular files only, size checked first.
                image = await read_image_source_async(request.image, self.settings.allowed_roots,
                                                      self.settings.max_image_bytes, deadline)
                if request.image.WhichOneof("source") == "uri":  # read here: count what was read
                    self.budget.take(client, len(image))
                    held += len(image)
                check_image_size(image, self.settings.max_image_bytes)

                if request.overflow not in tagging_pb2.OverflowPolicy.values():
                    raise InvalidInput(f"overflow {request.overflow} is not an OverflowPolicy; use one of "
                                       f"{', '.join(tagging_pb2.OverflowPolicy.keys())}", reason="FIELD_INVALID",
                                       field="overflow")
                overflow = request.overflow or self.client_overflow.get(client, self.overflow)

                async def from_models() -> tagging_pb2.TagImageResponse:
                    async with self.scheduler.slot(client, lane) as waited:
                        return await self.router.tag_image(request, image, deadline, waited, lane, overflow)

                return await self.cache.answer(request, image, from_models, client)
        except TimeoutError:
            raise DeadlineExpired(f"deadline of {time_left:.1f} s passed before the image was tagged",
                                  metadata={"deadline_seconds": round(time_left, 3)}) from None
        finally:
            if held:
                self.budget.give_back(client, held)

    def _time_left(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        default = self.settings.default_deadline_seconds
        return default if remaining is None else min(remaining, default)

    async def TagImage(self, request, context):
        try:
            return await self._tag(request, current_client.get(), self._time_left(context))
        except Exception as exc:  # noqa: BLE001 - mapped to a status in one place (errors.py)
            await abort_with(context, exc)

    # -- bulk -------------------------------------------------------------------------------
    async def _before_drain(self, awaitable):
        """The awaitable's result, or Draining if shutdown begins first."""
        task = asyncio.ensure_future(awaitable)
        drain = asyncio.ensure_future(self.draining.wait())
        try:
            done, _ = await asyncio.wait({task, drain}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            drain.cancel()
        if task in done:
            return task.result()
        task.cancel()
        raise Draining

    async def TagImages(self, request_iterator, context):
        """Answer every item id once, in completion order, with a bounded window.

        An id used twice is answered once, with INVALID_ARGUMENT (the first item is not
        tagged either, when it is still in flight). On shutdown the stream reads no
        further, answers the items it read, and ends with UNAVAILABLE: the client sends
        the unanswered ones again, to another replica or later.
        """
        client = current_client.get()
        window = asyncio.Semaphore(max(1, self.settings.stream_window))
        answers: asyncio.Queue = asyncio.Queue()
        pending: dict[str, asyncio.Task] = {}  # id → its task, until answered
        answered: set[str] = set()
        DONE, DRAINED = object(), object()

        async def answer(item: tagging_pb2.TagImagesRequest, size: int) -> None:
            try:
                result = await self._tag(item.request, client, self._time_left(context), prepaid=True, lane=BULK)
                response = tagging_pb2.TagImagesResponse(id=item.id, result=result)
            except Exception as exc:  # noqa: BLE001 - every failure becomes the item's own error
                response = _error_answer(item.id, exc)
            finally:
                self.budget.give_back(client, size)
            # No await from here to the queue: a duplicate id seen meanwhile finds it answered.
            pending.pop(item.id, None)
            answered.add(item.id)
            answers.put_nowait(response)

        def refuse(item_id: str, message: str) -> None:
            answered.add(item_id)
            answers.put_nowait(_error_answer(item_id, InvalidInput(message, reason="ITEM_ID_INVALID", field="id")))

        async def read() -> None:
            items = request_iterator.__aiter__()
            end = DONE
            try:
                while True:
                    if self.draining.is_set():
                        raise Draining
                    await self._before_drain(window.acquire())
                    item = await self._before_drain(anext(items, None))
                    if item is None:
                        break
                    if not item.id:
                        refuse("", "item id is empty: give every item of the stream a unique id")
                    elif item.id in pending:
                        pending.pop(item.id).cancel()  # one answer for both: this refusal
                        window.release()
                        refuse(item.id, f"item id {item.id!r} was used twice in this stream: neither item was tagged; "
                                        "give every item a unique id")
                    elif item.id in answered:
                        refuse(item.id, f"item id {item.id!r} was already answered in this stream: "
                                        "give every item a unique id")
                    else:
                        size = item.request.ByteSize()
                        try:
                            await self.budget.wait_and_take(client, size)
                        except QueueFull as exc:
                            answers.put_nowait(_error_answer(item.id, exc))
                            continue
                        task = asyncio.create_task(answer(item, size))
                        pending[item.id] = task
            except Draining:
                end = DRAINED
            await asyncio.gather(*pending.values(), return_exceptions=True)
            await answers.put(end)

        reader = asyncio.create_task(read())
        try:
            while True:
                getter = asyncio.create_task(answers.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    reader.result()  # the request stream failed: raise its error
                    continue
                response = getter.result()
                if response is DONE:
                    return
                if response is DRAINED:
                    await abort_with(context, NotServing(
                        "orchestrator draining (shutting down): every item read was answered, the rest were not "
                        "read; send the unanswered items again (another replica, or once it is back)",
                    ))
                yield response
                window.release()
        finally:
            reader.cancel()
            for task in list(pending.values()):
                task.cancel()

    # -- texts ------------------------------------------------------------------------------
    async def EmbedText(self, request, context):
        """SigLIP text embeddings for search by words (the client's own stored image embeddings)."""
        try:
            time_left = self._time_left(context)
            try:
                async with asyncio.timeout(time_left):
                    reply = await self.router.embed_text(list(request.texts), time.monotonic() + time_left)
            except TimeoutError:
                raise DeadlineExpired(f"deadline of {time_left:.1f} s passed before the texts were embedded",
                                      metadata={"deadline_seconds": round(time_left, 3)}) from None
            return tagging_pb2.EmbedTextResponse(embeddings=reply.embeddings, model=reply.model,
                                                 logit_scale=reply.logit_scale, logit_bias=reply.logit_bias)
        except Exception as exc:  # noqa: BLE001 - mapped to a status in one place (errors.py)
            await abort_with(context, exc)

    # -- status -----------------------------------------------------------------------------
    async def GetStatus(self, request, context):
        return tagging_pb2.GetStatusResponse(
            backends=[b.status() for b in self.backends],
            in_flight=self.scheduler.running,
            queued=self.scheduler.queued,
            cache=await self.cache.status(current_client.get()),
        )
