"""Tag photos (files and folders, recursively) through the orchestrator into SQLite.

Photos are streamed through TagImages (archivetag.client) with a bounded window; every answer is committed
as it arrives, so an interrupted import loses nothing. A re-run skips photos whose
content (SHA-256) was already tagged by the same models (and with the same OCR option: `--ocr` reads
the text in each photo too, `--ocr-regions` with where it is, one more Florence-2 pass per photo).
The database also keeps each photo's SigLIP embedding (archivetag.vectors), which `archivetag
similar` and `duplicates` search.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.json_format import MessageToDict

from archivetag import labels
from archivetag.client import CLIENT_OPTIONS, AsyncTaggingClient, ClientError, ItemResult, RetryPolicy, TagItem
from archivetag.phash import photo_hash
from archivetag.results import CLAIM_SECONDS, ResultStore, StoreError, default_db_path, models_key
from archivetag.runtime.settings import Option, OptionGroup, parse_bool, parse_path
from archivetag.v1 import common_pb2, tagging_pb2
from archivetag.walk import PHOTO_SUFFIXES, PhotoSource, find_photos, shown  # noqa: F401 - bulk's API

DB_OPTION = Option("db", None, "SQLite database for the results (default: in the user's data directory).",
                   parse_path, metavar="FILE")
MAX_PHOTO_OPTION = Option("max_photo_mb", 32, "Largest photo sent, in MiB (as the orchestrator's --max-message-mb); "
                          "larger files are reported, not sent.", int)
TAG_OPTIONS = OptionGroup(
    "tag",
    (
        DB_OPTION,
        Option("concurrency", 8, "Photos in flight at once.", int),
        Option("max_tags", 0, "At most this many tags per photo; 0: all.", int),
        Option("retries", 5, "Times a broken connection is retried (with backoff) before giving up.", int),
        MAX_PHOTO_OPTION,
        Option("ocr", False, "Also read the text in each photo (Florence-2's <OCR>: one more generate pass per "
               "photo), stored and shown.", parse_bool),
        Option("ocr_regions", False, "Read the text with where it is in the photo (<OCR_WITH_REGION>; "
               "implies --ocr).", parse_bool),
        Option("follow_links", False, "Also tag photos that are links to files outside the folders given (by "
               "default such links are skipped and reported: a folder must not make tag read files elsewhere).",
               parse_bool),
        Option("overflow", "server", "When the primary tagger is busy: 'wait' for it (every photo gets its answer), "
               "'fallback' to the next tagger at once (throughput first), or 'server': the orchestrator's policy "
               "for this client (docs/errors.md, \"Overload\").", choices=("server", "wait", "fallback")),
        Option("labels", None, "Also score each photo against this label set (JSON/YAML file, or a bundled set: "
               "place-types) with SigLIP; stored in label_scores (docs/search.md).", metavar="FILE"),
    ),
)
OPTION_GROUPS = [CLIENT_OPTIONS, TAG_OPTIONS]
MIB = 1024 * 1024
# Room in a request for the fields around the image (item id, options).
REQUEST_OVERHEAD = 4096


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="photos and folders (recursive)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON result per photo instead of writing the database")
    parser.add_argument("--all-files", action="store_true", help="send every file, not only known photo extensions")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


OVERFLOW = {"server": tagging_pb2.OVERFLOW_POLICY_UNSPECIFIED, "wait": tagging_pb2.OVERFLOW_POLICY_WAIT,
            "fallback": tagging_pb2.OVERFLOW_POLICY_FALLBACK}


def ocr_mode(settings) -> int:
    """The OcrMode the run asks for."""
    if settings.ocr_regions:
        return common_pb2.OCR_MODE_TEXT_WITH_REGIONS
    return common_pb2.OCR_MODE_TEXT if settings.ocr else common_pb2.OCR_MODE_UNSPECIFIED


def ocr_line(path: Path, ocr: common_pb2.OcrResult, tagger: str) -> str:
    """What a person sees of one photo's text."""
    if ocr.status == common_pb2.OCR_STATUS_NOT_AVAILABLE:
        return f"text: {shown(path)}: not available ({tagger} answered; it cannot read text)"
    text = " / ".join(line.strip() for line in ocr.text.splitlines() if line.strip())
    regions = f" ({len(ocr.regions)} regions)" if ocr.regions else ""
    return f"text: {shown(path)}: {json.dumps(text, ensure_ascii=False) if text else 'none found'}{regions}"


@dataclass
class Photo:
    path: Path
    data: bytes
    sha256: str
    size: int
    mtime: float
    phash: int | None = None  # archivetag.phash, computed when the photo is sent to be stored


class NotSent(Exception):
    """A photo that cannot be sent (unreadable, over the size limit); the message says why."""


def read_photo(path: Path, max_photo_mb: int) -> Photo:
    """The photo's bytes, its size checked before reading (an over-limit file would end the stream):
    it must leave room for the request's other fields within the --max-photo-mb message. A file that
    changes while it is read (still being written) is not sent: its size, time and hash would disagree."""
    max_bytes = max_photo_mb * MIB - REQUEST_OVERHEAD
    try:
        with open(path, "rb") as file:
            before = os.fstat(file.fileno())
            if before.st_size > max_bytes:
                raise NotSent(f"{before.st_size / MIB:.1f} MiB, over the {max_bytes / MIB:.1f} MiB a request may "
                              "carry (--max-photo-mb; the orchestrator's --max-message-mb must allow it too)")
            data = file.read(max_bytes + 1)
            after = os.fstat(file.fileno())
    except OSError as exc:
        raise NotSent(f"cannot read it: {exc.strerror}") from None
    if len(data) != before.st_size or (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise NotSent("it changed while being read (still being written?): run tag again once it is complete")
    return Photo(path, data, hashlib.sha256(data).hexdigest(), len(data), before.st_mtime)


@dataclass
class Summary:
    total: int = 0
    skipped: int = 0
    tagged: int = 0
    failed: int = 0
    unreadable: int = 0
    seconds: float = 0.0


def say_above(progress, message: str) -> None:
    """A line above the progress bar, on stderr (tqdm.write defaults to stdout, even with the bar off)."""
    progress.write(message, file=sys.stderr)


class Tagger:
    """One import run: stream the photos, store or print each answer.

    No single file stops it: one that cannot be read or is over the size limit is reported
    and the rest go on; item ids are a counter, so any file name is fine. Photos another run
    on the same database has claimed are left to it (taken over if it goes away).
    """

    def __init__(self, settings, store: ResultStore | None, key: str, progress):
        self.settings = settings
        self.store = store
        self.key = key
        self.progress = progress
        self.summary = Summary()
        self.deferred: list[Path] = []  # claimed by another run on the same database

    def say(self, message: str) -> None:
        say_above(self.progress, message)

    def _advance(self) -> None:
        self.progress.update(1)
        self.progress.set_postfix(failed=self.summary.failed + self.summary.unreadable, refresh=False)

    def _record(self, photo: Photo, answer: ItemResult) -> None:
        error = answer.error
        if error is None:
            self.summary.tagged += 1
        else:
            self.summary.failed += 1
            self.say(f"failed: {shown(photo.path)}: {error.code.name} ({error.reason_name}): {error.message}")
        if self.store is not None:
            self.store.record(photo.path, photo.sha256, photo.size, photo.mtime, self.key, answer.response,
                              phash=photo.phash)
            if answer.ok and answer.result is not None and answer.result.HasField("ocr"):
                self.say(ocr_line(photo.path, answer.result.ocr, answer.result.tagger))
        else:
            print(json.dumps({"path": str(photo.path), "sha256": photo.sha256, **MessageToDict(answer.response)}),
                  flush=True)
        self._advance()

    def _not_sent(self, path: Path, reason: str) -> None:
        self.summary.unreadable += 1
        self.say(f"unreadable: {shown(path)}: {reason}")
        if self.store is not None:
            self.store.release(path)
        self._advance()

    async def run(self, client: AsyncTaggingClient, photos: list[Path] | AsyncIterator[Path]) -> None:
        """Stream the photos (a list, or the walk as it finds them: PhotoSource.photos); the client keeps the
        window, reopens a broken stream and resends."""
        self.next_id = 0
        if isinstance(photos, list) and not photos:
            return
        await self._stream(client, _each(photos) if isinstance(photos, list) else photos)
        while self.deferred:
            again = await self._take_deferred()
            if not again:
                return
            await self._stream(client, _each(again))

    async def _stream(self, client: AsyncTaggingClient, photos: AsyncIterator[Path]) -> None:
        sent: dict[str, Photo] = {}

        async def items():
            async for path in photos:
                index, self.next_id = self.next_id, self.next_id + 1
                if self.store is not None and self.store.claim(path):
                    self.deferred.append(path)  # another run on this database is tagging it
                    continue
                try:
                    photo = await asyncio.to_thread(read_photo, path, self.settings.max_photo_mb)
                except NotSent as exc:
                    self._not_sent(path, str(exc))
                    continue
                if self.store is not None and self.store.is_done(photo.sha256, self.key):
                    # Same content under another path, tagged earlier in this run or before.
                    self.store.link(photo.path, photo.sha256, photo.size, photo.mtime, self.key)
                    self.summary.skipped += 1
                    self._advance()
                    continue
                if self.store is not None:  # `duplicates` tells the same photo from similar ones by it
                    photo.phash = await asyncio.to_thread(photo_hash, photo.data)
                sent[str(index)] = photo
                # The database keeps each photo's SigLIP embedding, for `similar` and `duplicates`.
                yield TagItem(photo.data, id=str(index), max_tags=self.settings.max_tags, ocr=ocr_mode(self.settings),
                              include_embedding=self.store is not None, overflow=OVERFLOW[self.settings.overflow],
                              labels=labels.for_settings(self.settings))

        renewer = asyncio.create_task(self._renew_claims()) if self.store is not None else None
        try:
            async for answer in client.tag_many(items(), window=max(1, self.settings.concurrency)):
                self._record(sent.pop(answer.id), answer)
        finally:
            if renewer is not None:
                renewer.cancel()

    async def _take_deferred(self) -> list[Path]:
        """Photos another run had claimed: done by it now, or ours once it lets them go."""
        assert self.store is not None  # only claims in a database defer photos
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
                return mine
            if waiting and not announced:
                self.say(f"waiting for another `archivetag tag` on {self.store.path} to finish {len(waiting)} photos")
                announced = True
            await asyncio.sleep(0.5)
        return []

    async def _renew_claims(self) -> None:
        assert self.store is not None  # started only with a database
        while True:
            await asyncio.sleep(CLAIM_SECONDS / 3)
            self.store.renew_claims()


async def _each(paths: list[Path]) -> AsyncIterator[Path]:
    for path in paths:
        yield path


IDENTITY_WAIT_SECONDS = 60.0


def identities_known(status) -> bool:
    """Every backend the orchestrator uses serves and has told its model's identity."""
    return all(b.health == tagging_pb2.BACKEND_HEALTH_DISABLED
               or (b.health == tagging_pb2.BACKEND_HEALTH_SERVING and b.model.name) for b in status.backends)


async def settled_status(client: AsyncTaggingClient, say: Callable[[str], None]):
    """The orchestrator's status once it knows every model: the store's key is their identities,
    and it must not change between runs because the orchestrator had not yet reconnected to a
    backend (just after `up`) or a GetModelInfo timed out under load. After IDENTITY_WAIT_SECONDS,
    what is known (a backend that is down keeps the key of what it was last known as: none)."""
    deadline = time.monotonic() + IDENTITY_WAIT_SECONDS
    status = await client.status()
    while not identities_known(status) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        status = await client.status()
    if not identities_known(status):
        missing = [b.name for b in status.backends
                   if not b.model.name and b.health != tagging_pb2.BACKEND_HEALTH_DISABLED]
        say(f"the orchestrator does not know the models of {', '.join(missing)} (not serving): photos are "
            "keyed without them and will be tagged again once they serve")
    return status


async def tag_photos(settings, photos: list[Path] | PhotoSource, store: ResultStore | None, progress) -> Summary:
    """Tag the photos: a list, or the walk (PhotoSource, started by the caller) as it finds them. The walk
    checks each chunk against the store by stat and hands over only what must be read; the progress bar
    learns its total when the walk ends."""
    # A lost connection is retried with backoff (2 s doubling to 30 s), `--retries` times.
    retry = RetryPolicy(max_attempts=settings.retries + 1, initial_backoff=2.0, max_backoff=30.0)
    async with AsyncTaggingClient.from_settings(settings, retry=retry) as client:
        status = await settled_status(client, lambda text: say_above(progress, text))
        key = models_key([b.model for b in status.backends], ocr_mode(settings),
                         labels.digest(labels.for_settings(settings)))
        runner = Tagger(settings, store, key, progress)
        if isinstance(photos, PhotoSource):
            if store is not None:
                store.remember_models(key, [b.model for b in status.backends])
            photos.set_key(key if store is not None else None)

            def skipped(count: int) -> None:
                runner.summary.skipped += count
                progress.update(count)

            def walked(total: int) -> None:
                runner.summary.total = total
                progress.total = total
                progress.refresh()

            started = time.monotonic()
            await runner.run(client, photos.photos(skipped, lambda problem: runner.say(f"archivetag tag: {problem}"),
                                                   walked))
            runner.summary.seconds = time.monotonic() - started
            return runner.summary
        runner.summary.total = len(photos)
        todo = photos
        if store is not None:
            store.remember_models(key, [b.model for b in status.backends])
            todo = [p for p in photos if not store.path_is_done(p, key)]
            runner.summary.skipped = len(photos) - len(todo)
            progress.update(runner.summary.skipped)
        started = time.monotonic()
        await runner.run(client, todo)
        runner.summary.seconds = time.monotonic() - started
    return runner.summary


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    try:
        labels.for_settings(args)  # a bad --labels file stops the run before any photo is read
    except labels.LabelsError as exc:
        print(f"archivetag tag: --labels: {exc}", file=sys.stderr)
        return 2
    # The walk starts at once, in a thread, and tagging with the first photo it finds (archivetag.walk).
    db_path = None if args.json else Path(args.db or default_db_path())
    photos = PhotoSource(args.paths, args.all_files, args.follow_links, db_path).start()
    if not photos.wait_first():
        photos.close()
        for problem in photos.problems:
            print(f"archivetag tag: {problem}", file=sys.stderr)
        print("archivetag tag: no photos found", file=sys.stderr)
        return 2
    try:
        store = None if db_path is None else ResultStore(db_path)
    except StoreError as exc:
        photos.close()
        print(f"archivetag tag: {exc}", file=sys.stderr)
        return 2
    progress = tqdm(total=None, unit="photo", desc="tagging", disable=args.no_progress, file=sys.stderr,
                    dynamic_ncols=True)
    try:
        summary = asyncio.run(tag_photos(args, photos, store, progress))
        if store is not None and summary.tagged:  # the next `similar` or `duplicates` starts at once
            from archivetag import vector_index

            vector_index.update(store.db, store.path, lambda text: say_above(progress, text))
    except sqlite3.Error as exc:  # a full disk, a database another program broke: said, not a traceback
        progress.close()
        print(f"archivetag tag: cannot write the results to {store.path if store else 'the database'}: {exc}",
              file=sys.stderr)
        print("everything stored before is kept; free space (or fix the database) and run the same command again "
              "to resume", file=sys.stderr)
        return 2
    except ClientError as exc:
        progress.close()
        print(f"archivetag tag: {args.target}: {exc}", file=sys.stderr)
        print("everything answered so far is saved; run the same command again to resume", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        progress.close()
        print("interrupted: everything answered so far is saved; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        photos.close()
        if store is not None:
            store.close()
    progress.close()
    problems = photos.problems
    rate = summary.tagged / summary.seconds if summary.seconds else 0.0
    print(
        f"{summary.total} photos: {summary.tagged} tagged, {summary.skipped} already done, "
        f"{summary.failed} failed, {summary.unreadable} unreadable ({rate:.1f} photos/s)"
        + (f"; results in {store.path}" if store is not None else ""),
        file=sys.stderr,
    )
    return 1 if summary.failed or summary.unreadable or problems else 0
