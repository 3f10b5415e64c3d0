"""Tag photos (files and folders, recursively) through the orchestrator into SQLite.

Photos are streamed through TagImages with a bounded window; every answer is committed
as it arrives, so an interrupted import loses nothing. A re-run skips photos whose
content (SHA-256) was already tagged by the same models.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf.json_format import MessageToDict

from archivetag.client import CLIENT_OPTIONS, call_metadata, open_channel
from archivetag.results import CLAIM_SECONDS, ResultStore, StoreError, default_db_path, models_key
from archivetag.runtime.settings import Option, OptionGroup, parse_path
from archivetag.v1 import tagging_pb2, tagging_pb2_grpc

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".heic", ".heif"}

TAG_OPTIONS = OptionGroup(
    "tag",
    (
        Option("db", None, "SQLite database for the results (default: in the user's data directory).",
               parse_path, metavar="FILE"),
        Option("concurrency", 8, "Photos in flight at once.", int),
        Option("max_tags", 0, "At most this many tags per photo; 0: all.", int),
        Option("retries", 5, "Times a broken connection is retried (with backoff) before giving up.", int),
        Option("max_photo_mb", 32, "Largest photo sent, in MiB (as the orchestrator's --max-message-mb); "
               "larger files are reported, not sent.", int),
    ),
)
OPTION_GROUPS = [CLIENT_OPTIONS, TAG_OPTIONS]
MIB = 1024 * 1024
# Room in a request for the fields around the image (item id, options).
REQUEST_OVERHEAD = 4096


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="photos and folders (recursive)")
    parser.add_argument("--json", action="store_true", help="print one JSON result per photo instead of writing the database")
    parser.add_argument("--all-files", action="store_true", help="send every file, not only known photo extensions")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def shown(path: Path) -> str:
    """A path for messages: a name that is not valid UTF-8 shows its odd bytes escaped (\\udcff)."""
    return str(path).encode("utf-8", "backslashreplace").decode("utf-8")


def find_photos(paths: list[Path], all_files: bool = False) -> tuple[list[Path], list[str]]:
    """(photo files, problems with the given paths)."""
    found, problems = [], []
    for path in paths:
        if path.is_dir():
            found += [p for p in sorted(path.rglob("*")) if p.is_file() and (all_files or p.suffix.lower() in PHOTO_SUFFIXES)]
        elif path.is_file():
            found.append(path)
        elif path.exists():
            problems.append(f"{shown(path)}: not a regular file or folder")
        else:
            problems.append(f"{shown(path)}: no such file or folder")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return unique, problems


@dataclass
class Photo:
    path: Path
    data: bytes
    sha256: str
    size: int
    mtime: float


class NotSent(Exception):
    """A photo that cannot be sent (unreadable, over the size limit); the message says why."""


def read_photo(path: Path, max_bytes: int) -> Photo:
    """The photo's bytes, its size checked before reading (an over-limit file would end the stream)."""
    try:
        stat = path.stat()
        if stat.st_size > max_bytes:
            raise NotSent(f"{stat.st_size / MIB:.1f} MiB, over the {max_bytes / MIB:.1f} MiB a request may carry "
                          "(--max-photo-mb; the orchestrator's --max-message-mb must allow it too)")
        data = path.read_bytes()
    except OSError as exc:
        raise NotSent(f"cannot read it: {exc.strerror}") from None
    return Photo(path, data, hashlib.sha256(data).hexdigest(), len(data), stat.st_mtime)


@dataclass
class Summary:
    total: int = 0
    skipped: int = 0
    tagged: int = 0
    failed: int = 0
    unreadable: int = 0
    seconds: float = 0.0


@dataclass
class Attempt:
    """One TagImages stream: which photos went out and which are finished."""

    photos: dict[str, Path]  # item id → path: what this stream is to send
    answered: int = 0
    in_flight: dict[str, Photo] = field(default_factory=dict)  # sent, not answered yet
    finished: set[str] = field(default_factory=set)  # answered, or dealt with without sending


class Tagger:
    """One import run: stream the photos, store or print each answer.

    No single file stops it: one that cannot be read or is too large is a failed item, and
    one that makes the orchestrator end the stream is found (the photos are then sent one at
    a time) and failed with that status. Every answer is kept as it arrives; a stream that
    ends early (the orchestrator draining or gone) is resumed with the photos not answered.
    """

    def __init__(self, settings, store: ResultStore | None, key: str, progress):
        self.settings = settings
        self.store = store
        self.key = key
        self.progress = progress
        self.summary = Summary()
        self.deferred: list[Path] = []  # claimed by another run on the same database

    def say(self, message: str) -> None:
        """A line above the progress bar, on stderr (tqdm.write defaults to stdout, even with the bar off)."""
        self.progress.write(message, file=sys.stderr)

    def _advance(self) -> None:
        self.progress.update(1)
        self.progress.set_postfix(failed=self.summary.failed + self.summary.unreadable, refresh=False)

    def _record(self, photo: Photo, response: tagging_pb2.TagImagesResponse) -> None:
        ok = response.WhichOneof("outcome") == "result"
        if ok:
            self.summary.tagged += 1
        else:
            self.summary.failed += 1
            self.say(f"failed: {shown(photo.path)}: {response.error.status}: {response.error.message}")
        if self.store is not None:
            self.store.record(photo.path, photo.sha256, photo.size, photo.mtime, self.key, response)
        else:
            print(json.dumps({"path": str(photo.path), "sha256": photo.sha256, **MessageToDict(response)}), flush=True)
        self._advance()

    def _not_sent(self, path: Path, reason: str) -> None:
        self.summary.unreadable += 1
        self.say(f"unreadable: {shown(path)}: {reason}")
        if self.store is not None:
            self.store.release(path)
        self._advance()

    async def run(self, photos: list[Path]) -> None:
        # Item ids are ours (a counter), so any file name is fine.
        todo = {str(index): path for index, path in enumerate(photos)}
        suspects: dict[str, Path] = {}  # in flight when the orchestrator ended a stream: sent one at a time
        failures = 0  # streams in a row that ended without an answer
        while todo:
            attempt = Attempt(dict(suspects or todo))
            try:
                await self._stream(attempt, 1 if suspects else self.settings.concurrency)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    raise
                failures = 0 if attempt.answered else failures + 1
                if code != grpc.StatusCode.UNAVAILABLE and suspects and attempt.in_flight:
                    # The one photo out, and the orchestrator ended the stream over it: it is the cause.
                    item_id, photo = next(iter(attempt.in_flight.items()))
                    self._record(photo, _item_error(code, f"the orchestrator ended the stream over this photo: "
                                                          f"{exc.details()}"))
                    attempt.finished.add(item_id)
                    failures = 0
                elif code != grpc.StatusCode.UNAVAILABLE and attempt.in_flight:
                    suspects = {i: todo[i] for i in attempt.in_flight}
                    failures = 0
                elif failures > self.settings.retries:
                    raise
                else:
                    # Draining, restarting or gone: resume with the photos not answered.
                    wait = 0.2 if attempt.answered else min(30.0, 2.0 ** failures)
                    self.say(f"stream ended ({code.name}: {exc.details()}); resuming in {wait:.1f} s")
                    await asyncio.sleep(wait)
            for item_id in attempt.finished:
                todo.pop(item_id, None)
                suspects.pop(item_id, None)
            if not todo and self.deferred:
                todo = await self._take_deferred(len(photos))

    async def _take_deferred(self, first_id: int) -> dict[str, Path]:
        """Photos another run had claimed: done by it now, or ours once it lets them go."""
        waiting, self.deferred = self.deferred, []
        announced = False
        while waiting:
            mine = []
            for path in list(waiting):
                if self.store.path_is_done(path, self.key, ok_only=False):
                    self.summary.skipped += 1
                    self._advance()
                    waiting.remove(path)
                elif not self.store.claim(path):
                    mine.append(path)
                    waiting.remove(path)
            if mine:
                self.deferred = waiting
                return {str(first_id + index): path for index, path in enumerate(mine)}
            if waiting and not announced:
                self.say(f"waiting for another `archivetag tag` on {self.store.path} to finish {len(waiting)} photos")
                announced = True
            await asyncio.sleep(0.5)
        return {}

    async def _stream(self, attempt: Attempt, concurrency: int) -> None:
        """Stream the attempt's photos, noting each one finished as it is."""
        window = asyncio.Semaphore(max(1, concurrency))
        max_bytes = self.settings.max_photo_mb * MIB - REQUEST_OVERHEAD

        async def requests():
            for item_id, path in attempt.photos.items():
                await window.acquire()
                if self.store is not None and self.store.claim(path):
                    self.deferred.append(path)  # another run on this database is tagging it
                    attempt.finished.add(item_id)
                    window.release()
                    continue
                try:
                    photo = await asyncio.to_thread(read_photo, path, max_bytes)
                except NotSent as exc:
                    attempt.finished.add(item_id)
                    self._not_sent(path, str(exc))
                    window.release()
                    continue
                if self.store is not None and self.store.is_done(photo.sha256, self.key):
                    # Same content under another path, tagged earlier in this run or before.
                    self.store.link(photo.path, photo.sha256, photo.size, photo.mtime, self.key)
                    self.summary.skipped += 1
                    attempt.finished.add(item_id)
                    self._advance()
                    window.release()
                    continue
                attempt.in_flight[item_id] = photo
                request = tagging_pb2.TagImageRequest(max_tags=self.settings.max_tags)
                request.image.data = photo.data
                yield tagging_pb2.TagImagesRequest(id=item_id, request=request)

        renewer = asyncio.create_task(self._renew_claims()) if self.store is not None else None
        try:
            async with open_channel(self.settings) as channel:
                stub = tagging_pb2_grpc.TaggingServiceStub(channel)
                call = stub.TagImages(requests(), metadata=call_metadata(self.settings))
                async for response in call:
                    photo = attempt.in_flight.pop(response.id, None)
                    if photo is None:
                        continue  # not ours (cannot happen with a correct server)
                    self._record(photo, response)
                    attempt.finished.add(response.id)
                    attempt.answered += 1
                    window.release()
        finally:
            if renewer is not None:
                renewer.cancel()

    async def _renew_claims(self) -> None:
        while True:
            await asyncio.sleep(CLAIM_SECONDS / 3)
            self.store.renew_claims()


def _item_error(code: grpc.StatusCode, message: str) -> tagging_pb2.TagImagesResponse:
    return tagging_pb2.TagImagesResponse(
        error=tagging_pb2.ItemError(code=code.value[0], status=code.name, message=message)
    )


async def tag_photos(settings, photos: list[Path], store: ResultStore | None, progress) -> Summary:
    async with open_channel(settings) as channel:
        status = await tagging_pb2_grpc.TaggingServiceStub(channel).GetStatus(
            tagging_pb2.GetStatusRequest(), metadata=call_metadata(settings), timeout=10
        )
    key = models_key([b.model for b in status.backends])
    runner = Tagger(settings, store, key, progress)
    runner.summary.total = len(photos)
    todo = photos
    if store is not None:
        store.remember_models(key, [b.model for b in status.backends])
        todo = [p for p in photos if not store.path_is_done(p, key)]
        runner.summary.skipped = len(photos) - len(todo)
        progress.update(runner.summary.skipped)
    started = time.monotonic()
    await runner.run(todo)
    runner.summary.seconds = time.monotonic() - started
    return runner.summary


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    photos, problems = find_photos(args.paths, args.all_files)
    for problem in problems:
        print(f"archivetag tag: {problem}", file=sys.stderr)
    if not photos:
        print("archivetag tag: no photos found", file=sys.stderr)
        return 2
    try:
        store = None if args.json else ResultStore(args.db or default_db_path())
    except StoreError as exc:
        print(f"archivetag tag: {exc}", file=sys.stderr)
        return 2
    progress = tqdm(total=len(photos), unit="photo", desc="tagging", disable=args.no_progress, file=sys.stderr,
                    dynamic_ncols=True)
    try:
        summary = asyncio.run(tag_photos(args, photos, store, progress))
    except grpc.aio.AioRpcError as exc:
        progress.close()
        print(f"archivetag tag: {args.target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        print("everything answered so far is saved; run the same command again to resume", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        progress.close()
        print("interrupted: everything answered so far is saved; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        if store is not None:
            store.close()
    progress.close()
    rate = summary.tagged / summary.seconds if summary.seconds else 0.0
    print(
        f"{summary.total} photos: {summary.tagged} tagged, {summary.skipped} already done, "
        f"{summary.failed} failed, {summary.unreadable} unreadable ({rate:.1f} photos/s)"
        + (f"; results in {store.path}" if store is not None else ""),
        file=sys.stderr,
    )
    return 1 if summary.failed or summary.unreadable or problems else 0
