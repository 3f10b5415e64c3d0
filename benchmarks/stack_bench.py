"""End-to-end benchmark: the whole stack with smoke models on this machine's CPU.

Side by side, in one run, on the same images:
  1. through the orchestrator (gRPC, the real stack started by `up`'s supervisor) with
     1, 4 and 16 concurrent clients: throughput and p50/p95/p99 latency;
  2. the same models called in-process (no gRPC, no batching; Florence-2 and SigLIP at once, as
     the orchestrator calls them, and one after the other; the table shows the faster): the cost
     of the serving path, also as the median difference of stack/in-process pairs taken
     alternately at one client (goal: ≤ 3 ms);
  3. the old app's design: a new Python process per image that loads the models each time.

    python benchmarks/stack_bench.py [--models DIR] [--images 32] [--clients 1,4,16] [--pairs 40]
        [--tracing-rounds 2] [--out benchmarks/results/stack.json]

  4. the cost of tracing: stacks with tracing off and on (100% sampled, exported over OTLP to a receiver
     in this process) started in turn, --tracing-rounds times each, the same 4-client load on each; the
     ratio of throughputs (0 rounds: skipped).

  5. the serving path's own cost in CPU: CPU seconds per answered request of every process, less the CPU
     time of the services' inference and decode threads (inference on one thread, so that is all of it):
     stable where wall-clock differences are noise (goal: ≤ 3 ms). Beside it, the floor: bare gRPC Python in the
     same shape at the same rate (serving_floor.py). --serving-cpu-only: only this.

ARCHIVETAG_* variables reach the services (ARCHIVETAG_MAX_QUEUE_DELAY_MS=5: the batcher before continuous batching).

Prints a table, writes JSON and a PNG plot (throughput and latency against clients).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from archivetag.runtime.registry import SERVER_NAMES  # noqa: E402
from archivetag.cli import build_parser  # noqa: E402
from archivetag.stack import Stack  # noqa: E402
from archivetag.v1 import tagger_pb2, tagging_pb2, tagging_pb2_grpc, view_type_pb2  # noqa: E402
from tests.support.servers import free_port  # noqa: E402
from serving_floor import floor_cpu  # noqa: E402 - benchmarks/serving_floor.py, beside this script
from timing import (  # noqa: E402 - benchmarks/timing.py, beside this script
    metric_sum,
    models_or_smoke,
    percentiles_ms,
    process_cpu_seconds,
    scrape_metrics,
    write_results,
)

CLIENT_COUNTS = (1, 4, 16)


def test_images(count: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        base = rng.integers(0, 255, size=(3,))
        gradient = np.linspace(0, 1, 640)[None, :, None] * rng.integers(0, 255, size=(1, 1, 3))
        pixels = np.clip(base + gradient + rng.normal(0, 20, size=(480, 640, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=90)
        images.append(buf.getvalue())
    return images


def stack_arguments(models: Path, log_dir: Path, *extra: str, result_cache: bool = False, metrics: bool = False):
    """`up`'s settings for a stack of `models` on free loopback ports, and those ports by server name.

    The orchestrator's result cache is off unless asked for: the benchmarks send the same images
    again and again, and measure the models and the serving path, not answers from a store (nor
    from the user's own cache file)."""
    if not result_cache:
        os.environ["ARCHIVETAG_CACHE"] = "off"  # the stack's orchestrator inherits it
    ports = {name: free_port() for name in SERVER_NAMES}
    metrics_args = [a for n in SERVER_NAMES for a in (f"--{n}-metrics-port", str(free_port()))] if metrics else [
        "--no-metrics"]
    up_args = build_parser().parse_args(
        ["up", "--models", str(models), "--log-dir", str(log_dir), *metrics_args, *extra,
         *[a for n, p in ports.items() for a in (f"--{n}-port", str(p))]]
    )
    return up_args, ports


def run_clients(address: str, images: list[bytes], clients: int, per_client: int) -> dict:
    stubs = [tagging_pb2_grpc.TaggingServiceStub(grpc.insecure_channel(address)) for _ in range(clients)]

    def client(index: int) -> list[float]:
        latencies = []
        for i in range(per_client):
            request = tagging_pb2.TagImageRequest()
            request.image.data = images[(index * per_client + i) % len(images)]
            started = time.perf_counter()
            stubs[index].TagImage(request, timeout=600)
            latencies.append(time.perf_counter() - started)
        return latencies

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [x for result in pool.map(client, range(clients)) for x in result]
    seconds = time.perf_counter() - started
    return {"clients": clients, "requests": len(latencies), "images_per_second": len(latencies) / seconds,
            **percentiles_ms(latencies)}


def load_in_process(models: Path) -> dict:
    """Florence-2 and SigLIP loaded in this process, as their services load them."""
    backends = {}
    for name in ("florence", "siglip"):
        args = build_parser().parse_args(["serve", name, "--models", str(models)])
        module = __import__(f"archivetag_{name}.backend", fromlist=["create_backend"])
        backend = module.create_backend(args)
        backend.load()
        backends[name] = backend
    return backends


def tag_in_process(backends: dict, pool: ThreadPoolExecutor | None, data: bytes) -> float:
    """One image through Florence-2 and SigLIP, batch 1, decoding for each as its service does:
    the models' own cost, without the serving path. With a pool both run at once (as the
    orchestrator asks them), without one, one after the other."""
    from archivetag.runtime.images import decode_image

    requests = {"florence": tagger_pb2.TagRequest(), "siglip": view_type_pb2.ClassifyRequest()}

    def run(name: str) -> None:
        backend = backends[name]
        item = backend.prepare(decode_image(data, min_edge=backend.input_edge), requests[name])
        result = backend.infer_batch([item], lambda: False)[0]
        if isinstance(result, Exception):
            raise result

    started = time.perf_counter()
    if pool is None:
        for name in backends:
            run(name)
    else:
        for future in [pool.submit(run, name) for name in backends]:
            future.result()
    return time.perf_counter() - started


def in_process(backends: dict, images: list[bytes]) -> dict:
    """The faster of the two in-process ways, for the table."""
    with ThreadPoolExecutor(len(backends)) as pool:
        rows = [[tag_in_process(backends, way, data) for data in images] for way in (None, pool)]
    latencies = min(rows, key=lambda row: float(np.median(row)))
    return {"images_per_second": len(images) / sum(latencies), **percentiles_ms(latencies)}


def paired_overhead(address: str, backends: dict, images: list[bytes], pairs: int) -> dict:
    """The serving path's cost at one client: the same image through the stack, then in-process
    (at once, and one after the other), alternating, so all see the same machine load; the
    median of the per-image differences against each in-process way."""
    stub = tagging_pb2_grpc.TaggingServiceStub(grpc.insecure_channel(address))
    differences: dict[str, list[float]] = {"concurrent": [], "sequential": []}
    with ThreadPoolExecutor(len(backends)) as pool:
        for i in range(pairs):
            data = images[i % len(images)]
            request = tagging_pb2.TagImageRequest()
            request.image.data = data
            started = time.perf_counter()
            stub.TagImage(request, timeout=600)
            through_stack = time.perf_counter() - started
            differences["concurrent"].append(through_stack - tag_in_process(backends, pool, data))
            differences["sequential"].append(through_stack - tag_in_process(backends, None, data))
    result: dict = {"pairs": pairs, "goal_ms": 3.0}
    for way, values in differences.items():
        ms = np.array(values) * 1000
        result[f"vs_{way}"] = {"median_ms": float(np.median(ms)), "p25_ms": float(np.percentile(ms, 25)),
                               "p75_ms": float(np.percentile(ms, 75))}
    return result


ONE_SHOT = """
import sys, time
started = time.perf_counter()
from archivetag.cli import build_parser
from archivetag.runtime.images import decode_image
from archivetag.v1 import tagger_pb2, view_type_pb2
models, path = sys.argv[1], sys.argv[2]
for name, request in (("florence", tagger_pb2.TagRequest()), ("siglip", view_type_pb2.ClassifyRequest())):
    module = __import__(f"archivetag_{name}.backend", fromlist=["create_backend"])
    backend = module.create_backend(build_parser().parse_args(["serve", name, "--models", models]))
    backend.load()
    item = backend.prepare(decode_image(open(path, "rb").read(), min_edge=backend.input_edge), request)
    backend.infer_batch([item], lambda: False)
print(time.perf_counter() - started)
"""


def old_design(models: Path, images: list[bytes], count: int) -> dict:
    """A new Python process per image that loads the models each time (the old app)."""
    latencies = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, data in enumerate(images[:count]):
            path = Path(tmp) / f"{i}.jpg"
            path.write_bytes(data)
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", ONE_SHOT, str(models), str(path)], check=True,
                           capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
            latencies.append(time.perf_counter() - started)
    return {"images": count, "images_per_second": count / sum(latencies), **percentiles_ms(latencies)}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["through_orchestrator"]
    clients = [r["clients"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(clients, [r["images_per_second"] for r in rows], "o-", label="orchestrator (gRPC)")
    left.axhline(results["in_process"]["images_per_second"], color="green", ls="--", label="in-process, batch 1")
    left.axhline(results["old_design"]["images_per_second"], color="red", ls=":", label="process per image (old app)")
    left.set(xlabel="concurrent clients", ylabel="images/s", xscale="log", title="throughput")
    left.set_xticks(clients, [str(c) for c in clients])
    left.legend(fontsize=8)
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        right.plot(clients, [r[key] for r in rows], "o-", label=key.replace("_ms", ""))
    right.set(xlabel="concurrent clients", ylabel="latency (ms)", xscale="log", title="latency through the orchestrator")
    right.set_xticks(clients, [str(c) for c in clients])
    right.legend(fontsize=8)
    fig.suptitle("archivetag, smoke models, CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def tracing_cost(models: Path, log_dir: Path, images: list[bytes], rounds: int, requests: int) -> dict:
    """Throughput at 4 clients with tracing off and on, stacks started in turn (off, on, off, on...)."""
    from tests.support.otlp_receiver import OtlpReceiver

    measured: dict[str, list[float]] = {"off": [], "on": []}
    with OtlpReceiver() as receiver:
        for round_ in range(rounds):
            for mode in ("off", "on"):
                saved = dict(os.environ)
                if mode == "on":
                    os.environ.update({**receiver.env(), "OTEL_TRACES_SAMPLER": "always_on"})
                try:
                    up_args, ports = stack_arguments(models, log_dir / f"tracing-{mode}-{round_}")

                    async def measure() -> float:
                        stack = Stack(up_args, say=lambda *_: None)
                        stack.start()
                        try:
                            await stack.wait_serving(600)
                            address = f"127.0.0.1:{ports['orchestrator']}"
                            await asyncio.to_thread(run_clients, address, images, 1, 4)  # warm-up
                            row = await asyncio.to_thread(run_clients, address, images, 4, max(1, requests // 4))
                            return row["images_per_second"]
                        finally:
                            await stack.stop()

                    measured[mode].append(asyncio.run(measure()))
                finally:
                    os.environ.clear()
                    os.environ.update(saved)
        spans = len(receiver.spans)
    off, on = float(np.median(measured["off"])), float(np.median(measured["on"]))
    return {"rounds": rounds, "images_per_second": measured, "median_off": off, "median_on": on,
            "throughput_on_over_off": on / off, "spans_received": spans}


def thread_cpu(port: int) -> float:
    """The CPU seconds of a service's inference and decode threads, from its /metrics."""
    return metric_sum(scrape_metrics(port), "archivetag_thread_cpu_seconds_total")


def serving_cpu_cost(models: Path, log_dir: Path, images: list[bytes], requests: int, clients: int = 4) -> dict:
    """CPU seconds per answered request that the serving path spends outside decoding and inference: every
    process's own CPU counter (orchestrator and model services) minus the CPU time of the services' inference and
    decode threads (archivetag_thread_cpu_seconds_total). The services run inference on one thread (torch and ONNX
    Runtime), so that thread's CPU time is all of the model's. Wall-clock differences drown in a shared machine's
    noise; CPU counters do not (issue 27)."""
    up_args, ports = stack_arguments(models, log_dir, metrics=True)
    metrics_ports = {n: getattr(up_args, f"{n}_metrics_port") for n in SERVER_NAMES}

    async def measure() -> dict:
        stack = Stack(up_args, say=lambda *_: None)
        os.environ["ARCHIVETAG_TORCH_THREADS"] = os.environ["ARCHIVETAG_SIGLIP_ORT_THREADS"] = "1"  # the children's
        try:
            stack.start()
        finally:
            del os.environ["ARCHIVETAG_TORCH_THREADS"], os.environ["ARCHIVETAG_SIGLIP_ORT_THREADS"]
        try:
            await stack.wait_serving(600)
            address = f"127.0.0.1:{ports['orchestrator']}"
            await asyncio.to_thread(run_clients, address, images, clients, 4)  # warm-up
            pids = {service.name: service.process.pid for service in stack.services if service.process}
            cpu_before = {n: process_cpu_seconds(pid) for n, pid in pids.items()}
            timers_before = {n: thread_cpu(metrics_ports[n]) for n in pids if n != "orchestrator"}
            load = await asyncio.to_thread(run_clients, address, images, clients, max(1, requests // clients))
            cpu = {n: process_cpu_seconds(pid) - cpu_before[n] for n, pid in pids.items()}
            timers = {n: thread_cpu(metrics_ports[n]) - timers_before[n] for n in timers_before}
        finally:
            await stack.stop()
        answered = load["requests"]
        outside = {n: cpu[n] - timers.get(n, 0.0) for n in cpu}
        # The same shape and rate in bare gRPC Python: what no code of ours could save (serving_floor.py).
        floor = await asyncio.to_thread(floor_cpu, images, clients, requests, timers["florence"] / answered,
                                        timers["siglip"] / answered)
        return {"requests": answered, "clients": clients,
                "cpu_s": cpu, "timers_s": timers,
                "serving_cpu_ms_per_request": {n: v / answered * 1000 for n, v in outside.items()},
                "serving_cpu_ms_per_request_total": sum(outside.values()) / answered * 1000,
                "bare_grpc_floor": floor,
                "images_per_second": load["images_per_second"]}

    return asyncio.run(measure())


def print_serving_cpu(cost: dict) -> None:
    per = ", ".join(f"{n} {v:.1f}" for n, v in cost["serving_cpu_ms_per_request"].items())
    print(f"serving path CPU per answered request, outside decode and inference ({cost['requests']} requests, "
          f"{cost['clients']} clients): {cost['serving_cpu_ms_per_request_total']:.1f} ms ({per}); goal ≤ 3 ms")
    floor = cost["bare_grpc_floor"]
    per = ", ".join(f"{n} {v:.1f}" for n, v in floor["cpu_ms_per_request"].items())
    print(f"  the floor, bare gRPC Python in the same shape at {floor['images_per_second']:.1f} requests/s (the stack: "
          f"{cost['images_per_second']:.1f}): {floor['cpu_ms_per_request_total']:.1f} ms ({per})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, help="models directory (default: fresh smoke models)")
    parser.add_argument("--images", type=int, default=32, help="requests per client count")
    parser.add_argument("--old-design-images", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=40, help="stack/in-process pairs for the serving path's cost")
    parser.add_argument("--clients", type=lambda text: [int(n) for n in text.split(",")], default=list(CLIENT_COUNTS),
                        help="concurrent client counts, comma-separated (default 1,4,16)")
    parser.add_argument("--tracing-rounds", type=int, default=2,
                        help="stacks started with tracing off and on, each this many times (0: skip)")
    parser.add_argument("--tracing-only", action="store_true", help="only the cost of tracing (section 4)")
    parser.add_argument("--serving-cpu-only", action="store_true",
                        help="only the serving path's CPU per request (section 5)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "stack.json")
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory()
    models = models_or_smoke(args.models, Path(tmp.name))
    images = test_images(16)
    if args.tracing_only:
        cost = tracing_cost(models, Path(tmp.name) / "logs", images, max(1, args.tracing_rounds), args.images)
        print(json.dumps(cost, indent=2))
        out = args.out.with_name("stack_tracing.json") if args.out.name == "stack.json" else args.out
        out.write_text(json.dumps({"machine": {"cpus": os.cpu_count()}, "tracing": cost}, indent=2) + "\n")
        tmp.cleanup()
        return 0

    if args.serving_cpu_only:
        cost = serving_cpu_cost(models, Path(tmp.name) / "logs", images, args.images)
        print(json.dumps(cost, indent=2))
        print_serving_cpu(cost)
        out = args.out.with_name("stack_serving_cpu.json") if args.out.name == "stack.json" else args.out
        out.write_text(json.dumps({"machine": {"cpus": os.cpu_count()}, "serving_cpu": cost}, indent=2) + "\n")
        tmp.cleanup()
        return 0

    results: dict = {"machine": {"cpus": os.cpu_count()}, "images": args.images}
    up_args, ports = stack_arguments(models, Path(tmp.name) / "logs")

    backends = load_in_process(models)

    async def through_stack() -> tuple[list[dict], dict]:
        stack = Stack(up_args, say=lambda *_: None)
        stack.start()
        try:
            await stack.wait_serving(600)
            address = f"127.0.0.1:{ports['orchestrator']}"
            await asyncio.to_thread(run_clients, address, images, 1, 4)  # warm-up
            rows = []
            for clients in args.clients:
                per_client = max(1, args.images // clients)
                rows.append(await asyncio.to_thread(run_clients, address, images, clients, per_client))
            overhead = await asyncio.to_thread(paired_overhead, address, backends, images, args.pairs)
            return rows, overhead
        finally:
            await stack.stop()

    results["through_orchestrator"], results["serving_path_overhead_at_1_client"] = asyncio.run(through_stack())
    results["in_process"] = in_process(backends, images[: args.images // 2 or 1])
    results["old_design"] = old_design(models, images, args.old_design_images)
    one = results["through_orchestrator"][0]
    best = max(results["through_orchestrator"], key=lambda r: r["images_per_second"])
    results["ratios"] = {
        "grpc_path_latency_over_in_process_at_1_client": one["p50_ms"] / results["in_process"]["p50_ms"],
        "best_service_throughput_over_in_process": best["images_per_second"] / results["in_process"]["images_per_second"],
        "service_throughput_over_old_design": best["images_per_second"] / results["old_design"]["images_per_second"],
    }

    print(f"{'path':34} {'images/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for row in results["through_orchestrator"]:
        print(f"{'orchestrator, ' + str(row['clients']) + ' clients':34} {row['images_per_second']:9.2f} "
              f"{row['p50_ms']:8.0f} {row['p95_ms']:8.0f} {row['p99_ms']:8.0f}")
    for key, label in (("in_process", "in-process (florence+siglip, b=1)"), ("old_design", "process per image (old app)")):
        row = results[key]
        print(f"{label:34} {row['images_per_second']:9.2f} {row['p50_ms']:8.0f} {row['p95_ms']:8.0f} {row['p99_ms']:8.0f}")
    for name, value in results["ratios"].items():
        print(f"{name}: {value:.2f}")
    overhead = results["serving_path_overhead_at_1_client"]
    for way in ("concurrent", "sequential"):
        row = overhead[f"vs_{way}"]
        print(f"serving path at 1 client, paired with in-process {way} ({overhead['pairs']} pairs): median "
              f"{row['median_ms']:+.1f} ms (p25 {row['p25_ms']:+.1f}, p75 {row['p75_ms']:+.1f}); goal ≤ 3 ms")
    if args.tracing_rounds:
        cost = results["tracing"] = tracing_cost(models, Path(tmp.name) / "logs", images, args.tracing_rounds,
                                                 args.images)
        print(f"tracing (100% sampled, OTLP) at 4 clients: {cost['median_on']:.2f} images/s on vs "
              f"{cost['median_off']:.2f} off = {cost['throughput_on_over_off']:.3f}x throughput "
              f"({cost['rounds']} stacks each, {cost['spans_received']} spans received)")
    cost = results["serving_cpu"] = serving_cpu_cost(models, Path(tmp.name) / "logs", images, args.images)
    print_serving_cpu(cost)
    write_results(args.out, results, plot)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
