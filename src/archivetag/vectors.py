"""SigLIP embeddings in the result store, and exact cosine search over them.

    embeddings(result_id, space, dim, vector)   one row per result that has one

`space` is the models_key of the one SigLIP model that produced the vector (name, revision,
weights SHA-256; its description is in model_sets): vectors of different spaces are never
compared, so a model change can never mix two embedding geometries. Vectors are float32,
L2-normalised, so a dot product is the cosine similarity.

Search is exact, in numpy, over the space's vectors read into one matrix: sqlite-vec 0.1 also
scans every vector per query, and the Python sqlite3 module of many installs cannot load
extensions (docs/similar.md says why this was chosen and what it costs).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Set
from dataclasses import dataclass

import numpy as np

from archivetag.v1 import common_pb2, tagging_pb2

SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    result_id INTEGER PRIMARY KEY REFERENCES results(id) ON DELETE CASCADE,
    space TEXT NOT NULL,                 -- models_key of the SigLIP model that made it
    dim INTEGER NOT NULL,
    vector BLOB NOT NULL                 -- float32, little-endian, L2-normalised
);
CREATE INDEX IF NOT EXISTS embeddings_by_space ON embeddings(space);
CREATE INDEX IF NOT EXISTS files_by_result ON files(result_id);  -- a match's paths
"""

# Beyond this many linked pairs `duplicates` stops: the threshold is far below near-duplicates.
MAX_PAIRS = 2_000_000


def embedding_model(result: tagging_pb2.TagImageResponse) -> common_pb2.ModelIdentity | None:
    """The model that makes the answer's embedding: the view-type provider, the answering model that is not
    the tagger (None when none answered)."""
    return next((m for m in result.models if m.family != result.tagger), None)


def as_blob(embedding) -> bytes | None:
    """The stored form of an embedding: float32 little-endian, normalised; None when it is empty or zero."""
    vector = np.asarray(embedding, dtype="<f4")
    norm = float(np.linalg.norm(vector))
    if vector.size == 0 or not norm > 0:
        return None
    return (vector / norm).astype("<f4").tobytes()


def store(db: sqlite3.Connection, result_id: int, space: str, embedding) -> None:
    """Keep a result's embedding (inside the caller's transaction); an existing one stays."""
    blob = as_blob(embedding)
    if blob is not None:
        db.execute("INSERT OR IGNORE INTO embeddings (result_id, space, dim, vector) VALUES (?, ?, ?, ?)",
                   (result_id, space, len(blob) // 4, blob))


@dataclass
class Space:
    """The vectors of one embedding space: row i of `matrix` is result `result_ids[i]`."""

    space: str
    result_ids: np.ndarray
    matrix: np.ndarray

    def __len__(self) -> int:
        return len(self.result_ids)

    def nearest(self, query: np.ndarray, limit: int, exclude: Set[int] = frozenset()) -> list[tuple[int, float]]:
        """The `limit` results most similar to `query` (normalised): (result id, cosine), closest first."""
        if not len(self) or limit <= 0:
            return []
        sims = self.matrix @ query.astype(np.float32)
        take = min(len(sims), limit + len(exclude))
        top = np.argpartition(-sims, take - 1)[:take]
        top = top[np.argsort(-sims[top], kind="stable")]
        found = [(int(self.result_ids[i]), float(sims[i])) for i in top if int(self.result_ids[i]) not in exclude]
        return found[:limit]

    def pairs_at_least(self, threshold: float) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Every pair (i < j, row indexes) with cosine >= threshold, block by block (memory stays
        about 64 MiB whatever the count): (i's, j's, cosines)."""
        n = len(self)
        block = max(64, 2**24 // max(1, n))
        for start in range(0, n, block):
            sims = self.matrix[start:start + block] @ self.matrix[start:].T
            i, j = np.nonzero(sims >= threshold)
            above = j > i  # each pair once, never a row with itself
            i, j = i[above], j[above]
            yield start + i, start + j, sims[i, j]


def spaces(db: sqlite3.Connection) -> list[tuple[str, int]]:
    """(space, vectors) of every space in the store, the most recently used first."""
    return [(s, n) for s, n, _ in db.execute(
        "SELECT space, count(*), max(result_id) AS newest FROM embeddings GROUP BY space ORDER BY newest DESC")]


def load_space(db: sqlite3.Connection, space: str) -> Space:
    """The space's vectors of results some path still points at (a photo changed since is gone)."""
    rows = db.execute(
        "SELECT e.result_id, e.dim, e.vector FROM embeddings e WHERE e.space = ? "
        "AND EXISTS (SELECT 1 FROM files f WHERE f.result_id = e.result_id) ORDER BY e.result_id", (space,)).fetchall()
    dims = {dim for _, dim, _ in rows}
    if len(dims) > 1:
        raise ValueError(f"embedding space {space} holds vectors of widths {sorted(dims)}")
    dim = dims.pop() if dims else 0
    matrix = np.frombuffer(b"".join(blob for _, _, blob in rows), dtype="<f4").reshape(len(rows), dim)
    return Space(space, np.array([r for r, _, _ in rows], dtype=np.int64), matrix)


def stored_embedding(db: sqlite3.Connection, sha256: str) -> tuple[str, np.ndarray] | None:
    """(space, vector) of the newest good result for this content that has an embedding."""
    row = db.execute(
        "SELECT e.space, e.vector FROM embeddings e JOIN results r ON r.id = e.result_id "
        "WHERE r.sha256 = ? AND r.status = 'ok' ORDER BY r.id DESC LIMIT 1", (sha256,)).fetchone()
    return (row[0], np.frombuffer(row[1], dtype="<f4")) if row else None


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
                               "near-duplicates are far closer; raise --threshold")
        for i, j in zip(i_s.tolist(), j_s.tolist()):
            a, b = root(i), root(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for row in range(len(space)):
        groups.setdefault(root(row), []).append(row)
    return list(groups.values())
