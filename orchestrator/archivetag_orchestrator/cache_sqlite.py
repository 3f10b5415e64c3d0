"""The result cache in one SQLite file (the default on one box).

WAL mode, so readers never wait for the writer and several orchestrators on one box may share the
file. Bounded by bytes: a trigger keeps the total in a one-row table, and a write beyond the bound
evicts the least recently hit answers. Every call runs on one thread of its own, off the event loop.

A file another process holds locked costs a write at most BUSY_SECONDS (then it fails, counted, and the
answer goes uncached); a hit records its time only now and then (TOUCH_SECONDS), never waiting for the
lock, so reads do not write. A file that is not a usable database at start is moved aside (its name
plus .corrupt-TIME) and a new one made: the cache is only ever a copy of answers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from archivetag.runtime.logs import fields
from archivetag_orchestrator.cache import EVICTIONS

log = logging.getLogger("archivetag.orchestrator.cache")

BUSY_SECONDS = 0.25  # how long a write waits for a lock another connection holds
TOUCH_SECONDS = 60.0  # a hit's last_hit is written again only when older than this (LRU needs no more)

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (key BLOB PRIMARY KEY, value BLOB NOT NULL, size INTEGER NOT NULL,
                                    last_hit REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS results_by_last_hit ON results (last_hit);
CREATE TABLE IF NOT EXISTS totals (id INTEGER PRIMARY KEY CHECK (id = 0), entries INTEGER NOT NULL,
                                   bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO totals VALUES (0, 0, 0);
CREATE TRIGGER IF NOT EXISTS results_added AFTER INSERT ON results
  BEGIN UPDATE totals SET entries = entries + 1, bytes = bytes + NEW.size; END;
CREATE TRIGGER IF NOT EXISTS results_replaced AFTER UPDATE OF size ON results
  BEGIN UPDATE totals SET bytes = bytes - OLD.size + NEW.size; END;
CREATE TRIGGER IF NOT EXISTS results_removed AFTER DELETE ON results
  BEGIN UPDATE totals SET entries = entries - 1, bytes = bytes - OLD.size; END;
"""


class SqliteStore:
    name = "sqlite"

    def __init__(self, path: Path, max_bytes: int):
        self.path = Path(path).expanduser()
        self.max_bytes = max_bytes
        self.evictions = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="result-cache")
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:  # not a database, malformed: move it aside, start empty
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            for suffix in ("", "-wal", "-shm"):
                if Path(f"{self.path}{suffix}").exists():
                    os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
            log.warning("result cache file unusable: moved aside, starting a new one",
                        extra=fields(path=str(self.path), aside=str(aside), error=str(exc)))
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=BUSY_SECONDS)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: a crash may lose the last answers, never corrupt
            db.executescript(SCHEMA)
            (verdict,) = db.execute("PRAGMA quick_check(1)").fetchone()
            if verdict != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {verdict}")
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    async def _run(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    async def get(self, key: bytes) -> bytes | None:
        return await self._run(self._get, key)

    async def put(self, key: bytes, value: bytes) -> None:
        await self._run(self._put, key, value)

    async def delete(self, key: bytes) -> None:
        await self._run(self._delete, key)

    async def usage(self) -> tuple[int, int, int]:
        entries, size = await self._run(self._totals)
        return entries, size, self.evictions

    async def close(self) -> None:
        await self._run(self._db.close)
        self._thread.shutdown()

    # -- on the store's thread ------------------------------------------------------------
    def _totals(self) -> tuple[int, int]:
        return self._db.execute("SELECT entries, bytes FROM totals").fetchone()

    def _get(self, key: bytes) -> bytes | None:
        row = self._db.execute("SELECT value, last_hit FROM results WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        now = time.time()
        if now - row[1] > TOUCH_SECONDS:
            try:
                self._db.execute("UPDATE results SET last_hit = ? WHERE key = ?", (now, key))
            except sqlite3.OperationalError:
                pass  # locked by another writer: the hit stands, its time is recorded at a later one
        return row[0]

    def _delete(self, key: bytes) -> None:
        self._db.execute("DELETE FROM results WHERE key = ?", (key,))

    def _put(self, key: bytes, value: bytes) -> None:
        with self._db:  # one transaction: the answer and the evictions it makes room by
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO results VALUES (?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                "size = excluded.size, last_hit = excluded.last_hit", (key, value, len(value), time.time()))
            excess = self._totals()[1] - self.max_bytes
            if excess <= 0:
                return
            doomed, freed = [], 0
            for old_key, size in self._db.execute("SELECT key, size FROM results ORDER BY last_hit"):
                if freed >= excess:
                    break
                doomed.append((old_key,))
                freed += size
            self._db.executemany("DELETE FROM results WHERE key = ?", doomed)
        self.evictions += len(doomed)
        EVICTIONS.inc(len(doomed))
