"""The orchestrator's result cache: throughput and model-seconds saved at 0%, 30% and 90% duplicates.

The real stack (`up`'s supervisor, smoke models unless --models is given) on this machine. For each
duplicate rate, one sequence of requests in which that share repeats a photo sent earlier in the
sequence (a re-import, a backup, two apps sharing a collection), sent by --clients concurrent
clients twice: with bypass_cache on every request (the cache off), then through the cache (cold at
the start of the sequence: each rate has photos of its own). Model-seconds are the model services'
own inference time (archivetag_inference_seconds, summed over Florence-2, RAM++ and SigLIP): on a
GPU box, the GPU-seconds the duplicates did not cost.

    python benchmarks/cache_bench.py [--models DIR] [--requests 48] [--clients 4] [--out benchmarks/results/cache.json]

Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from archivetag.runtime.registry import MODEL_NAMES  # noqa: E402
from archivetag.stack import Stack  # noqa: E402
from archivetag.v1 import tagging_pb2, tagging_pb2_grpc  # noqa: E402
from tests.support.servers import free_port, metric  # noqa: E402
from stack_bench import stack_arguments, test_images  # noqa: E402 - benchmarks/stack_bench.py, beside this script
from timing import models_or_smoke, write_results  # noqa: E402

DUPLICATE_RATES = (0.0, 0.3, 0.9)


def sequence(photos: list[bytes], requests: int, rate: float, seed: int) -> list[bytes]:
    """`requests` photos of which round(rate * requests) repeat one sent earlier in the sequence."""
    rng = random.Random(seed)
    repeats = set(rng.sample(range(1, requests), round(rate * requests)))
    sent: list[bytes] = []
    fresh = iter(photos)
    for position in range(requests):
        sent.append(rng.choice(sent) if position in repeats else next(fresh))
    return sent


def model_seconds(metrics_ports: dict[str, int]) -> float:
    return sum(metric(port, "archivetag_inference_seconds_sum") for port in metrics_ports.values())


def model_calls(metrics_ports: dict[str, int]) -> int:
    """Tag and Classify calls the model services answered (what the load on this machine does not blur)."""
    methods = ("/archivetag.v1.TaggerService/Tag", "/archivetag.v1.ViewTypeService/Classify")
    return int(sum(metric(port, "archivetag_requests_total", method=m, code="OK")
                   for port in metrics_ports.values() for m in methods))


def send(address: str, photos: list[bytes], clients: int, bypass: bool) -> tuple[float, int]:
    """(seconds, answers from the cache) for every photo, `clients` calls at a time, in order."""
    api = tagging_pb2_grpc.TaggingServiceStub(grpc.insecure_channel(address))

    def one(data: bytes) -> bool:
        request = tagging_pb2.TagImageRequest(bypass_cache=bypass)
        request.image.data = data
        return api.TagImage(request, timeout=600).cached

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        cached = sum(pool.map(one, photos))
    return time.perf_counter() - started, cached


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, help="models directory (default: fresh smoke models)")
    parser.add_argument("--requests", type=int, default=48, help="requests per duplicate rate and mode")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cache.json")
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory()
    scratch = Path(tmp.name)
    models = models_or_smoke(args.models, scratch)
    # The stack's services inherit these: the cache in scratch, short smoke captions (random weights never end one).
    os.environ["ARCHIVETAG_CACHE_PATH"] = str(scratch / "cache.sqlite")
    if args.models is None:
        os.environ.setdefault("ARCHIVETAG_FLORENCE_MAX_NEW_TOKENS", "8")
        os.environ.setdefault("ARCHIVETAG_FLORENCE_NUM_BEAMS", "1")
    metrics_ports = {name: free_port() for name in MODEL_NAMES}
    up_args, ports = stack_arguments(models, scratch / "logs", "--metrics",
                                     *(a for n, p in metrics_ports.items() for a in (f"--{n}-metrics-port", str(p))),
                                     result_cache=True)
    address = f"127.0.0.1:{ports['orchestrator']}"
    photos = test_images(args.requests * len(DUPLICATE_RATES) + 4)
    rows = []

    async def run() -> None:
        stack = Stack(up_args, say=lambda *_: None)
        stack.start()
        try:
            await stack.wait_serving(900)
            await asyncio.to_thread(send, address, photos[-4:], args.clients, True)  # warm-up
            for index, rate in enumerate(DUPLICATE_RATES):
                own = photos[index * args.requests:(index + 1) * args.requests]
                sent = sequence(own, args.requests, rate, seed=index)
                for mode, bypass in (("off", True), ("on", False)):
                    before, calls_before = model_seconds(metrics_ports), model_calls(metrics_ports)
                    seconds, cached = await asyncio.to_thread(send, address, sent, args.clients, bypass)
                    rows.append({"duplicates": rate, "cache": mode, "requests": len(sent), "seconds": seconds,
                                 "images_per_second": len(sent) / seconds, "cached_answers": cached,
                                 "model_calls": model_calls(metrics_ports) - calls_before,
                                 "model_seconds": model_seconds(metrics_ports) - before})
        finally:
            await stack.stop()

    asyncio.run(run())
    for on in (r for r in rows if r["cache"] == "on"):
        off = next(r for r in rows if r["cache"] == "off" and r["duplicates"] == on["duplicates"])
        on["model_seconds_saved"] = off["model_seconds"] - on["model_seconds"]
        on["throughput_over_cache_off"] = on["images_per_second"] / off["images_per_second"]

    print(f"{'duplicates':>10} {'cache':>5} {'images/s':>9} {'cached':>7} {'calls':>6} {'model-s':>8} {'saved':>7} "
          f"{'speed-up':>8}")
    for r in rows:
        saved = f"{r['model_seconds_saved']:7.1f}" if "model_seconds_saved" in r else f"{'':7}"
        speed = f"{r['throughput_over_cache_off']:8.2f}" if "throughput_over_cache_off" in r else f"{'':8}"
        print(f"{r['duplicates']:10.0%} {r['cache']:>5} {r['images_per_second']:9.2f} {r['cached_answers']:7d} "
              f"{r['model_calls']:6d} {r['model_seconds']:8.1f} {saved} {speed}")
    device = os.environ.get("ARCHIVETAG_DEVICE", "auto")
    load = os.getloadavg()[0]
    print(f"load average {load:.1f} on {os.cpu_count()} CPUs: model-seconds and throughput move with the load")
    write_results(args.out, {"machine": {"cpus": os.cpu_count(), "device": device, "load_average": load},
                             "clients": args.clients,
                             "smoke_models": args.models is None, "rows": rows})
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
