"""A million-photo archive on this machine: the walk, resume, `duplicates` and `similar` at scale.

Builds, under --workdir (default /tmp/archive-scale, deleted afterwards unless --keep):

  photos/   N small JPEG files (1,000 per folder), each unique (a tiny JPEG and 8 bytes after its end)
  store     a results database that marks every one of them done, written through the store's own code
            (ResultStore.record, the call `tag` makes for every answer), with N clustered 768-dim
            embeddings and perceptual hashes in which same-photo and similar groups are planted

The embeddings: 2,000 cluster centres, each photo a centre plus noise (cosine about 0.5 to the other
photos of its cluster). Planted, each an original and 1-3 others:
  same photo   copies at cosine 0.985-0.995, hashes 0-6 bits from the original's
  similar      other shots at cosine 0.90-0.94, hashes unrelated
  traps        other shots at cosine 0.96-0.97 (above the same-photo threshold), hashes unrelated: they
               must be similar, not the same photo
Recall per tier: planted (original, other) pairs found in one group of their tier.

Measured, each step in a fresh process (spawned: its peak memory is its own):
  resume         `tag`'s walk (archivetag.walk.PhotoSource, as the Tagger consumes it) over the archive
                 with the full store: every photo unchanged, none read
  first photo    the same walk with an empty store: seconds from the start to the first photo handed to
                 the sender, read and hashed (no orchestrator: the seconds `tag` then waits for it to
                 answer its status are not counted); and the whole walk
  index build    the faiss index built from the store (once: `tag` keeps it up to date afterwards)
  duplicates     archivetag.duplicates.groups, the command's own code, with the index up to date
  similar        archivetag.similar.closest per query (the command's search), p50/p99; recall@10 against
                 an exact scan of the float16 vectors
  before         (--before) at this size, the old walk: the whole list, then path_is_done per photo

    python benchmarks/archive_scale_bench.py [--photos 1000000] [--queries 200] [--before]
                                             [--workdir /tmp/archive-scale] [--keep] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import multiprocessing
import os
import platform
import resource
import shutil
import sqlite3
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image
from timing import percentiles_ms, write_results

from archivetag import phash, vector_index, vectors
from archivetag.results import ResultStore, models_key
from archivetag.v1 import common_pb2, tagging_pb2

SIGLIP = common_pb2.ModelIdentity(family="siglip", name="google/siglip-base-patch16-224", revision="bench",
                                  weights_sha256="0" * 64)
MODELS_KEY = "bench-models"
DIM = 768
PER_FOLDER = 1000
MTIME = 1_700_000_000
CHUNK = 10_000
SAME, SIMILAR, TRAP = "same", "similar", "trap"
# Share of photos that start a planted group, per kind.
PLANTED = {SAME: 0.004, SIMILAR: 0.004, TRAP: 0.001}
COSINE = {SAME: (0.985, 0.995), SIMILAR: (0.90, 0.94), TRAP: (0.96, 0.97)}


def photo_path(root: Path, i: int) -> Path:
    return root / f"{i // PER_FOLDER:04d}" / f"photo-{i:07d}.jpg"


def tiny_jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 12), (120, 90, 60)).save(out, "JPEG", quality=80)
    return out.getvalue()


def make_archive(root: Path, count: int) -> float:
    base = tiny_jpeg()
    started = time.perf_counter()
    for i in range(count):
        path = photo_path(root, i)
        if i % PER_FOLDER == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as file:
            file.write(base + i.to_bytes(8, "little"))
        os.utime(path, ns=(MTIME * 10**9, MTIME * 10**9))
    return time.perf_counter() - started


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def at_cosine(base: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at the given cosine from the unit vector `base`."""
    noise = rng.standard_normal(base.shape[0]).astype(np.float32)
    noise -= (noise @ base) * base
    noise /= np.linalg.norm(noise)
    return (cosine * base + np.sqrt(1 - cosine**2) * noise).astype(np.float32)


def flip_bits(value: int, count: int, rng: np.random.Generator) -> int:
    for bit in rng.choice(64, count, replace=False):
        value ^= 1 << int(bit)
    return value


def synthetic_chunk(start: int, size: int, seed: int) -> tuple[np.ndarray, list[int], list[tuple[str, int, int]]]:
    """Rows start..start+size: (unit vectors, hashes, planted pairs (kind, original row, other row)).
    Every group lies inside one chunk, its members spread over it."""
    rng = np.random.default_rng([seed, start])
    centres = np.random.default_rng(seed).standard_normal((2000, DIM)).astype(np.float32)
    matrix = unit_rows(centres[rng.integers(0, 2000, size)] + rng.standard_normal((size, DIM)).astype(np.float32))
    hashes = [int(h) for h in rng.integers(0, 2**64, size, dtype=np.uint64)]
    free = rng.permutation(size).tolist()
    pairs = []
    for kind, share in PLANTED.items():
        for _ in range(int(size * share)):
            original = free.pop()
            for _ in range(int(rng.integers(1, 4))):
                other = free.pop()
                matrix[other] = at_cosine(matrix[original], float(rng.uniform(*COSINE[kind])), rng)
                if kind == SAME:
                    hashes[other] = flip_bits(hashes[original], int(rng.integers(0, 7)), rng)
                pairs.append((kind, start + original, start + other))
    return matrix, hashes, pairs


def answer(embedding: np.ndarray) -> tagging_pb2.TagImagesResponse:
    reply = tagging_pb2.TagImagesResponse(id="0")
    result = reply.result
    result.tagger, result.caption = "florence", "a hall with a vaulted ceiling"
    for name in ("hall", "ceiling", "column", "window", "floor"):
        result.tags.add(name=name, confidence=0.8, source_model="florence")
    result.models.append(SIGLIP)
    result.embedding.extend(embedding.tolist())
    return reply


@contextmanager
def batched_commits(store: ResultStore):
    """record() commits each photo (as `tag` must); for building a million rows here, its statements run in
    transactions of CHUNK photos instead, with synchronous=OFF: the same SQL, written faster."""
    original = store._writing

    @contextmanager
    def no_commit():
        yield

    store.db.execute("PRAGMA synchronous=OFF")
    store._writing = no_commit  # type: ignore[method-assign]
    try:
        yield
    finally:
        store._writing = original  # type: ignore[method-assign]
        store.db.commit()
        store.db.execute("PRAGMA synchronous=FULL")


def fill_store(db: Path, root: Path, count: int, seed: int) -> tuple[float, list[tuple[str, int, int]]]:
    base = tiny_jpeg()
    store = ResultStore(db)
    store.remember_models(MODELS_KEY, [SIGLIP])
    planted: list[tuple[str, int, int]] = []
    started = time.perf_counter()
    with batched_commits(store):
        for start in range(0, count, CHUNK):
            size = min(CHUNK, count - start)
            matrix, hashes, pairs = synthetic_chunk(start, size, seed)
            planted += pairs
            for k in range(size):
                i = start + k
                data = base + i.to_bytes(8, "little")
                store.record(photo_path(root, i), hashlib.sha256(data).hexdigest(), len(data), float(MTIME),
                             MODELS_KEY, answer(matrix[k]), phash=hashes[k])
            store.db.commit()
            if start and start % 100_000 == 0:
                print(f"  stored {start:,} photos ({(time.perf_counter() - started) / start * 1000:.2f} ms each)",
                      flush=True)
    seconds = time.perf_counter() - started
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    return seconds, planted


def peak_mib() -> float:
    """This process's peak resident memory (VmHWM: its own, where ru_maxrss also counts the parent it was
    started from)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- the steps, each run in a spawned process ------------------------------------------------------------
def step_resume(root: str, db: str) -> dict:
    from archivetag.walk import PhotoSource

    async def consume(source: PhotoSource) -> tuple[int, int]:
        skipped, todo = [0], 0
        async for _ in source.photos(lambda n: skipped.__setitem__(0, skipped[0] + n), lambda _: None,
                                     lambda _: None):
            todo += 1
        return skipped[0], todo

    ResultStore(Path(db)).close()  # as `tag` opens it first
    started = time.perf_counter()
    source = PhotoSource([Path(root)], db_path=Path(db)).start()
    source.set_key(MODELS_KEY)
    skipped, todo = asyncio.run(consume(source))
    return {"seconds": time.perf_counter() - started, "skipped": skipped, "to_send": todo, "found": source.found,
            "peak_mib": peak_mib()}


def step_first_photo(root: str, db: str) -> dict:
    from archivetag.bulk import read_photo
    from archivetag.walk import PhotoSource

    async def consume(source: PhotoSource, started: float) -> dict:
        first = None
        count = 0
        async for path in source.photos(lambda n: None, lambda _: None, lambda _: None):
            if first is None:
                photo = await asyncio.to_thread(read_photo, path, 32)
                photo.phash = await asyncio.to_thread(phash.photo_hash, photo.data)
                first = time.perf_counter() - started
            count += 1
        return {"first_photo_seconds": first, "walk_seconds": time.perf_counter() - started, "to_send": count}

    ResultStore(Path(db)).close()  # a fresh, empty store
    started = time.perf_counter()
    source = PhotoSource([Path(root)], db_path=Path(db)).start()
    source.set_key(MODELS_KEY)
    result = asyncio.run(consume(source, started))
    return {**result, "peak_mib": peak_mib()}


def step_before(root: str, db: str) -> dict:
    """The walk as it was: the whole list first, then path_is_done for every photo, then the first send."""
    from archivetag.walk import find_photos

    started = time.perf_counter()
    photos, _ = find_photos([Path(root)])
    photos = list(dict.fromkeys(p.resolve() for p in photos))  # as the old find_photos returned them
    store = ResultStore(Path(db))
    todo = [p for p in photos if not store.path_is_done(p, MODELS_KEY)]
    store.close()
    return {"seconds": time.perf_counter() - started, "found": len(photos), "to_send": len(todo),
            "peak_mib": peak_mib()}


def step_index(db: str) -> dict:
    store = ResultStore(Path(db))
    space = models_key([SIGLIP])
    started = time.perf_counter()
    indexed = vector_index.refresh(store.db, store.path, space)
    seconds = time.perf_counter() - started
    store.close()
    folder = vector_index.index_folder(Path(db))
    return {"seconds": seconds, "vectors": len(indexed) if indexed else 0, "lists": indexed.nlist if indexed else 0,
            "index_bytes": sum(f.stat().st_size for f in folder.iterdir()), "peak_mib": peak_mib()}


def step_duplicates(db: str, planted: list[tuple[str, int, int]], root: str) -> dict:
    from archivetag import duplicates

    args = argparse.Namespace(db=Path(db), same_threshold=0.95, max_hash_distance=10, similar_threshold=0.88,
                              exact=False)
    started = time.perf_counter()
    answer, _ = duplicates.groups(args)
    seconds = time.perf_counter() - started

    def group_of(tier: str) -> dict[int, int]:
        found = {}
        for number, photos in enumerate(answer[tier]["groups"]):
            for photo in photos:
                found[int(Path(photo["path"]).stem.removeprefix("photo-"))] = number
        return found

    same, similar = group_of("same_photo"), group_of("similar")

    def together(groups: dict[int, int], a: int, b: int) -> bool:
        return a in groups and groups.get(a) == groups.get(b)

    recall = {}
    for kind, groups in ((SAME, same), (SIMILAR, similar), (TRAP, similar)):
        pairs = [(a, b) for k, a, b in planted if k == kind]
        recall[kind] = sum(together(groups, a, b) for a, b in pairs) / max(1, len(pairs))
    not_same = [(a, b) for k, a, b in planted if k in (SIMILAR, TRAP)]
    return {
        "seconds": seconds, "search": answer["search"], "embeddings_compared": answer["embeddings_compared"],
        "same_photo_groups": len(answer["same_photo"]["groups"]), "similar_groups": len(answer["similar"]["groups"]),
        "recall": {"same_photo": recall[SAME], "similar": recall[SIMILAR], "similar_traps": recall[TRAP]},
        "planted_pairs": {kind: sum(k == kind for k, _, _ in planted) for kind in (SAME, SIMILAR, TRAP)},
        "different_photos_called_same": sum(together(same, a, b) for a, b in not_same),
        "peak_mib": peak_mib(),
    }


def step_similar(db: str, queries: int, seed: int) -> dict:
    from archivetag.results import path_key
    from archivetag.similar import closest

    store = ResultStore(Path(db))
    space_key = models_key([SIGLIP])
    started = time.perf_counter()
    searcher = vector_index.searcher(store.db, store.path, space_key)
    load_seconds = time.perf_counter() - started
    count = store.db.execute("SELECT max(result_id) FROM embeddings").fetchone()[0]
    rows = np.sort(np.random.default_rng(seed + 1).choice(np.arange(1, count + 1), queries, replace=False))
    query_vectors = vectors.vectors_of(store.db, rows.tolist())
    paths = {r: p for r, ps in vectors.paths_of(store.db, rows.tolist()).items() for p in ps}
    latencies, found = [], []
    for row in rows.tolist():
        begun = time.perf_counter()
        matches = closest(store.db, searcher, query_vectors[row], 10, path_key(Path(os.fsdecode(paths[row]))))
        latencies.append(time.perf_counter() - begun)
        found.append([str(p) for p, _ in matches])
    # Exact top 10 by scanning every float16 vector, chunk by chunk.
    queries_matrix = np.stack([query_vectors[r] for r in rows.tolist()])
    best_sims = np.full((len(rows), 10), -2.0, dtype=np.float32)
    best_ids = np.zeros((len(rows), 10), dtype=np.int64)
    for ids, matrix in vectors.iter_vectors(store.db, space_key, chunk=50_000):
        sims = queries_matrix @ matrix.astype(np.float32).T
        sims[np.isin(ids, rows)[None, :] & (ids[None, :] == rows[:, None])] = -2.0  # not itself
        all_sims = np.concatenate([best_sims, sims], axis=1)
        all_ids = np.concatenate([best_ids, np.broadcast_to(ids, sims.shape)], axis=1)
        top = np.argsort(-all_sims, axis=1)[:, :10]
        best_sims = np.take_along_axis(all_sims, top, axis=1)
        best_ids = np.take_along_axis(all_ids, top, axis=1)
    exact_paths = vectors.paths_of(store.db, sorted(set(best_ids.ravel().tolist())))
    recall = np.mean([len({str(Path(os.fsdecode(exact_paths[r][0]))) for r in ids} & set(got)) / 10
                      for ids, got in zip(best_ids.tolist(), found)])
    store.close()
    return {"load_seconds": load_seconds, "query": percentiles_ms(latencies), "recall_at_10": float(recall),
            "search": "index" if isinstance(searcher, vector_index.IndexedSpace) else "exact", "peak_mib": peak_mib()}


def in_process(function, *args) -> dict:
    """Run one step in a fresh interpreter: its peak memory is its own."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


def store_sizes(db: Path, count: int) -> dict:
    with sqlite3.connect(db) as con:
        try:
            table = con.execute("SELECT sum(pgsize) FROM dbstat WHERE name IN ('embeddings', 'embeddings_by_space')"
                                ).fetchone()[0]
        except sqlite3.OperationalError:
            table = None
    size = db.stat().st_size
    return {"database_bytes": size, "bytes_per_photo": size / count, "embeddings_table_bytes": table,
            "embeddings_bytes_per_photo": table / count if table else None}


def fp16_effect(seed: int) -> dict:
    """What storing float16 changes: cosines of planted and random pairs, and the top 10 of 200 queries among
    20,000 vectors, against float32."""
    matrix, _, pairs = synthetic_chunk(0, 20_000, seed)
    half = matrix.astype(np.float16).astype(np.float32)
    rows = np.random.default_rng(seed).choice(len(matrix), 200, replace=False)
    full_sims, half_sims = matrix[rows] @ matrix.T, half[rows] @ half.T
    agree = np.mean([len(set(np.argsort(-f)[1:11]) & set(np.argsort(-h)[1:11])) / 10
                     for f, h in zip(full_sims, half_sims)])
    planted = np.array([[a, b] for _, a, b in pairs])
    planted_full = np.sum(matrix[planted[:, 0]] * matrix[planted[:, 1]], axis=1)
    planted_half = np.sum(half[planted[:, 0]] * half[planted[:, 1]], axis=1)
    return {"max_cosine_difference": float(np.abs(full_sims - half_sims).max()),
            "max_planted_cosine_difference": float(np.abs(planted_full - planted_half).max()),
            "top10_same_as_float32": float(agree)}


def bench(args: argparse.Namespace, workdir: Path) -> dict:
    root, db, fresh_db = workdir / "photos", workdir / "store.sqlite", workdir / "fresh.sqlite"
    print(f"{args.photos:,} photos under {root}", flush=True)
    results: dict = {"photos": args.photos, "dim": DIM}
    if args.reuse and db.exists():  # the archive and store of an earlier --keep run: measure again
        shutil.rmtree(vector_index.index_folder(db), ignore_errors=True)
        fresh_db.unlink(missing_ok=True)
        planted = [pair for start in range(0, args.photos, CHUNK)
                   for pair in synthetic_chunk(start, min(CHUNK, args.photos - start), args.seed)[2]]
        results["reused"] = True
    else:
        results["archive_seconds"] = make_archive(root, args.photos)
        print(f"  files written in {results['archive_seconds']:.0f} s; storing their results", flush=True)
        fill_seconds, planted = fill_store(db, root, args.photos, args.seed)
        results["fill"] = {"seconds": fill_seconds, "ms_per_photo": fill_seconds / args.photos * 1000}
    results["store"] = store_sizes(db, args.photos)
    print("  resume", flush=True)
    results["resume"] = in_process(step_resume, str(root), str(db))
    print(f"    {results['resume']}\n  first photo", flush=True)
    results["first_photo"] = in_process(step_first_photo, str(root), str(fresh_db))
    print(f"    {results['first_photo']}", flush=True)
    if args.before:
        print("  before: list, then path_is_done per photo", flush=True)
        results["before_resume"] = in_process(step_before, str(root), str(db))
        print(f"    {results['before_resume']}", flush=True)
    print("  index build", flush=True)
    results["index_build"] = in_process(step_index, str(db))
    print(f"    {results['index_build']}\n  duplicates", flush=True)
    results["duplicates"] = in_process(step_duplicates, str(db), planted, str(root))
    print(f"    {results['duplicates']}\n  similar", flush=True)
    results["similar"] = in_process(step_similar, str(db), args.queries, args.seed)
    print(f"    {results['similar']}", flush=True)
    results["fp16"] = fp16_effect(args.seed)
    steps = ("resume", "first_photo", "index_build", "duplicates", "similar")
    results["peak_mib"] = max(results[s]["peak_mib"] for s in steps)
    return results


GOALS = {"resume_s": 60, "first_photo_s": 5, "duplicates_s": 300, "recall": 0.99, "similar_p50_ms": 20,
         "peak_mib": 4096}


def table(r: dict) -> str:
    d, s = r["duplicates"], r["similar"]
    rec = d["recall"]
    lines = [
        f"{r['photos']:,} photos, {r['dim']}-dim float16 embeddings (goals in brackets)",
        f"  resume (walk + stat, none read)  {r['resume']['seconds']:.1f} s [≤ 60]  "
        f"({r['resume']['skipped']:,} skipped, {r['resume']['to_send']} to send)",
        f"  first photo to the sender        {r['first_photo']['first_photo_seconds']:.3f} s [≤ 5]  "
        f"(whole walk, empty store: {r['first_photo']['walk_seconds']:.1f} s)",
    ]
    if "before_resume" in r:
        lines.append(f"  before: list + path_is_done      {r['before_resume']['seconds']:.1f} s, "
                     f"{r['before_resume']['peak_mib']:.0f} MiB (first photo only after all of it)")
    lines += [
        f"  index build (once)               {r['index_build']['seconds']:.0f} s, {r['index_build']['lists']} lists, "
        f"{r['index_build']['index_bytes'] / 2**20:.0f} MiB",
        f"  duplicates ({d['search']})          {d['seconds']:.0f} s [≤ 300]; "
        f"recall same photo {rec['same_photo']:.4f}, "
        f"similar {rec['similar']:.4f}, traps as similar {rec['similar_traps']:.4f} [≥ 0.99]; "
        f"different photos called same: {d['different_photos_called_same']}",
        f"  similar ({s['search']})             p50 {s['query']['p50_ms']:.1f} ms [≤ 20], "
        f"p99 {s['query']['p99_ms']:.1f} ms;"
        f" recall@10 vs exact {s['recall_at_10']:.3f}; ready in {s['load_seconds']:.2f} s",
        f"  peak memory (largest step)       {r['peak_mib']:.0f} MiB [≤ 4096]  "
        + ", ".join(f"{k} {r[k]['peak_mib']:.0f}" for k in ("resume", "first_photo", "index_build", "duplicates",
                                                             "similar")),
        f"  store                            {r['store']['bytes_per_photo']:.0f} bytes/photo "
        f"(embeddings {r['store']['embeddings_bytes_per_photo'] or 0:.0f})"
        + (f"; fill {r['fill']['ms_per_photo']:.2f} ms/photo" if "fill" in r else ""),
        f"  float16 vs float32               max cosine difference {r['fp16']['max_cosine_difference']:.5f}, "
        f"top-10 agreement {r['fp16']['top10_same_as_float32']:.3f}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--before", action="store_true", help="also time the old walk (list, then path_is_done)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/archive-scale"))
    parser.add_argument("--keep", action="store_true", help="keep the archive and store afterwards")
    parser.add_argument("--reuse", action="store_true", help="measure again on the archive and store a --keep run "
                        "left (not built again)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "archive_scale.json")
    args = parser.parse_args()
    workdir = args.workdir / f"n{args.photos}"
    if workdir.exists() and not args.reuse:
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        results = bench(args, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    results["machine"] = {"cpus": os.cpu_count(), "load_average": os.getloadavg(), "platform": platform.platform(),
                          "numpy": np.__version__, "sqlite": sqlite3.sqlite_version, "python": sys.version.split()[0]}
    print(table(results))
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    previous[str(args.photos)] = results
    write_results(args.out, previous)


if __name__ == "__main__":
    main()
