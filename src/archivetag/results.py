"""The SQLite database of tagging results.

    files(path, sha256, size, mtime, result_id)   one row per photo path
    results(sha256, models_key, status, ...)       one row per photo content and model set
    tags, view_scores, result_models               the details of a result
    label_scores                                   the run's label set scored (tag --labels)
    ocr_texts, ocr_regions                          the text read in the photo, when it was asked for
    model_sets(models_key, models_json)            which models a key stands for
    claims(path, owner, expires_at)                photos a running `tag` is working on
    embeddings(result_id, space, dim, vector)      SigLIP embeddings, float16 (archivetag.vectors)
    photo_hashes(sha256, phash)                    perceptual hashes, for `duplicates` (archivetag.phash)

A photo is done when its content has an 'ok' result for the current model set (and OCR mode),
with its embedding (or marked degraded: SigLIP did not answer); then a re-run skips it, whatever
its path, and a later failure of the same content elsewhere never replaces that result. Every
answer is committed as it arrives (WAL mode). Paths are TEXT, except a name that is not valid
UTF-8: its raw bytes (os.fsencode) as a BLOB, so it round-trips exactly. Two runs on one
database split the work through claims. A store made before a table existed gains it when
opened (every table is CREATE ... IF NOT EXISTS).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import platformdirs
from google.protobuf.json_format import MessageToJson

from archivetag import vectors
from archivetag.v1 import common_pb2, tagging_pb2

SCHEMA = """
CREATE TABLE IF NOT EXISTS model_sets (
    models_key TEXT PRIMARY KEY,
    models_json TEXT NOT NULL,
    first_seen TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL,
    models_key TEXT NOT NULL REFERENCES model_sets(models_key),
    status TEXT NOT NULL,                -- 'ok' or 'error'
    error_status TEXT,                   -- gRPC status name, for errors
    error_message TEXT,
    tagger TEXT,                         -- 'florence' or 'rampp'
    fallback_reason TEXT,
    caption TEXT,
    view_type TEXT,
    view_confidence REAL,
    degraded INTEGER,
    degraded_reasons TEXT,               -- JSON list
    timings_json TEXT,                   -- JSON of StageTimings
    response BLOB,                       -- the TagImagesResponse as received (protobuf bytes)
    tagged_at TEXT NOT NULL,
    UNIQUE (sha256, models_key)
);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime REAL NOT NULL,
    result_id INTEGER REFERENCES results(id) ON DELETE SET NULL
);
CREATE TABLE IF NOT EXISTS tags (
    result_id INTEGER NOT NULL REFERENCES results(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    confidence REAL NOT NULL,
    source_model TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS view_scores (
    result_id INTEGER NOT NULL REFERENCES results(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    probability REAL NOT NULL,
    logit REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS result_models (
    result_id INTEGER NOT NULL REFERENCES results(id) ON DELETE CASCADE,
    family TEXT, name TEXT, revision TEXT, weights_sha256 TEXT, device TEXT, dtype TEXT, smoke INTEGER
);
CREATE TABLE IF NOT EXISTS ocr_texts (
    result_id INTEGER PRIMARY KEY REFERENCES results(id) ON DELETE CASCADE,
    status TEXT NOT NULL,                -- 'read', or 'not_available' (the tagger that answered cannot read)
    text TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ocr_regions (
    result_id INTEGER NOT NULL REFERENCES results(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,           -- Florence-2's order
    text TEXT NOT NULL,
    quad TEXT NOT NULL                   -- JSON [x1, y1, ..., x4, y4] in the photo's pixels
);
CREATE TABLE IF NOT EXISTS claims (
    path TEXT PRIMARY KEY,
    owner TEXT NOT NULL,                 -- 'host:pid:random' of the run
    expires_at REAL NOT NULL             -- unix time; the run renews it while alive
);
CREATE TABLE IF NOT EXISTS label_scores (
    result_id INTEGER NOT NULL REFERENCES results(id) ON DELETE CASCADE,
    name TEXT NOT NULL,                  -- a label of the run's label set (tag --labels)
    probability REAL NOT NULL,           -- SigLIP's sigmoid: independent per label
    logit REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS label_scores_by_result ON label_scores(result_id);
CREATE INDEX IF NOT EXISTS tags_by_name ON tags(name);
CREATE INDEX IF NOT EXISTS tags_by_result ON tags(result_id);
CREATE INDEX IF NOT EXISTS view_scores_by_result ON view_scores(result_id);
CREATE INDEX IF NOT EXISTS result_models_by_result ON result_models(result_id);
CREATE INDEX IF NOT EXISTS ocr_regions_by_result ON ocr_regions(result_id);
""" + vectors.SCHEMA
# A good result still lacks its embedding when it was stored before embeddings were (a re-run
# sends it again to add one; its tags stay) — unless SigLIP did not answer it (degraded).
HAS_EMBEDDING = "(r.degraded = 1 OR EXISTS (SELECT 1 FROM embeddings e WHERE e.result_id = r.id))"


def default_db_path() -> Path:
    return Path(platformdirs.user_data_dir("archivetag")) / "archivetag.sqlite"


def models_key(models: list[common_pb2.ModelIdentity], ocr: int = common_pb2.OCR_MODE_UNSPECIFIED,
               labels: str = "") -> str:
    """A short key for a set of models and what was asked of them: same names, revisions and weights (and
    OCR mode, and label set: labels.digest) → same key. Without OCR and labels the key is what it was before
    they existed."""
    identity: list[tuple[str, ...]] = sorted((m.family, m.name, m.revision, m.weights_sha256) for m in models)
    if ocr != common_pb2.OCR_MODE_UNSPECIFIED:
        identity.append(("ocr", common_pb2.OcrMode.Name(ocr)))
    if labels:
        identity.append(("labels", labels))
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


SQLITE_HEADER = b"SQLite format 3\x00"
CLAIM_SECONDS = 120.0


class StoreError(RuntimeError):
    """The database cannot be used; the message says why."""


def path_key(path: Path) -> str | bytes:
    """How a path is stored: its text, or its raw bytes when the name is not valid UTF-8."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path)
    return text


def path_from_key(value: str | bytes) -> Path:
    return Path(os.fsdecode(value))


def _owner_alive(owner: str) -> bool:
    """False only when the owner is a run on this host whose process has gone."""
    host, _, rest = owner.partition(":")
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(rest.partition(":")[0]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def _check_usable(path: Path) -> None:
    if path.is_dir():
        raise StoreError(f"{path} is a folder: give the path of a database file (it is created if missing)")
    if path.exists():
        try:
            with open(path, "rb") as f:
                header = f.read(len(SQLITE_HEADER))
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror}") from None
        if header and header != SQLITE_HEADER:
            raise StoreError(f"{path} is not an SQLite database: give another file, or move this one away")
        if not os.access(path, os.W_OK):
            raise StoreError(f"{path} is read-only: the results cannot be written (check its permissions)")
    if not os.access(path.parent, os.W_OK):
        raise StoreError(f"cannot write in {path.parent} (read-only?): SQLite keeps its journal beside the database")


class ResultStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._spaces_known: set[str] = set()  # embedding spaces this run has remembered in model_sets
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {self.path.parent}: {exc.strerror}") from None
        _check_usable(self.path)
        try:
            # A second run on the same database waits for the other's short writes.
            self.db = sqlite3.connect(self.path, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.executescript(SCHEMA)
            vectors.migrate(self.db)  # a store from before format 2: its float32 vectors become float16, once
        except sqlite3.Error as exc:
            raise StoreError(f"cannot use {self.path} as the results database: {exc}") from None

    def close(self) -> None:
        """Let go of this run's claims (photos sent but not answered: another run may take them) and close."""
        try:
            with self._writing():
                self.db.execute("DELETE FROM claims WHERE owner = ?", (self.owner,))
        except sqlite3.Error:
            pass  # a run that dies leaves its claims too; they are taken over once it is gone
        self.db.close()

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One write transaction, taken at once (a read turned write could fail under a second run)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.rollback()
            self._spaces_known.clear()  # what the transaction remembered is gone with it
            raise
        self.db.commit()

    # -- claims: two runs on one database do not tag the same photo -------------------------
    def claim(self, path: Path) -> str:
        """Claim a photo for this run: '' when it is ours now, else the run holding it."""
        key = path_key(path)
        now = time.time()
        with self._writing():
            row = self.db.execute("SELECT owner, expires_at FROM claims WHERE path = ?", (key,)).fetchone()
            if row and row[0] != self.owner and row[1] > now and _owner_alive(row[0]):
                return row[0]
            self.db.execute("INSERT OR REPLACE INTO claims (path, owner, expires_at) VALUES (?, ?, ?)",
                            (key, self.owner, now + CLAIM_SECONDS))
        return ""

    def release(self, path: Path) -> None:
        with self._writing():
            self._release(path)

    def _release(self, path: Path) -> None:
        self.db.execute("DELETE FROM claims WHERE path = ? AND owner = ?", (path_key(path), self.owner))

    def renew_claims(self) -> None:
        with self._writing():
            self.db.execute("UPDATE claims SET expires_at = ? WHERE owner = ?",
                            (time.time() + CLAIM_SECONDS, self.owner))

    def remember_models(self, key: str, models: list[common_pb2.ModelIdentity]) -> None:
        with self._writing():
            self._remember_models(key, models)

    def _remember_models(self, key: str, models: list[common_pb2.ModelIdentity]) -> None:
        description = json.dumps([json.loads(MessageToJson(m)) for m in models])
        self.db.execute(
            "INSERT OR IGNORE INTO model_sets (models_key, models_json, first_seen) VALUES (?, ?, ?)",
            (key, description, _now()),
        )

    def _ok_result(self, sha256: str, key: str, complete: bool = False) -> int | None:
        """The content's good result for the model set; complete: only one that needs nothing more (HAS_EMBEDDING)."""
        row = self.db.execute(
            "SELECT r.id FROM results r WHERE r.sha256 = ? AND r.models_key = ? AND r.status = 'ok'"
            + (f" AND {HAS_EMBEDDING}" if complete else ""), (sha256, key)
        ).fetchone()
        return row[0] if row else None

    def is_done(self, sha256: str, key: str) -> bool:
        return self._ok_result(sha256, key, complete=True) is not None

    def path_is_done(self, path: Path, key: str, ok_only: bool = True) -> bool:
        """Done without reading the file: same path, size and mtime as a photo tagged OK
        (or with any answer, when not `ok_only`). False when the file cannot be examined."""
        try:
            stat = path.stat()
        except OSError:
            return False  # reading it will say why
        row = self.db.execute(
            "SELECT f.sha256 FROM files f JOIN results r ON r.id = f.result_id "
            "WHERE f.path = ? AND f.size = ? AND f.mtime = ? AND r.models_key = ?"
            + (f" AND r.status = 'ok' AND {HAS_EMBEDDING}" if ok_only else ""),
            (path_key(path), stat.st_size, stat.st_mtime, key),
        ).fetchone()
        return row is not None

    def link(self, path: Path, sha256: str, size: int, mtime: float, key: str) -> None:
        """Point a path at the existing result for its content."""
        with self._writing():
            self._upsert_file(path, sha256, size, mtime, self._ok_result(sha256, key))
            self._release(path)

    def _upsert_file(self, path: Path, sha256: str, size: int, mtime: float, result_id: int | None) -> None:
        self.db.execute(
            "INSERT INTO files (path, sha256, size, mtime, result_id) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(path) DO UPDATE SET sha256=excluded.sha256, size=excluded.size, "
            "mtime=excluded.mtime, result_id=excluded.result_id",
            (path_key(path), sha256, size, mtime, result_id),
        )

    def record(self, path: Path, sha256: str, size: int, mtime: float, key: str,
               answer: tagging_pb2.TagImagesResponse, phash: int | None = None) -> int:
        """Store one answer (result or error) and its details, in one transaction, and drop the
        photo's claim. A good result of the same content stands: the path is linked to it
        whatever this answer says (an error elsewhere, or the same tags again), and gets this
        answer's embedding if it had none. The embedding is kept in its own table, not twice;
        the content's perceptual hash (phash, computed by `tag` from the file) beside it."""
        answer, embedding = _without_embedding(answer)
        with self._writing():
            self._release(path)
            vectors.store_hash(self.db, sha256, phash)
            good = self._ok_result(sha256, key)
            if good is not None:
                self._upsert_file(path, sha256, size, mtime, good)
                self._store_embedding(good, answer, embedding)
                return good
            self.db.execute("DELETE FROM results WHERE sha256 = ? AND models_key = ?", (sha256, key))
            if answer.WhichOneof("outcome") == "result":
                r = answer.result
                cursor = self.db.execute(
                    "INSERT INTO results (sha256, models_key, status, tagger, fallback_reason, caption, view_type, "
                    "view_confidence, degraded, degraded_reasons, timings_json, response, tagged_at) "
                    "VALUES (?, ?, 'ok', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (sha256, key, r.tagger, r.fallback_reason, r.caption, r.view_type.name, r.view_type.confidence,
                     int(r.degraded), json.dumps(list(r.degraded_reasons)), MessageToJson(r.timings),
                     answer.SerializeToString(), _now()),
                )
                result_id = cursor.lastrowid
                assert result_id is not None  # set by the INSERT
                self.db.executemany(
                    "INSERT INTO tags (result_id, name, confidence, source_model) VALUES (?, ?, ?, ?)",
                    [(result_id, t.name, t.confidence, t.source_model) for t in r.tags],
                )
                self.db.executemany(
                    "INSERT INTO view_scores (result_id, name, probability, logit) VALUES (?, ?, ?, ?)",
                    [(result_id, s.name, s.probability, s.logit) for s in r.view_type.scores],
                )
                self.db.executemany(
                    "INSERT INTO label_scores (result_id, name, probability, logit) VALUES (?, ?, ?, ?)",
                    [(result_id, s.name, s.probability, s.logit) for s in r.labels],
                )
                self.db.executemany(
                    "INSERT INTO result_models "
                    "(result_id, family, name, revision, weights_sha256, device, dtype, smoke) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(result_id, m.family, m.name, m.revision, m.weights_sha256, m.device, m.dtype, int(m.smoke))
                     for m in r.models],
                )
                if r.HasField("ocr"):
                    self._record_ocr(result_id, r.ocr)
                self._store_embedding(result_id, answer, embedding)
            else:
                e = answer.error
                cursor = self.db.execute(
                    "INSERT INTO results "
                    "(sha256, models_key, status, error_status, error_message, response, tagged_at) "
                    "VALUES (?, ?, 'error', ?, ?, ?, ?)",
                    (sha256, key, e.status, e.message, answer.SerializeToString(), _now()),
                )
                result_id = cursor.lastrowid
                assert result_id is not None  # set by the INSERT
            self._upsert_file(path, sha256, size, mtime, result_id)
            # Other paths with the same content follow the newest result.
            self.db.execute("UPDATE files SET result_id = ? WHERE sha256 = ? AND result_id IS NULL",
                            (result_id, sha256))
        return result_id

    def _record_ocr(self, result_id: int, ocr: common_pb2.OcrResult) -> None:
        status = common_pb2.OcrStatus.Name(ocr.status).removeprefix("OCR_STATUS_").lower()
        self.db.execute("INSERT INTO ocr_texts (result_id, status, text) VALUES (?, ?, ?)",
                        (result_id, status, ocr.text))
        self.db.executemany(
            "INSERT INTO ocr_regions (result_id, position, text, quad) VALUES (?, ?, ?, ?)",
            [(result_id, i, region.text, json.dumps([round(v, 1) for v in region.quad]))
             for i, region in enumerate(ocr.regions)],
        )

    def _store_embedding(self, result_id: int, answer: tagging_pb2.TagImagesResponse, embedding: list[float]) -> None:
        """Keep the embedding under the SigLIP model that made it (inside record's transaction)."""
        model = vectors.embedding_model(answer.result)
        if model is None or not embedding:
            return
        space = models_key([model])
        if space not in self._spaces_known:  # once per run, not per photo (it serialises the model to JSON)
            self._remember_models(space, [model])
            self._spaces_known.add(space)
        vectors.store(self.db, result_id, space, embedding)


def _without_embedding(answer: tagging_pb2.TagImagesResponse) -> tuple[tagging_pb2.TagImagesResponse, list[float]]:
    """(the answer without its embedding, the embedding): the response BLOB need not carry it too."""
    if answer.WhichOneof("outcome") != "result" or not answer.result.embedding:
        return answer, []
    stripped = tagging_pb2.TagImagesResponse()
    stripped.CopyFrom(answer)
    stripped.result.ClearField("embedding")
    return stripped, list(answer.result.embedding)
