"""SigLIP embeddings and perceptual hashes in the result store, and exact cosine search over them.

    embeddings(result_id, space, dim, vector)   one row per result that has one
    photo_hashes(sha256, phash)                  a 64-bit perceptual hash per photo content (archivetag.phash)
    embedding_format(version)                    2: the vectors are float16 (old stores are converted once)

`space` is the models_key of the one SigLIP model that produced the vector (name, revision,
weights SHA-256; its description is in model_sets): vectors of different spaces are never
compared, so a model change can never mix two embedding geometries. Vectors are stored as
float16 (half the bytes of float32; docs/similar.md measures what it changes), L2-normalised,
so a dot product is the cosine similarity; search computes in float32.

Small spaces are searched exactly here, in numpy; large ones through a persisted approximate
index built from these rows (archivetag.vector_index; docs/similar.md says why).
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Iterator, Set
from dataclasses import dataclass

import numpy as np

from archivetag.v1 import common_pb2, tagging_pb2

SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    result_id INTEGER PRIMARY KEY REFERENCES results(id) ON DELETE CASCADE,
    space TEXT NOT NULL,                 -- models_key of the SigLIP model that made it
    dim INTEGER NOT NULL,
    vector BLOB NOT NULL                 -- float16 (float32 before format 2), little-endian, L2-normalised
);
CREATE INDEX IF NOT EXISTS embeddings_by_space ON embeddings(space);
CREATE INDEX IF NOT EXISTS files_by_result ON files(result_id);  -- a match's paths
CREATE TABLE IF NOT EXISTS photo_hashes (
    sha256 TEXT PRIMARY KEY,             -- the photo's content
    phash INTEGER NOT NULL               -- 64-bit DCT perceptual hash (archivetag.phash), as a signed integer
);
CREATE TABLE IF NOT EXISTS embedding_format (
    version INTEGER NOT NULL             -- 2: every vector is float16
);
"""
# The stored width of one number: float16 now; a float32 vector (4 bytes) is a store from before format 2.
STORED = np.dtype("<f2")
FORMAT = 2
# Rows converted per transaction when an old store's float32 vectors become float16.
MIGRATE_CHUNK = 5000

# Beyond this many linked pairs `duplicates` stops: the threshold is far below near-duplicates.
MAX_PAIRS = 2_000_000


def embedding_model(result: tagging_pb2.TagImageResponse) -> common_pb2.ModelIdentity | None:
    """The model that makes the answer's embedding: the view-type provider, the answering model that is not
    the tagger (None when none answered)."""
    return next((m for m in result.models if m.family != result.tagger), None)


def normalised(embedding) -> np.ndarray | None:
    """The embedding as a float32 unit vector; None when it is empty or zero."""
    vector = np.asarray(embedding, dtype=np.float32)
    norm = float(np.linalg.norm(vector))
    if vector.size == 0 or not norm > 0:
        return None
    return vector / norm


def as_blob(embedding) -> bytes | None:
    """The stored form of an embedding: float16 little-endian, normalised; None when it is empty or zero."""
    vector = normalised(embedding)
    return None if vector is None else vector.astype(STORED).tobytes()


def from_blob(blob: bytes, dim: int) -> np.ndarray:
    """A stored vector as a float32 unit vector, whichever width it was stored in (float16, or float32 before
    format 2): normalised again, so that a photo's similarity to itself prints as 1.0000."""
    vector = np.frombuffer(blob, dtype="<f4" if len(blob) == 4 * dim else STORED).astype(np.float32)
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def store(db: sqlite3.Connection, result_id: int, space: str, embedding) -> None:
    """Keep a result's embedding (inside the caller's transaction); an existing one stays."""
    blob = as_blob(embedding)
    if blob is not None:
        db.execute("INSERT OR IGNORE INTO embeddings (result_id, space, dim, vector) VALUES (?, ?, ?, ?)",
                   (result_id, space, len(blob) // STORED.itemsize, blob))


def store_hash(db: sqlite3.Connection, sha256: str, phash: int | None) -> None:
    """Keep a photo content's perceptual hash (inside the caller's transaction)."""
    if phash is not None:
        db.execute("INSERT OR IGNORE INTO photo_hashes (sha256, phash) VALUES (?, ?)",
                   (sha256, phash - (1 << 64) if phash >= 1 << 63 else phash))


def hashes_of(db: sqlite3.Connection, result_ids: list[int]) -> dict[int, int]:
    """The perceptual hash (unsigned 64-bit) of each result's content that has one."""
    found: dict[int, int] = {}
    chunk = 500  # under SQLite's limit on bound parameters
    for start in range(0, len(result_ids), chunk):
        part = result_ids[start:start + chunk]
        marks = ",".join("?" * len(part))
        for result_id, phash in db.execute(f"SELECT r.id, h.phash FROM results r JOIN photo_hashes h "
                                           f"ON h.sha256 = r.sha256 WHERE r.id IN ({marks})", part):
            found[result_id] = phash & ((1 << 64) - 1)
    return found


def migrate(db: sqlite3.Connection) -> int:
    """Convert an old store's float32 vectors to float16, once, re-tagging nothing: rows in result-id order,
    MIGRATE_CHUNK per transaction (an interrupted conversion goes on where it stopped; each row is converted
    at most once, whoever does it). Returns the vectors converted."""
    if db.execute("SELECT 1 FROM embedding_format").fetchone():
        return 0
    converted, after, said = 0, -1, False
    while True:
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = db.execute("SELECT result_id, dim, vector FROM embeddings WHERE result_id > ? "
                              "ORDER BY result_id LIMIT ?", (after, MIGRATE_CHUNK)).fetchall()
            old = [(np.frombuffer(blob, "<f4").astype(STORED).tobytes(), result_id)
                   for result_id, dim, blob in rows if len(blob) == 4 * dim]
            db.executemany("UPDATE embeddings SET vector = ? WHERE result_id = ?", old)
            if len(rows) < MIGRATE_CHUNK:
                db.execute("DELETE FROM embedding_format")
                db.execute("INSERT INTO embedding_format (version) VALUES (?)", (FORMAT,))
        except BaseException:
            db.rollback()
            raise
        db.commit()
        converted += len(old)
        if converted and not said and len(rows) == MIGRATE_CHUNK:
            print("archivetag: converting the stored embeddings to half precision (once; nothing is tagged again)",
                  file=sys.stderr)
            said = True
        if len(rows) < MIGRATE_CHUNK:
            return converted
        after = rows[-1][0]


# Rows of a space's matrix turned into float32 at a time (the matrix itself stays float16: half the memory).
SCAN_ROWS = 65536


@dataclass
class Space:
    """The vectors of one embedding space: row i of `matrix` (float16) is result `result_ids[i]`."""

    space: str
    result_ids: np.ndarray
    matrix: np.ndarray

    def __len__(self) -> int:
        return len(self.result_ids)

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.matrix[start:stop].astype(np.float32)

    def nearest(self, query: np.ndarray, limit: int, exclude: Set[int] = frozenset()) -> list[tuple[int, float]]:
        """The `limit` results most similar to `query` (normalised): (result id, cosine), closest first."""
        if not len(self) or limit <= 0:
            return []
        query = query.astype(np.float32)
        sims = np.concatenate([self.rows(s, s + SCAN_ROWS) @ query for s in range(0, len(self), SCAN_ROWS)])
        take = min(len(sims), limit + len(exclude))
        top = np.argpartition(-sims, take - 1)[:take]
        top = top[np.argsort(-sims[top], kind="stable")]
        found = [(int(self.result_ids[i]), float(sims[i])) for i in top if int(self.result_ids[i]) not in exclude]
        return found[:limit]

    def pairs_at_least(self, threshold: float) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Every pair (i < j, row indexes) with cosine >= threshold, block by block (memory stays
        about 64 MiB whatever the count): (i's, j's, cosines). O(n²): for small spaces, or --exact."""
        n = len(self)
        block = max(64, 2**24 // max(1, n))
        for start in range(0, n, block):
            left = self.rows(start, start + block)
            for other in range(start, n, SCAN_ROWS):
                sims = left @ self.rows(other, other + SCAN_ROWS).T
                i, j = np.nonzero(sims >= threshold)
                above = other + j > start + i  # each pair once, never a row with itself
                i, j = i[above], j[above]
                yield start + i, other + j, sims[i, j]


def spaces(db: sqlite3.Connection) -> list[tuple[str, int]]:
    """(space, vectors) of every space in the store, the most recently used first."""
    return [(s, n) for s, n, _ in db.execute(
        "SELECT space, count(*), max(result_id) AS newest FROM embeddings GROUP BY space ORDER BY newest DESC")]


def iter_vectors(db: sqlite3.Connection, space: str, after: int = -1, chunk: int = 20000,
                 only_linked: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The space's vectors with result id > `after`, in result-id order, `chunk` rows at a time:
    (result ids, float16 matrix). only_linked: only results some path still points at."""
    linked = " AND EXISTS (SELECT 1 FROM files f WHERE f.result_id = e.result_id)" if only_linked else ""
    while True:
        rows = db.execute(f"SELECT e.result_id, e.dim, e.vector FROM embeddings e WHERE e.space = ? "
                          f"AND e.result_id > ?{linked} ORDER BY e.result_id LIMIT ?", (space, after, chunk)).fetchall()
        if not rows:
            return
        dims = {dim for _, dim, _ in rows}
        if len(dims) > 1:
            raise ValueError(f"embedding space {space} holds vectors of widths {sorted(dims)}")
        dim = dims.pop()
        matrix = np.empty((len(rows), dim), dtype=STORED)
        for n, (_, _, blob) in enumerate(rows):
            matrix[n] = from_blob(blob, dim) if len(blob) != STORED.itemsize * dim else np.frombuffer(blob, STORED)
        yield np.array([r for r, _, _ in rows], dtype=np.int64), matrix
        after = rows[-1][0]


def load_space(db: sqlite3.Connection, space: str) -> Space:
    """The space's vectors of results some path still points at (a photo changed since is gone)."""
    ids, parts = [], []
    for chunk_ids, matrix in iter_vectors(db, space, only_linked=True):
        ids.append(chunk_ids)
        parts.append(matrix)
    if not parts:
        return Space(space, np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=STORED))
    if len({m.shape[1] for m in parts}) > 1:
        raise ValueError(f"embedding space {space} holds vectors of widths {sorted({m.shape[1] for m in parts})}")
    return Space(space, np.concatenate(ids), np.concatenate(parts))


def stored_embedding(db: sqlite3.Connection, sha256: str) -> tuple[str, np.ndarray] | None:
    """(space, float32 vector) of the newest good result for this content that has an embedding."""
    row = db.execute(
        "SELECT e.space, e.dim, e.vector FROM embeddings e JOIN results r ON r.id = e.result_id "
        "WHERE r.sha256 = ? AND r.status = 'ok' ORDER BY r.id DESC LIMIT 1", (sha256,)).fetchone()
    return (row[0], from_blob(row[2], row[1])) if row else None


def vectors_of(db: sqlite3.Connection, result_ids: list[int]) -> dict[int, np.ndarray]:
    """The stored float32 vector of each result given that has one."""
    found: dict[int, np.ndarray] = {}
    chunk = 500  # under SQLite's limit on bound parameters
    for start in range(0, len(result_ids), chunk):
        part = result_ids[start:start + chunk]
        marks = ",".join("?" * len(part))
        for result_id, dim, blob in db.execute(
                f"SELECT result_id, dim, vector FROM embeddings WHERE result_id IN ({marks})", part):
            found[result_id] = from_blob(blob, dim)
    return found


def paths_of(db: sqlite3.Connection, result_ids: list[int]) -> dict[int, list[str | bytes]]:
    """The stored paths (path keys) pointing at each result, sorted."""
    found: dict[int, list[str | bytes]] = {r: [] for r in result_ids}
    chunk = 500  # under SQLite's limit on bound parameters
    for start in range(0, len(result_ids), chunk):
        part = result_ids[start:start + chunk]
        marks = ",".join("?" * len(part))
        for result_id, path in db.execute(f"SELECT result_id, path FROM files WHERE result_id IN ({marks})", part):
            found[result_id].append(path)
    for paths in found.values():
        paths.sort(key=lambda p: p if isinstance(p, bytes) else p.encode("utf-8"))
    return found


def model_of_space(db: sqlite3.Connection, space: str) -> dict:
    """The SigLIP model a space stands for (as remembered in model_sets)."""
    row = db.execute("SELECT models_json FROM model_sets WHERE models_key = ?", (space,)).fetchone()
    models = json.loads(row[0]) if row else []
    return models[0] if models else {}


class TooManyPairs(ValueError):
    """The threshold links so many pairs that it cannot be about near-duplicates."""


def components(space: Space, threshold: float) -> list[list[int]]:
    """Connected components (row indexes) of the graph linking rows with cosine >= threshold:
    single linkage, so a chain a~b~c is one group even when a and c are further apart."""
    parent = list(range(len(space)))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    pairs = 0
    for i_s, j_s, _ in space.pairs_at_least(threshold):
        pairs += len(i_s)
        if pairs > MAX_PAIRS:
            raise TooManyPairs(f"a threshold of {threshold} links more than {MAX_PAIRS:,} pairs of photos: "
                               "near-duplicates are far closer; raise --similar-threshold")
        for i, j in zip(i_s.tolist(), j_s.tolist()):
            a, b = root(i), root(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for row in range(len(space)):
        groups.setdefault(root(row), []).append(row)
    return list(groups.values())
