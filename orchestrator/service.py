"""TaggingService: the one API archive apps call."""

from __future__ import annotations

import asyncio
import time

import grpc

from archivetag.orchestrator.auth import current_client
from archivetag.orchestrator.backends import Backend
from archivetag.orchestrator.fairness import FairScheduler
from archivetag.orchestrator.routing import Router
from archivetag.runtime.errors import DeadlineExpired, InvalidInput, abort_with, status_for
from archivetag.runtime.images import check_image_size, read_image_source
from archivetag.v1 import tagging_pb2, tagging_pb2_grpc


class TaggingServicer(tagging_pb2_grpc.TaggingServiceServicer):
    def __init__(self, router: Router, scheduler: FairScheduler, backends: list[Backend], settings):
        self.router = router
        self.scheduler = scheduler
        self.backends = backends
        self.settings = settings

    # -- one image ----------------------------------------------------------------------
    async def _tag(self, request: tagging_pb2.TagImageRequest, client: str, time_left: float) -> tagging_pb2.TagImageResponse:
        deadline = time.monotonic() + time_left
        try:
            async with asyncio.timeout(time_left):
                image = await asyncio.to_thread(read_image_source, request.image, self.settings.allowed_roots)
                check_image_size(image, self.settings.max_image_bytes)
                async with self.scheduler.slot(client) as waited:
                    return await self.router.tag_image(request, image, deadline, waited)
        except TimeoutError:
            raise DeadlineExpired(f"deadline of {time_left:.1f} s passed before the image was tagged",
                                  metadata={"deadline_seconds": round(time_left, 3)}) from None

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
    async def TagImages(self, request_iterator, context):
        """Answer every item once, under its id, in completion order, with a bounded window."""
        client = current_client.get()
        window = asyncio.Semaphore(max(1, self.settings.stream_window))
        answers: asyncio.Queue = asyncio.Queue()
        seen: set[str] = set()
        tasks: set[asyncio.Task] = set()

        async def answer(item: tagging_pb2.TagImagesRequest) -> None:
            try:
                if not item.id:
                    raise InvalidInput("item id is empty: give every item of the stream a unique id",
                                       reason="ITEM_ID_INVALID", field="id")
                if item.id in seen:
                    raise InvalidInput(f"item id {item.id!r} was already used in this stream",
                                       reason="ITEM_ID_INVALID", field="id")
                seen.add(item.id)
                result = await self._tag(item.request, client, self._time_left(context))
                await answers.put(tagging_pb2.TagImagesResponse(id=item.id, result=result))
            except Exception as exc:  # noqa: BLE001 - every failure becomes the item's own error
                error = status_for(exc).item_error()
                await answers.put(tagging_pb2.TagImagesResponse(id=item.id, error=error))

        async def read() -> None:
            async for item in request_iterator:
                await window.acquire()  # flow control: read no further than the window allows
                task = asyncio.create_task(answer(item))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks:
                await asyncio.gather(*list(tasks))
            await answers.put(None)

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
                if response is None:
                    return
                yield response
                window.release()
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    # -- status -----------------------------------------------------------------------------
    async def GetStatus(self, request, context):
        return tagging_pb2.GetStatusResponse(
            backends=[b.status() for b in self.backends],
            in_flight=self.scheduler.running,
            queued=self.scheduler.queued,
        )
