"""Search by words: EmbedText through the stack, and `archivetag search` over 100,000 stored photos.

    EmbedText   SigLIP's text tower (ONNX Runtime + tokenizers) behind the orchestrator: one text per call,
                1 and 16 concurrent clients; texts/s and latency p50/p95/p99
    search      the search command's own code (archivetag.search) over a result store of --photos
                synthetic 768-dim embeddings stored in the text's model space: reading the vectors
                (every command run does it), the exact ranking + paths per query, and one whole
                command run (embed the text through the stack, load, rank)

The model: siglip-base-patch16-224's architecture with random weights (built offline and exported
once into --workdir), or the smoke model (--smoke: the pipeline's own overhead).

    python benchmarks/text_search_bench.py [--photos 100000] [--requests 64] [--smoke]
                                           [--out benchmarks/results/text_search.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from argparse import Namespace
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from timing import percentiles_ms, write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.servers import ServerProcess, python_module

from archivetag import search, vectors
from archivetag.client import TaggingClient
from archivetag.results import ResultStore, models_key
from archivetag.similar import closest

VIEW_TYPE_SERVICE = "archivetag.v1.ViewTypeService"
TAGGING = "archivetag.v1.TaggingService"
TEXTS = ["staircase with graffiti", "operating theatre", "a hospital corridor", "an abandoned church nave",
         "rusty machines in a factory hall", "a swimming pool without water", "a prison cell", "aerial view"]


def export(workdir: Path, smoke: bool) -> Path:
    """<workdir>/models: the SigLIP export, and a smoke RAM++ (the orchestrator serves only with a tagger)."""
    from archivetag.models import write_smoke_models

    models = workdir / ("smoke-models" if smoke else "models")
    write_smoke_models(models, ("rampp",))
    target = models / "siglip"
    if (target / "manifest.json").exists() and (target / "text.onnx").exists():
        return models
    from transformers.utils import logging as transformers_logging

    from archivetag_siglip.export import export_folder
    from archivetag_siglip.smoke import write_random_checkpoint, write_smoke_model

    transformers_logging.set_verbosity_error()
    if smoke:
        write_smoke_model(target)
    else:
        print("building and exporting siglip-base-patch16-224's architecture (random weights) ...", file=sys.stderr)
        checkpoint = write_random_checkpoint(workdir / "checkpoint", image_size=224, full_size=True)
        export_folder(str(checkpoint), target, model_id="siglip-base-patch16-224-architecture-random")
    return models


def embed_text_rows(target: str, clients: tuple[int, ...], requests: int) -> list[dict]:
    rows = []
    with TaggingClient(target) as client:
        client.embed_text(TEXTS[:1])  # warm
        for count in clients:
            work = [TEXTS[i % len(TEXTS)] for i in range(max(requests, count * 4))]

            def one(text: str) -> float:
                started = time.perf_counter()
                client.embed_text([text])
                return time.perf_counter() - started

            started = time.perf_counter()
            with ThreadPoolExecutor(count) as pool:
                latencies = list(pool.map(one, work))
            wall = time.perf_counter() - started
            rows.append({"clients": count, "texts": len(work), "texts_per_s": len(work) / wall,
                         **percentiles_ms(latencies)})
            print(f"  EmbedText, {count:2} clients: {len(work) / wall:.1f} texts/s", file=sys.stderr)
    return rows


def fill_store(db: Path, model, photos: int, dim: int) -> float:
    """photos synthetic normalised embeddings in the model's space, through the store's own code."""
    store = ResultStore(db)
    space = models_key([model])
    store.remember_models(space, [model])
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    with store.db:
        for start in range(0, photos, 10_000):
            count = min(10_000, photos - start)
            matrix = rng.standard_normal((count, dim), dtype=np.float32)
            for i, row in enumerate(matrix, start):
                cursor = store.db.execute(
                    "INSERT INTO results (sha256, models_key, status, tagged_at) VALUES (?, ?, 'ok', '')",
                    (f"{i:064x}", space))
                store.db.execute("INSERT INTO files (path, sha256, size, mtime, result_id) VALUES (?, ?, 0, 0, ?)",
                                 (f"/archive/{i // 1000:03d}/photo-{i:06d}.jpg", f"{i:064x}", cursor.lastrowid))
                vectors.store(store.db, int(cursor.lastrowid), space, row)
    seconds = time.perf_counter() - started
    store.close()
    return seconds


def search_rows(target: str, db: Path, queries: int, limit: int) -> dict:
    with TaggingClient(target) as client:
        embedded = [client.embed_text([text]) for text in TEXTS]
    model = embedded[0].model
    store = ResultStore(db)
    try:
        started = time.perf_counter()
        space = vectors.load_space(store.db, models_key([model]))
        load = time.perf_counter() - started
        latencies = []
        for i in range(queries):
            reply = embedded[i % len(embedded)]
            query = np.asarray(reply.embeddings[0].values, dtype=np.float32)
            started = time.perf_counter()
            search.rank(space, query, limit, store.db, reply.logit_scale, reply.logit_bias)
            latencies.append(time.perf_counter() - started)
        rows = len(space)
        # The exact top-10 against a brute force in float64: the ranking is exact.
        query = np.asarray(embedded[0].embeddings[0].values, dtype=np.float32)
        top = [result_id for result_id, _ in space.nearest(query, 10)]
        brute = space.result_ids[np.argsort(-(space.matrix.astype(np.float64) @ query.astype(np.float64)))[:10]]
        exact = top == brute.tolist()
        closest(store.db, space, query, limit, "")
    finally:
        store.close()
    args = Namespace(text=TEXTS[0], limit=limit, db=db, target=target, token="", tls_ca=None, tls_client_cert=None,
                     tls_client_key=None, json=True)
    started = time.perf_counter()
    answer, _ = search.answer(args)
    command = time.perf_counter() - started
    assert len(answer["matches"]) == limit
    return {"photos": rows, "load_seconds": load, "query": percentiles_ms(latencies), "queries": queries,
            "command_seconds": command, "exact_top10": exact}


def table(results: dict) -> str:
    lines = [f"EmbedText through the orchestrator ({results['model']}), one text per call",
             "| clients | texts/s | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|---|"]
    for row in results["embed_text"]:
        lines.append(f"| {row['clients']} | {row['texts_per_s']:.1f} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | "
                     f"{row['p99_ms']:.1f} |")
    s = results["search"]
    lines += ["", f"search over {s['photos']:,} stored photos ({results['dim']}-dim, exact)",
              "| read the vectors (s) | rank + paths p50 ms | p95 ms | whole command (s) | top-10 exact |",
              "|---|---|---|---|---|",
              f"| {s['load_seconds']:.2f} | {s['query']['p50_ms']:.1f} | {s['query']['p95_ms']:.1f} | "
              f"{s['command_seconds']:.2f} | {s['exact_top10']} |"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=64, help="EmbedText calls per client count")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="the smoke model instead of the full-size one")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "archivetag-text-search-bench")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "text_search.json")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    models = export(args.workdir, args.smoke)
    logs = Path(tempfile.mkdtemp(prefix="text-search-bench-"))
    siglip_argv = python_module("archivetag.cli", "serve", "siglip", "--models", str(models), "--max-queue-size", "256")
    rampp_argv = python_module("archivetag.cli", "serve", "rampp", "--models", str(models))
    with ServerProcess(siglip_argv, log_path=logs / "siglip.log") as siglip, \
            ServerProcess(rampp_argv, log_path=logs / "rampp.log") as rampp:
        siglip.wait_status(VIEW_TYPE_SERVICE, "SERVING", timeout=600)
        rampp.wait_status("archivetag.v1.TaggerService", "SERVING", timeout=600)
        orchestrator_argv = python_module("archivetag.cli", "serve", "orchestrator", "--no-auth",
                                          "--siglip-target", siglip.address, "--rampp-target", rampp.address,
                                          "--taggers", "rampp,florence", "--disabled-backends", "florence",
                                          "--cache-path", str(logs / "cache.sqlite"))
        with ServerProcess(orchestrator_argv, log_path=logs / "orchestrator.log") as front:
            front.wait_status(TAGGING, "SERVING", timeout=120)
            with TaggingClient(front.address) as client:
                first = client.embed_text(TEXTS[:1])
            model, dim = first.model, len(first.embeddings[0].values)
            rows = embed_text_rows(front.address, (1, 16), args.requests)
            db = args.workdir / f"store-{args.photos}-{'smoke' if args.smoke else 'base'}.sqlite"
            for stale in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
                stale.unlink(missing_ok=True)
            print(f"storing {args.photos:,} synthetic embeddings ...", file=sys.stderr)
            fill_seconds = fill_store(db, model, args.photos, dim)
            searched = search_rows(front.address, db, args.queries, args.limit)
    results = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average": os.getloadavg()},
        "model": f"{model.name} ({'smoke' if args.smoke else 'full size, random weights'})",
        "dim": dim,
        "embed_text": rows,
        "search": {**searched, "fill_seconds": fill_seconds},
    }
    print(table(results))
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
