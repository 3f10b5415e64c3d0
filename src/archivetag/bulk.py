"""Tag photos (files and folders, recursively) through the orchestrator into SQLite.

Photos are streamed through TagImages (archivetag.client) with a bounded window; every answer is committed
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
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.json_format import MessageToDict

from archivetag.client import CLIENT_OPTIONS, AsyncTaggingClient, ClientError, ItemResult, RetryPolicy, TagItem
from archivetag.results import ResultStore, default_db_path, models_key
from archivetag.runtime.settings import Option, OptionGroup, parse_path

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".heic", ".heif"}

TAG_OPTIONS = OptionGroup(
    "tag",
    (
        Option("db", None, "SQLite database for the results (default: in the user's data directory).",
               parse_path, metavar="FILE"),
        Option("concurrency", 8, "Photos in flight at once.", int),
        Option("max_tags", 0, "At most this many tags per photo; 0: all.", int),
        Option("retries", 5, "Times a broken connection is retried (with backoff) before giving up.", int),
    ),
)
OPTION_GROUPS = [CLIENT_OPTIONS, TAG_OPTIONS]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="photos and folders (recursive)")
    parser.add_argument("--json", action="store_true", help="print one JSON result per photo instead of writing the database")
    parser.add_argument("--all-files", action="store_true", help="send every file, not only known photo extensions")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def find_photos(paths: list[Path], all_files: bool = False) -> tuple[list[Path], list[str]]:
    """(photo files, problems with the given paths)."""
    found, problems = [], []
    for path in paths:
        if path.is_dir():
            found += [p for p in sorted(path.rglob("*")) if p.is_file() and (all_files or p.suffix.lower() in PHOTO_SUFFIXES)]
        elif path.is_file():
            found.append(path)
        else:
            problems.append(f"{path}: no such file or folder")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return unique, problems


@dataclass
class Photo:
    path: Path
    data: bytes
    sha256: str
    size: int
    mtime: float


def read_photo(path: Path) -> Photo:
    data = path.read_bytes()
    stat = path.stat()
    return Photo(path, data, hashlib.sha256(data).hexdigest(), stat.st_size, stat.st_mtime)


@dataclass
class Summary:
    total: int = 0
    skipped: int = 0
    tagged: int = 0
    failed: int = 0
    unreadable: int = 0
    seconds: float = 0.0


class Tagger:
    """One import run: stream the photos, store or print each answer."""

    def __init__(self, settings, store: ResultStore | None, key: str, progress):
        self.settings = settings
        self.store = store
        self.key = key
        self.progress = progress
        self.summary = Summary()

    def say(self, message: str) -> None:
        """A line above the progress bar, on stderr (tqdm.write defaults to stdout, even with the bar off)."""
        self.progress.write(message, file=sys.stderr)

    def _record(self, photo: Photo, answer: ItemResult) -> None:
        if answer.ok:
            self.summary.tagged += 1
        else:
            self.summary.failed += 1
            self.say(f"failed: {photo.path}: {answer.error.code.name} ({answer.error.reason_name}): {answer.error.message}")
        if self.store is not None:
            self.store.record(photo.path, photo.sha256, photo.size, photo.mtime, self.key, answer.response)
        else:
            print(json.dumps({"path": str(photo.path), "sha256": photo.sha256, **MessageToDict(answer.response)}), flush=True)
        self.progress.update(1)
        self.progress.set_postfix(failed=self.summary.failed, refresh=False)

    async def run(self, client: AsyncTaggingClient, photos: list[Path]) -> None:
        """Stream the photos; the client keeps the window, reopens a broken stream and resends."""
        sent: dict[str, Photo] = {}

        async def items():
            for path in photos:
                try:
                    photo = await asyncio.to_thread(read_photo, path)
                except OSError as exc:
                    self.summary.unreadable += 1
                    self.say(f"unreadable: {path}: {exc.strerror}")
                    self.progress.update(1)
                    continue
                if self.store is not None and self.store.is_done(photo.sha256, self.key):
                    # Same content under another path, tagged earlier in this run or before.
                    self.store.link(photo.path, photo.sha256, photo.size, photo.mtime, self.key)
                    self.summary.skipped += 1
                    self.progress.update(1)
                    continue
                sent[str(path)] = photo
                yield TagItem(photo.data, id=str(path), max_tags=self.settings.max_tags)

        async for answer in client.tag_many(items(), window=max(1, self.settings.concurrency)):
            self._record(sent.pop(answer.id), answer)


async def tag_photos(settings, photos: list[Path], store: ResultStore | None, progress) -> Summary:
    # A lost connection is retried with backoff (2 s doubling to 30 s), `--retries` times.
    retry = RetryPolicy(max_attempts=settings.retries + 1, initial_backoff=2.0, max_backoff=30.0)
    async with AsyncTaggingClient.from_settings(settings, retry=retry) as client:
        status = await client.status()
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
        await runner.run(client, todo)
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
    store = None if args.json else ResultStore(args.db or default_db_path())
    progress = tqdm(total=len(photos), unit="photo", desc="tagging", disable=args.no_progress, file=sys.stderr,
                    dynamic_ncols=True)
    try:
        summary = asyncio.run(tag_photos(args, photos, store, progress))
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
