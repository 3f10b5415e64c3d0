"""The approximate index of a large embedding space: faiss IVF with float16 codes, persisted beside the store.

Below EXACT_BELOW vectors a space is searched exactly (archivetag.vectors.Space): the index would
buy nothing there. From EXACT_BELOW on, `similar` and `duplicates` search an inverted-file index
(faiss `IndexIVFScalarQuantizer`, QT_fp16): the vectors are split into about √n lists by k-means,
each vector is kept (as the same float16 numbers the store holds) in the list of its nearest
centroid, and a query scans only the lists whose centroids are nearest to it (NPROBE of them).

    <database>-index/<space>.json                which file holds the index, and which rows it covers
    <database>-index/<space>-<rows>-<random>.faiss   the faiss index (ids are result ids)

The index follows the embeddings table: every search first adds the rows stored since (result ids
above the last covered), and `tag` does the same at the end of a run that stored embeddings, so the
next search starts at once. When rows it covered are gone, or the space grew far beyond what its
centroids were trained on (GROWTH), it is built again. Files are written whole and then renamed,
under a lock file, so an interrupted update or two commands at once never leave a broken index.

`duplicates` walks the index's lists (near_pairs): every pair inside one list is compared exactly
(a matrix product of the float16 vectors, in float32), and a vector near a list boundary also against
the lists of its next nearest centroids (up to PROBES - 1 more, those within MARGIN of its own
centroid's cosine; chosen when the vector is added and kept beside the index), so two near-duplicates
split by a boundary are still found. The cosines are exact; only which pairs are compared is not.
Recall against exact search: benchmarks/archive_scale_bench.py, tests/similar/test_index.py.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import uuid
from collections.abc import Iterator, Set
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from archivetag import vectors


class _Faiss:
    """faiss, imported at first use rather than with this module (issue 28): `archivetag`'s parser imports
    `similar` and `duplicates`, which import this module, and an air-gapped GPU box's install carries no
    faiss-cpu (about 30 MB; only large `similar`/`duplicates` searches need it)."""

    def __getattr__(self, name: str) -> Any:
        import faiss as module

        return getattr(module, name)


faiss: Any = _Faiss()

EXACT_BELOW = 20_000  # vectors; smaller spaces are searched exactly
NPROBE = 32  # lists a `similar` query scans
PROBES = 4  # lists each vector may be compared within by `duplicates`: its own and up to 3 next nearest,
MARGIN = 0.05  # those whose centroid is within this cosine of its own centroid's (a vector near a boundary)
LISTS_PER_SQRT = 2  # lists: this many times the square root of the vectors
GROWTH = 8  # rebuilt (centroids trained again) once the space holds this many times what it held when built
TRAIN_PER_LIST = 40  # training vectors per list (faiss wants at least 39)
CHUNK = 20000  # rows read from the store at a time


def index_folder(db_path: Path) -> Path:
    return Path(db_path).with_name(Path(db_path).name + "-index")


def _safe_name(space: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in space)


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class IndexedSpace:
    """A space searched through its faiss index; the same questions as vectors.Space."""

    def __init__(self, space: str, index, meta: dict, probes: tuple[np.ndarray, np.ndarray]):
        self.space = space
        self.index = index
        self.meta = meta
        self.probe_ids, self.probe_lists = probes  # by result id: the next nearest lists of each vector
        self.ivf = faiss.extract_index_ivf(index)
        self.dim = int(index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def nlist(self) -> int:
        return int(self.ivf.nlist)

    def nearest(self, query: np.ndarray, limit: int, exclude: Set[int] = frozenset()) -> list[tuple[int, float]]:
        """The `limit` results most similar to `query` found in the NPROBE nearest lists: (result id, cosine)."""
        if not len(self) or limit <= 0:
            return []
        self.ivf.nprobe = min(NPROBE, self.nlist)
        take = min(len(self), limit + len(exclude))
        sims, ids = self.index.search(query.astype(np.float32)[None, :], take)
        found = [(int(i), float(s)) for i, s in zip(ids[0], sims[0]) if i >= 0 and int(i) not in exclude]
        return found[:limit]

    def _list(self, number: int) -> tuple[np.ndarray, np.ndarray]:
        """(result ids, float16 vectors) of one inverted list: views of the index's own memory."""
        invlists = self.ivf.invlists
        assert invlists is not None  # an IVF index always has its lists
        size = invlists.list_size(number)
        if not size:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.dim), dtype=np.float16)
        ids = faiss.rev_swig_ptr(invlists.get_ids(number), size)
        codes = faiss.rev_swig_ptr(invlists.get_codes(number), size * invlists.code_size)
        return ids, codes.view(np.float16).reshape(size, self.dim)

    def near_pairs(self, threshold: float) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Pairs of result ids with cosine >= threshold (each pair at least once): within every list, and
        each vector against the lists of its next PROBES - 1 nearest centroids. (a's, b's, cosines)."""
        lists = [self._list(n) for n in range(self.nlist)]
        probe_vectors: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (from list, row in it, to list)
        for number, (ids, codes) in enumerate(lists):
            if not len(ids):
                continue
            for start in range(0, len(ids), 4096):  # bounds the similarity block at 4096 × list size
                block = codes[start:start + 4096].astype(np.float32)
                sims = block @ codes[start:].astype(np.float32).T
                i, j = np.nonzero(sims >= threshold)
                keep = j > i
                i, j = i[keep], j[keep]
                yield ids[start + i], ids[start + j], sims[i, j]
            if self.probe_lists.shape[1]:
                at = np.searchsorted(self.probe_ids, ids)
                for column in range(self.probe_lists.shape[1]):
                    targets = self.probe_lists[at, column]
                    rows = np.flatnonzero((targets != number) & (targets >= 0))
                    probe_vectors.append((np.full(len(rows), number), rows, targets[rows]))
        if not probe_vectors:
            return
        source = np.concatenate([p[0] for p in probe_vectors])
        row = np.concatenate([p[1] for p in probe_vectors])
        target = np.concatenate([p[2] for p in probe_vectors])
        order = np.lexsort((source, target))
        source, row, target = source[order], row[order], target[order]
        starts = np.flatnonzero(np.r_[True, target[1:] != target[:-1]])
        for first, stop in zip(starts, np.r_[starts[1:], len(target)]):
            ids, codes = lists[int(target[first])]
            if not len(ids):
                continue
            against = codes.astype(np.float32).T
            cut = first + np.flatnonzero(np.r_[True, source[first + 1:stop] != source[first:stop - 1]])
            pieces = [(lists[int(source[a])], row[a:b]) for a, b in zip(cut, np.r_[cut[1:], stop])]
            query_ids = np.concatenate([found[0][rows] for found, rows in pieces])
            queries = np.concatenate([found[1][rows] for found, rows in pieces]).astype(np.float32)
            for start in range(0, len(queries), 4096):
                sims = queries[start:start + 4096] @ against
                i, j = np.nonzero(sims >= threshold)
                yield query_ids[start + i], ids[j], sims[i, j]

def _count(db: sqlite3.Connection, space: str, after: int = -1) -> int:
    return db.execute("SELECT count(*) FROM embeddings WHERE space = ? AND result_id > ?", (space, after)).fetchone()[0]


def _training_sample(db: sqlite3.Connection, space: str, size: int, seed: int = 0) -> np.ndarray:
    ids = np.array([r for (r,) in db.execute("SELECT result_id FROM embeddings WHERE space = ?", (space,))],
                   dtype=np.int64)
    chosen = np.sort(np.random.default_rng(seed).choice(ids, min(size, len(ids)), replace=False)).tolist()
    found = vectors.vectors_of(db, chosen)
    return np.stack([found[r] for r in chosen if r in found]).astype(np.float32)


def _new_index(db: sqlite3.Connection, space: str, total: int, dim: int):
    nlist = int(min(65536, max(16, round(LISTS_PER_SQRT * np.sqrt(total)))))
    sample = _training_sample(db, space, nlist * TRAIN_PER_LIST)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_fp16,
                                          faiss.METRIC_INNER_PRODUCT)
    index.by_residual = False  # the codes are the vectors themselves (float16), not their offsets from a centroid
    index.cp.niter = 10
    index.train(sample)
    return index, len(sample)


def _read_meta(folder: Path, space: str) -> dict | None:
    try:
        meta = json.loads((folder / f"{_safe_name(space)}.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("space") == space else None


def _write(folder: Path, space: str, index, meta: dict, probes: tuple[np.ndarray, np.ndarray]) -> dict:
    name = f"{_safe_name(space)}-{meta['covered_through']}-{uuid.uuid4().hex[:8]}.faiss"
    partial = folder / (name + ".partial")
    faiss.write_index(index, str(partial))
    os.replace(partial, folder / name)
    with open(folder / (name + ".probes.partial"), "wb") as file:
        np.savez(file, ids=probes[0], lists=probes[1])
    os.replace(folder / (name + ".probes.partial"), folder / (name + ".probes.npz"))
    old, old_probes = meta.get("file"), meta.get("probes")
    meta = {**meta, "file": name, "probes": name + ".probes.npz", "count": int(index.ntotal)}
    partial_meta = folder / f"{_safe_name(space)}.json.partial"
    partial_meta.write_text(json.dumps(meta))
    os.replace(partial_meta, folder / f"{_safe_name(space)}.json")
    for stale in (old, old_probes):
        if stale and stale not in (name, meta["probes"]):
            (folder / stale).unlink(missing_ok=True)
    return meta


def _add_rows(db: sqlite3.Connection, space: str, index, after: int,
              probes: tuple[np.ndarray, np.ndarray]) -> tuple[int, tuple[np.ndarray, np.ndarray]]:
    """Add the space's rows with result id > after, each to the list of its nearest centroid, and remember
    its next PROBES - 1 nearest lists (near_pairs compares it there too): (the last result id added, the
    probes by result id)."""
    ivf = faiss.extract_index_ivf(index)
    ids_parts, lists_parts = [probes[0]], [probes[1]]
    for ids, matrix in vectors.iter_vectors(db, space, after=after, chunk=CHUNK):
        rows = np.ascontiguousarray(matrix, dtype=np.float32)
        sims, nearest = ivf.quantizer.search(rows, min(PROBES, ivf.nlist))
        first = np.ascontiguousarray(nearest[:, 0], dtype=np.int64)
        nearest[sims < sims[:, :1] - MARGIN] = -1  # a list far from the vector's own is not probed
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        index.add_core(len(rows), faiss.swig_ptr(rows), faiss.swig_ptr(ids), faiss.swig_ptr(first))
        ids_parts.append(ids)
        lists_parts.append(nearest[:, 1:].astype(np.int32))
        after = int(ids[-1])
    ids = np.concatenate(ids_parts)
    order = np.argsort(ids, kind="stable")
    return after, (ids[order], np.concatenate(lists_parts)[order])


def _no_probes() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(0, dtype=np.int64), np.zeros((0, PROBES - 1), dtype=np.int32)


def _read_probes(folder: Path, meta: dict) -> tuple[np.ndarray, np.ndarray]:
    with np.load(folder / meta["probes"]) as stored:
        return stored["ids"], stored["lists"]


def remove(db_path: Path, space: str) -> None:
    folder = index_folder(db_path)
    meta = _read_meta(folder, space)
    if meta is None:
        return
    with _locked(folder):
        (folder / f"{_safe_name(space)}.json").unlink(missing_ok=True)
        for name in (meta.get("file"), meta.get("probes")):
            if name:
                (folder / name).unlink(missing_ok=True)


def refresh(db: sqlite3.Connection, db_path: Path, space: str, exact_below: int | None = None,
            say=None) -> IndexedSpace | None:
    """The space's index, brought up to date with the store (built when missing); None when the space is
    small enough to search exactly (under exact_below vectors: EXACT_BELOW unless given)."""
    exact_below = EXACT_BELOW if exact_below is None else exact_below
    total = _count(db, space)
    folder = index_folder(db_path)
    if total < exact_below:
        remove(db_path, space)
        return None
    with _locked(folder):
        meta = _read_meta(folder, space)
        index = None
        probes = _no_probes()
        if meta is not None:
            newer = _count(db, space, meta["covered_through"])
            usable = (meta["count"] + newer == total and total <= GROWTH * meta.get("built_with", 0)
                      and meta.get("probes_rule") == [PROBES, MARGIN]
                      and (folder / meta["file"]).exists() and (folder / meta.get("probes", "-")).exists())
            if usable:
                flags = faiss.IO_FLAG_MMAP if not newer else 0  # nothing to add: mapped, read as needed
                index = faiss.read_index(str(folder / meta["file"]), flags)
                probes = _read_probes(folder, meta)
                if not newer:
                    return IndexedSpace(space, index, meta, probes)
            else:
                meta = None
        if index is None or meta is None:
            dim = db.execute("SELECT dim FROM embeddings WHERE space = ? LIMIT 1", (space,)).fetchone()[0]
            if say is not None:
                say(f"building the search index of {total:,} embeddings (once; later runs only add new photos)")
            index, trained_on = _new_index(db, space, total, dim)
            meta = {"space": space, "covered_through": -1, "trained_on": trained_on, "built_with": total, "dim": dim,
                    "nlist": int(index.nlist), "probes_rule": [PROBES, MARGIN]}
        covered, probes = _add_rows(db, space, index, meta["covered_through"], probes)
        meta = _write(folder, space, index, {**meta, "covered_through": covered}, probes)
        return IndexedSpace(space, index, meta, probes)


def searcher(db: sqlite3.Connection, db_path: Path, space: str, exact: bool = False, say=None):
    """What answers questions about a space: its index (large spaces), or its vectors read for an exact
    scan (small spaces, or exact=True)."""
    if not exact:
        indexed = refresh(db, db_path, space, say=say)
        if indexed is not None:
            return indexed
    return vectors.load_space(db, space)


def update(db: sqlite3.Connection, db_path: Path, say=None) -> None:
    """After `tag` stored embeddings: bring the newest space's index up to date (built once it is large
    enough), so that the next search need not. A failure here is said, never fatal: the search does it again."""
    known = vectors.spaces(db)
    if not known or known[0][1] < EXACT_BELOW:
        return
    try:
        refresh(db, db_path, known[0][0], say=say)
    except (OSError, RuntimeError) as exc:
        if say is not None:
            say(f"the search index of {db_path} was not updated ({exc}); `similar` and `duplicates` will")
