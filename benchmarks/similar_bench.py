"""Near-duplicate search at archive scale: 100,000 photos' SigLIP embeddings in the result store.

Synthetic, L2-normalised 768-dim embeddings (siglip-base-patch16-224's width) are stored through
the real store code (ResultStore.record, one transaction per photo, as `archivetag tag` does);
a share of them are planted near-duplicates of another (cosine about 0.99). Then, as the
commands do it (archivetag.vectors, archivetag.similar):

  insert      seconds per photo stored (result, tags, embedding)
  size        database file, and the embeddings table alone (SQLite's dbstat)
  load        reading one model's vectors into the search matrix (every command run does this)
  query       one `similar` search (exact cosine scan + the paths of the closest): p50/p95
  duplicates  all pairs at --threshold, grouped; and whether every planted pair was found

--compare-sqlite-vec also builds sqlite-vec's vec0 table (loaded through apsw: this Python's
sqlite3 may not load extensions) from the same vectors and times the same queries, for
docs/similar.md's choice; it needs `pip install apsw==3.54.1.0 sqlite-vec==0.1.9`.

    python benchmarks/similar_bench.py [--photos 100000] [--queries 200] [--skip-duplicates]
                                       [--compare-sqlite-vec] [--out benchmarks/results/similar.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np
from timing import percentiles_ms, write_results

from archivetag import vectors
from archivetag.results import ResultStore, models_key, path_key
from archivetag.similar import closest
from archivetag.v1 import common_pb2, tagging_pb2

SIGLIP = common_pb2.ModelIdentity(family="siglip", name="google/siglip-base-patch16-224", revision="bench",
                                  weights_sha256="0" * 64)
MODELS_KEY = "bench-models"


def synthetic_embeddings(count: int, dim: int, duplicate_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(count × dim normalised float32 vectors, the originals of the planted near-duplicates):
    row i >= count − planted is a noisy copy of row originals[i − (count − planted)]."""
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((count, dim), dtype=np.float32)
    planted = int(count * duplicate_share)
    originals = rng.choice(count - planted, planted, replace=False)
    noise = rng.standard_normal((planted, dim), dtype=np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    base = matrix[originals] / np.linalg.norm(matrix[originals], axis=1, keepdims=True)
    matrix[count - planted:] = base + 0.14 * noise  # cosine to the original ≈ 1/sqrt(1 + 0.14²) ≈ 0.99
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix, originals


def answer(embedding: np.ndarray) -> tagging_pb2.TagImagesResponse:
    reply = tagging_pb2.TagImagesResponse(id="0")
    result = reply.result
    result.tagger, result.caption = "florence", "a hall with a vaulted ceiling"
    for name in ("hall", "ceiling", "column", "window", "floor"):
        result.tags.add(name=name, confidence=0.8, source_model="florence")
    result.models.append(SIGLIP)
    result.embedding.extend(embedding.tolist())
    return reply


def fill(db: Path, matrix: np.ndarray) -> float:
    """Store every photo through ResultStore.record; seconds taken."""
    store = ResultStore(db)
    store.remember_models(MODELS_KEY, [SIGLIP])
    started = time.perf_counter()
    for i, embedding in enumerate(matrix):
        store.record(Path(f"/archive/{i // 1000:03d}/photo-{i:06d}.jpg"), f"{i:064x}", 1_000_000, 0.0, MODELS_KEY,
                     answer(embedding))
        if i and i % 10_000 == 0:
            print(f"  stored {i:,} photos ({(time.perf_counter() - started) / i * 1000:.2f} ms each)", flush=True)
    seconds = time.perf_counter() - started
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    return seconds


def sizes(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as con:
        try:
            table = con.execute("SELECT sum(pgsize) FROM dbstat WHERE name IN ('embeddings', 'embeddings_by_space')"
                                ).fetchone()[0]
        except sqlite3.OperationalError:
            table = None  # this SQLite has no dbstat
    return {"database_bytes": db.stat().st_size, "embeddings_table_bytes": table}


def sqlite_vec_comparison(matrix: np.ndarray, query_rows: np.ndarray, exact: list[list[int]], workdir: Path) -> dict:
    """The same vectors in a vec0 table (one transaction), the same top-10 queries."""
    try:
        import apsw
        import sqlite_vec
    except ImportError:
        raise SystemExit("--compare-sqlite-vec needs: pip install apsw==3.54.1.0 sqlite-vec==0.1.9") from None
    path = workdir / "sqlite-vec.sqlite"
    con = apsw.Connection(str(path))
    con.enable_load_extension(True)
    con.load_extension(sqlite_vec.loadable_path())
    con.execute(f"CREATE VIRTUAL TABLE v USING vec0(space TEXT PARTITION KEY, "
                f"embedding float[{matrix.shape[1]}] distance_metric=cosine)")
    started = time.perf_counter()
    with con:
        for i, row in enumerate(matrix):
            con.execute("INSERT INTO v (rowid, space, embedding) VALUES (?, 's', ?)", (i + 1, row.tobytes()))
    insert_seconds = time.perf_counter() - started
    latencies, agree = [], 0
    for row, expected in zip(query_rows, exact):
        started = time.perf_counter()
        found = con.execute("SELECT rowid FROM v WHERE embedding MATCH ? AND k = 11 AND space = 's'",
                            (matrix[row].tobytes(),)).fetchall()
        latencies.append(time.perf_counter() - started)
        agree += [r - 1 for (r,) in found if r - 1 != row][:10] == expected
    con.close()
    return {"versions": {"sqlite_vec": sqlite_vec.__version__, "sqlite": apsw.sqlite_lib_version()},
            "insert_seconds_total": insert_seconds, "database_bytes": path.stat().st_size,
            "query": percentiles_ms(latencies), "same_top10_as_numpy": agree}


def bench(args: argparse.Namespace, workdir: Path) -> dict:
    db = workdir / "similar-bench.sqlite"
    matrix, originals = synthetic_embeddings(args.photos, args.dim, args.duplicate_share, args.seed)
    print(f"storing {args.photos:,} photos ({args.dim}-dim embeddings) in {db}", flush=True)
    insert_seconds = fill(db, matrix)
    store = ResultStore(db)
    space_key = models_key([SIGLIP])

    started = time.perf_counter()
    space = vectors.load_space(store.db, space_key)
    load_seconds = time.perf_counter() - started

    query_rows = np.random.default_rng(args.seed + 1).choice(len(space), args.queries, replace=False)
    latencies, exact = [], []
    for row in query_rows:
        own = path_key(Path(f"/archive/{row // 1000:03d}/photo-{row:06d}.jpg"))
        started = time.perf_counter()
        found = closest(store.db, space, space.matrix[row], 10, own)
        latencies.append(time.perf_counter() - started)
        exact.append([int(path.stem.removeprefix("photo-")) for path, _ in found])
    results = {
        "photos": args.photos, "dim": args.dim, "queries": args.queries,
        "insert_seconds_total": insert_seconds, "insert_ms_per_photo": insert_seconds / args.photos * 1000,
        **sizes(db), "matrix_bytes": int(space.matrix.nbytes),
        "load_seconds": load_seconds,
        "query": percentiles_ms(latencies),
    }
    if not args.skip_duplicates:
        print(f"grouping all pairs at {args.threshold} (O(n²))", flush=True)
        started = time.perf_counter()
        groups = vectors.components(space, args.threshold)
        planted = len(originals)
        first_row = args.photos - planted
        group_of = {row: n for n, members in enumerate(groups) for row in members}
        found = sum(group_of[first_row + k] == group_of[int(o)] for k, o in enumerate(originals))
        results["duplicates"] = {
            "threshold": args.threshold, "seconds": time.perf_counter() - started,
            "groups_of_two_or_more": sum(len(g) > 1 for g in groups),
            "planted_pairs": planted, "planted_pairs_grouped": int(found),
        }
    store.close()
    if args.compare_sqlite_vec:
        print("the same vectors and queries in sqlite-vec", flush=True)
        results["sqlite_vec"] = sqlite_vec_comparison(matrix, query_rows, exact, workdir)
    return results


def table(results: dict) -> str:
    q = results["query"]
    table_mb = results["embeddings_table_bytes"]
    lines = [
        f"{results['photos']:,} photos, {results['dim']}-dim embeddings (stored as float16 since format 2)",
        f"  insert (ResultStore.record)   {results['insert_ms_per_photo']:.2f} ms/photo, "
        f"{results['insert_seconds_total']:.0f} s total",
        f"  database file                 {results['database_bytes'] / 2**20:.0f} MiB"
        + (f" (embeddings table {table_mb / 2**20:.0f} MiB)" if table_mb else ""),
        f"  load matrix (per command)     {results['load_seconds'] * 1000:.0f} ms "
        f"({results['matrix_bytes'] / 2**20:.0f} MiB in memory)",
        f"  similar query, top 10         p50 {q['p50_ms']:.1f} ms, p95 {q['p95_ms']:.1f} ms "
        f"({results['queries']} queries)",
    ]
    if "duplicates" in results:
        d = results["duplicates"]
        lines.append(f"  duplicates at {d['threshold']}         {d['seconds']:.0f} s, {d['groups_of_two_or_more']:,} groups; "
                     f"planted pairs grouped {d['planted_pairs_grouped']:,}/{d['planted_pairs']:,}")
    if "sqlite_vec" in results:
        v, q = results["sqlite_vec"], results["sqlite_vec"]["query"]
        lines += [
            f"sqlite-vec {v['versions']['sqlite_vec']} vec0 (through apsw, SQLite {v['versions']['sqlite']}), same vectors:",
            f"  insert (one transaction)      {v['insert_seconds_total']:.0f} s; file {v['database_bytes'] / 2**20:.0f} MiB",
            f"  query, top 10                 p50 {q['p50_ms']:.1f} ms, p95 {q['p95_ms']:.1f} ms; "
            f"same top 10 as numpy in {v['same_top10_as_numpy']}/{results['queries']}",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768, help="siglip-base-patch16-224's embedding width")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--duplicate-share", type=float, default=0.01, help="share of photos planted as near-duplicates")
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-duplicates", action="store_true", help="leave out the all-pairs grouping (O(n²))")
    parser.add_argument("--compare-sqlite-vec", action="store_true", help="also time sqlite-vec's vec0 (see above)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the database goes (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "similar.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        results = bench(args, Path(tmp))
    results["machine"] = {"cpus": os.cpu_count(), "load_average": os.getloadavg(), "platform": platform.platform(),
                          "numpy": np.__version__, "sqlite": sqlite3.sqlite_version}
    print(table(results))
    write_results(args.out, results)


if __name__ == "__main__":
    main()
