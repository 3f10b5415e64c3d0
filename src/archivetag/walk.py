"""The photos under the paths given to `archivetag tag`, found as a stream.

walk_photos yields each photo as the walk reaches it (folder by folder, depth first, in name
order), so tagging starts with the first photo found; it keeps no list of what it found: its
memory is the folders still to visit and the listing of the folder at hand, whatever the size of
the archive. PhotoSource runs that walk in a thread beside the tagging, checks each chunk of
photos against the store by path, size and modification time (a photo unchanged since it was
tagged is counted, never opened), and hands the rest to the Tagger through a small queue.
"""

from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".heic", ".heif"}
# Photos checked against the store at a time: the first chunk is one photo (it is sent at once), then
# twice as many each time up to this.
MAX_CHUNK = 512
# Chunks waiting between the walk and the Tagger: the walk pauses when the Tagger is this far behind.
QUEUED_CHUNKS = 16


def shown(path: Path | str) -> str:
    """A path for messages and the terminal: odd bytes of a name that is not UTF-8 escaped (\\udcff), and
    control characters too (\\x1b), so a file name cannot write to the terminal (a fake "tagged" line)."""
    text = str(path).encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def walk_photos(paths: list[Path], problems: list[str], all_files: bool = False,
                follow_links: bool = False) -> Iterator[Path]:
    """The photo files under the paths given, each once, as they are found: folders walked without
    recursion (a tree of any depth), links to directories not descended, links to files outside the
    folders given skipped unless follow_links. Every path or folder that could not be read is appended
    to `problems` (said, never skipped silently).

    Each photo is yielded once without a set of everything found: folders are walked from their real
    path (a folder given inside another given folder is walked once, as part of it), a file given by
    name is left out of the walk, and a link to a photo the walk reaches anyway is left to the walk.
    Only links whose targets are yielded through them are remembered."""
    roots: list[Path] = []
    for path in paths:
        if path.is_dir():
            real = Path(os.path.realpath(path))
            if real not in roots:
                roots.append(real)
    roots = [r for r in roots if not any(r != other and r.is_relative_to(other) for other in roots)]
    given: set[Path] = set()
    through_links: set[Path] = set()

    def inside(target: Path) -> bool:
        return any(target.is_relative_to(root) for root in roots)

    def wanted(name: str) -> bool:
        return all_files or os.path.splitext(name)[1].lower() in PHOTO_SUFFIXES

    def through_link(link: str) -> Path | None:
        target = Path(os.path.realpath(link))
        if inside(target):
            if wanted(target.name) and target not in given:
                return None  # the walk yields it where it is
        elif not follow_links:
            problems.append(f"{shown(link)}: a link to {shown(target)}, outside the folders given: skipped "
                            "(--follow-links tags it)")
            return None
        if target in given or target in through_links:
            return None
        through_links.add(target)
        return target

    for path in paths:  # files given by name first: they are few, and remembered so the walk skips them
        if path.is_file() and not path.is_dir():
            real = path.resolve()
            if real not in given:
                given.add(real)
                yield real
        elif not path.is_dir():
            problems.append(f"{shown(path)}: not a regular file or folder" if path.exists()
                            else f"{shown(path)}: no such file or folder")
    for root in roots:
        folders = [str(root)]
        while folders:
            folder = folders.pop()
            try:
                with os.scandir(folder) as entries:
                    listed = sorted(entries, key=lambda e: e.name)
            except OSError as exc:
                problems.append(f"{shown(folder)}: cannot read this folder: {exc.strerror or exc}")
                continue
            subfolders = []
            for entry in listed:  # depth first, in name order
                try:
                    if entry.is_dir(follow_symlinks=False):
                        subfolders.append(entry.path)
                    elif wanted(entry.name) and entry.is_file(follow_symlinks=True):
                        if entry.is_symlink():
                            target = through_link(entry.path)
                            if target is not None:
                                yield target
                        elif not given or Path(entry.path) not in given:
                            yield Path(entry.path)
                except OSError as exc:
                    problems.append(f"{shown(entry.path)}: {exc.strerror or exc}")
            del listed
            folders.extend(reversed(subfolders))


def find_photos(paths: list[Path], all_files: bool = False,
                follow_links: bool = False) -> tuple[list[Path], list[str]]:
    """(photo files, problems): walk_photos, collected (for a few paths; `tag` streams)."""
    problems: list[str] = []
    return list(walk_photos(paths, problems, all_files, follow_links)), problems


def unchanged(db: sqlite3.Connection, found: list[tuple[Path, os.stat_result]], key: str) -> set[Path]:
    """The photos of `found` tagged OK by the model set `key` (with their embedding) whose path, size and
    modification time are those stored: done, without reading them (ResultStore.path_is_done, by the chunk)."""
    from archivetag.results import HAS_EMBEDDING, path_key

    by_key = {path_key(path): (path, stat) for path, stat in found}
    done: set[Path] = set()
    keys = list(by_key)
    for start in range(0, len(keys), 500):  # under SQLite's limit on bound parameters
        part = keys[start:start + 500]
        rows = db.execute(
            "SELECT f.path, f.size, f.mtime FROM files f JOIN results r ON r.id = f.result_id "
            f"WHERE f.path IN ({','.join('?' * len(part))}) AND r.models_key = ? AND r.status = 'ok' "
            f"AND {HAS_EMBEDDING}", (*part, key))
        for stored, size, mtime in rows:
            path, stat = by_key[stored]
            if stat.st_size == size and stat.st_mtime == mtime:
                done.add(path)
    return done


@dataclass
class Chunk:
    todo: list[Path]  # to read and send, in the walk's order
    skipped: int  # unchanged since tagged: not read
    problems: list[str] = field(default_factory=list)


class PhotoSource:
    """The walk, in a thread, feeding the Tagger chunk by chunk; the resume check by stat happens there too.

    Start it before connecting (the walk needs nothing from the orchestrator); `set_key` gives it the
    model set once known (with a store, photos wait in the thread until then). `found` is the number of
    photos found so far, final once `finished`."""

    def __init__(self, paths: list[Path], all_files: bool = False, follow_links: bool = False,
                 db_path: Path | None = None):
        self.paths, self.all_files, self.follow_links, self.db_path = paths, all_files, follow_links, db_path
        self.found = 0
        self.finished = False
        self.problems: list[str] = []
        self._queue: queue.Queue[Chunk | BaseException | None] = queue.Queue(QUEUED_CHUNKS)
        self._key: str | None = None
        self._key_known = threading.Event()
        self._first = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._walk, name="walk", daemon=True)
        self._db: sqlite3.Connection | None = None

    def start(self) -> PhotoSource:
        self._thread.start()
        return self

    def set_key(self, key: str | None) -> None:
        """The models key done photos are looked up by (None: no store, nothing is skipped)."""
        self._key = key
        self._key_known.set()

    def wait_first(self) -> bool:
        """Block until the walk found a photo (True) or ended without one (False)."""
        self._first.wait()
        return self.found > 0

    def close(self) -> None:
        self._stop.set()
        self._key_known.set()
        while self._thread.is_alive():  # unblock a walk waiting on a full queue
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass

    def _put(self, item: Chunk | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _walk(self) -> None:
        try:
            problems: list[str] = []
            batch: list[Path] = []
            size = 1
            for path in walk_photos(self.paths, problems, self.all_files, self.follow_links):
                self.found += 1
                self._first.set()
                batch.append(path)
                if len(batch) >= size:
                    if not self._put(self._check(batch, problems)):
                        return
                    batch, size = [], min(MAX_CHUNK, size * 2)
                    problems.clear()  # the walk goes on appending to this very list
            self.finished = True
            self._first.set()
            if batch or problems:
                self._put(self._check(batch, problems))
            self._put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the Tagger, which raises it
            self._first.set()
            self._put(exc)
        finally:
            if self._db is not None:
                self._db.close()

    def _check(self, batch: list[Path], problems: list[str]) -> Chunk:
        self.problems += problems
        if self.db_path is None or not batch:
            return Chunk(list(batch), 0, list(problems))
        self._key_known.wait()  # the store is open by then (the walk never creates the database)
        if self._key is None or self._stop.is_set():
            return Chunk(list(batch), 0, list(problems))
        if self._db is None:
            self._db = sqlite3.connect(self.db_path, timeout=30)
        found = []
        for path in batch:
            try:
                found.append((path, os.stat(path)))
            except OSError:
                pass  # reading it will say why
        done = unchanged(self._db, found, self._key)
        return Chunk([p for p in batch if p not in done], len(done), list(problems))

    async def chunks(self) -> AsyncIterator[Chunk]:
        """The chunks, as the walk hands them over; raises what broke the walk."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                item = await asyncio.to_thread(self._queue.get)
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def photos(self, skipped: Callable[[int], None], say: Callable[[str], None],
                     walked: Callable[[int], None]) -> AsyncIterator[Path]:
        """The photos to read, one by one; `skipped(n)` for those done, `say` for each problem met, `walked(total)`
        once the walk has ended."""
        told = False
        async for chunk in self.chunks():
            for problem in chunk.problems:
                say(problem)
            if chunk.skipped:
                skipped(chunk.skipped)
            if self.finished and not told:
                walked(self.found)
                told = True
            for path in chunk.todo:
                yield path
        if not told:
            walked(self.found)
