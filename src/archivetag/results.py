"""The SQLite database of tagging results.

    files(path, sha256, size, mtime, result_id)   one row per photo path
    results(sha256, models_key, status, ...)       one row per photo content and model set
    tags, view_scores, result_models               the details of a result
    model_sets(models_key, models_json)            which models a key stands for

A photo is done when its content has an 'ok' result for the current model set; then a
re-run skips it, whatever its path. Every answer is committed as it arrives (WAL mode).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

import platformdirs
from google.protobuf.json_format import MessageToJson

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
CREATE INDEX IF NOT EXISTS tags_by_name ON tags(name);
CREATE INDEX IF NOT EXISTS tags_by_result ON tags(result_id);
CREATE INDEX IF NOT EXISTS view_scores_by_result ON view_scores(result_id);
CREATE INDEX IF NOT EXISTS result_models_by_result ON result_models(result_id);
"""


def default_db_path() -> Path:
    return Path(platformdirs.user_data_dir("archivetag")) / "archivetag.sqlite"


def models_key(models: list[common_pb2.ModelIdentity]) -> str:
    """A short key for a set of models: same names, revisions and weights → same key."""
    identity = sorted((m.family, m.name, m.revision, m.weights_sha256) for m in models)
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class ResultStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def remember_models(self, key: str, models: list[common_pb2.ModelIdentity]) -> None:
        description = json.dumps([json.loads(MessageToJson(m)) for m in models])
        with self.db:
            self.db.execute(
                "INSERT OR IGNORE INTO model_sets (models_key, models_json, first_seen) VALUES (?, ?, ?)",
                (key, description, _now()),
            )

    def _ok_result(self, sha256: str, key: str) -> int | None:
        row = self.db.execute(
            "SELECT id FROM results WHERE sha256 = ? AND models_key = ? AND status = 'ok'", (sha256, key)
        ).fetchone()
        return row[0] if row else None

    def is_done(self, sha256: str, key: str) -> bool:
        return self._ok_result(sha256, key) is not None

    def path_is_done(self, path: Path, key: str) -> bool:
        """Done without reading the file: same path, size and mtime as a photo tagged OK."""
        stat = path.stat()
        row = self.db.execute(
            "SELECT f.sha256 FROM files f JOIN results r ON r.id = f.result_id "
            "WHERE f.path = ? AND f.size = ? AND f.mtime = ? AND r.models_key = ? AND r.status = 'ok'",
            (str(path), stat.st_size, stat.st_mtime, key),
        ).fetchone()
        return row is not None

    def link(self, path: Path, sha256: str, size: int, mtime: float, key: str) -> None:
        """Point a path at the existing result for its content."""
        with self.db:
            self._upsert_file(path, sha256, size, mtime, self._ok_result(sha256, key))

    def _upsert_file(self, path: Path, sha256: str, size: int, mtime: float, result_id: int | None) -> None:
        self.db.execute(
            "INSERT INTO files (path, sha256, size, mtime, result_id) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(path) DO UPDATE SET sha256=excluded.sha256, size=excluded.size, "
            "mtime=excluded.mtime, result_id=excluded.result_id",
            (str(path), sha256, size, mtime, result_id),
        )

    def record(self, path: Path, sha256: str, size: int, mtime: float, key: str,
               answer: tagging_pb2.TagImagesResponse) -> int:
        """Store one answer (result or error) and its details, in one transaction."""
        with self.db:
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
                self.db.executemany(
                    "INSERT INTO tags (result_id, name, confidence, source_model) VALUES (?, ?, ?, ?)",
                    [(result_id, t.name, t.confidence, t.source_model) for t in r.tags],
                )
                self.db.executemany(
                    "INSERT INTO view_scores (result_id, name, probability, logit) VALUES (?, ?, ?, ?)",
                    [(result_id, s.name, s.probability, s.logit) for s in r.view_type.scores],
                )
                self.db.executemany(
                    "INSERT INTO result_models (result_id, family, name, revision, weights_sha256, device, dtype, smoke) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(result_id, m.family, m.name, m.revision, m.weights_sha256, m.device, m.dtype, int(m.smoke))
                     for m in r.models],
                )
            else:
                e = answer.error
                cursor = self.db.execute(
                    "INSERT INTO results (sha256, models_key, status, error_status, error_message, response, tagged_at) "
                    "VALUES (?, ?, 'error', ?, ?, ?, ?)",
                    (sha256, key, e.status, e.message, answer.SerializeToString(), _now()),
                )
                result_id = cursor.lastrowid
            self._upsert_file(path, sha256, size, mtime, result_id)
            # Other paths with the same content follow the newest result.
            self.db.execute("UPDATE files SET result_id = ? WHERE sha256 = ? AND result_id IS NULL", (result_id, sha256))
        return result_id
