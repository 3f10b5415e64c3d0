"""Fairness benchmark: a person's single photos while another app imports in bulk.

The whole stack (`up`'s supervisor) with two token clients, "desk" (TagImage, one photo at
a time: a person waiting) and "import" (one TagImages stream):
  1. idle: desk's photos alone (one a second: a person looking at each answer): p50, p95, max;
  2. bulk alone: import's images/s;
  3. bulk with interactive load: desk's latency during import's flood, and import's images/s.

Goal (issue 14): desk's max during the flood ≤ 2× its idle p50, and the box keeps ≥ 95% of its
images/s: the import's images/s plus desk's during the flood, against the import's alone (desk's
photos run on the same models, so the import alone cannot keep what it now shares; what must not
happen is capacity lost to the priority scheme). The import's own share is printed beside it.

    python benchmarks/fairness_bench.py [--models DIR] [--bulk 240] [--photos 20]
        [--batch-sizes 0,8] [--out benchmarks/results/fairness.json]

Each --batch-sizes entry (ARCHIVETAG_MAX_BATCH_SIZE; 0: by device) gets its own stack, one after
the other in one run, so the rows compare under the same machine load. Prints a table, writes
JSON and a PNG plot beside it. Without --models it builds smoke models.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

REPO = Path(__file__).resolve().parents[1]

from stack_bench import stack_arguments, test_images  # noqa: E402

from archivetag.stack import Stack  # noqa: E402
from archivetag.v1 import tagging_pb2, tagging_pb2_grpc  # noqa: E402
from timing import models_or_smoke, write_results  # noqa: E402 - benchmarks/timing.py, beside this script

STAGES = ("admission", "tagger", "view_type", "failover", "total")
TOKENS = {"desk": "desk-token-0123456789abcdef", "import": "import-token-0123456789abcdef"}


def stats(latencies: list[float]) -> dict[str, float]:
    values = np.array(latencies) * 1000
    return {"count": len(latencies), "p50_ms": float(np.percentile(values, 50)),
            "p95_ms": float(np.percentile(values, 95)), "max_ms": float(values.max())}


class Clients:
    def __init__(self, address: str, images: list[bytes]):
        self.images = images
        self.channels = {name: grpc.insecure_channel(address) for name in TOKENS}
        self.stubs = {name: tagging_pb2_grpc.TaggingServiceStub(c) for name, c in self.channels.items()}
        self.stages: list[dict] = []  # desk's answers' StageTimings, where its time went

    def metadata(self, client: str):
        return (("authorization", f"Bearer {TOKENS[client]}"),)

    def single_photos(self, count: int, stop: threading.Event | None = None, pause: float = 1.0) -> list[float]:
        """desk: one photo at a time, a pause between (a person looking at each answer)."""
        latencies = []
        for i in range(count):
            if stop is not None and stop.is_set():
                break
            request = tagging_pb2.TagImageRequest()
            request.image.data = self.images[i % len(self.images)]
            started = time.perf_counter()
            answer = self.stubs["desk"].TagImage(request, timeout=600, metadata=self.metadata("desk"))
            latencies.append(time.perf_counter() - started)
            self.stages.append({stage: getattr(answer.timings, f"{stage}_seconds") for stage in STAGES}
                               | {"answered_by": answer.tagger})
            time.sleep(pause)
        return latencies

    def bulk(self, count: int, started: threading.Event | None = None) -> tuple[float, float]:
        """import: one TagImages stream of `count` items; its images/s and seconds from the first
        answer on (the stream's start-up is not the backends' throughput)."""
        def items():
            for i in range(count):
                request = tagging_pb2.TagImageRequest()
                request.image.data = self.images[i % len(self.images)]
                yield tagging_pb2.TagImagesRequest(id=str(i), request=request)

        answered, first = 0, None
        for answer in self.stubs["import"].TagImages(items(), timeout=3600, metadata=self.metadata("import")):
            if answer.HasField("error"):
                raise RuntimeError(f"item {answer.id}: {answer.error.status} {answer.error.message}")
            answered += 1
            if first is None:
                first = time.perf_counter()
                if started is not None:
                    started.set()
        seconds = time.perf_counter() - first
        return (answered - 1) / seconds, seconds

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()


def measure(clients: Clients, photos: int, bulk: int) -> dict:
    clients.single_photos(4)  # warm-up
    clients.bulk(16)
    load_at_start = os.getloadavg()[0]
    idle = stats(clients.single_photos(photos))
    bulk_alone, _ = clients.bulk(bulk)
    flowing, done = threading.Event(), threading.Event()
    during: list[float] = []

    def desk():
        flowing.wait()
        during.extend(clients.single_photos(10 * photos, stop=done))

    person = threading.Thread(target=desk)
    person.start()
    clients.stages.clear()
    bulk_with, seconds = clients.bulk(bulk, started=flowing)
    done.set()
    person.join()
    flood = stats(during)
    flood["median_stage_ms"] = {stage: float(np.median([t[stage] for t in clients.stages])) * 1000 for stage in STAGES}
    flood["taggers"] = sorted({t["answered_by"] for t in clients.stages})
    total_with = bulk_with + len(during) / seconds
    return {
        "load_average_at_start": load_at_start,
        "idle": idle, "during_flood": flood,
        "bulk_images_per_second_alone": bulk_alone, "bulk_images_per_second_with_interactive": bulk_with,
        "total_images_per_second_with_interactive": total_with,
        "max_over_idle_p50": flood["max_ms"] / idle["p50_ms"],
        "p50_over_idle_p50": flood["p50_ms"] / idle["p50_ms"],
        "bulk_kept": bulk_with / bulk_alone,
        "throughput_kept": total_with / bulk_alone,
        "load_average_at_end": os.getloadavg()[0],
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    keys = ("p50_ms", "p95_ms", "max_ms")
    x = np.arange(len(keys))
    width = 0.8 / (2 * len(runs))
    for i, run in enumerate(runs):
        for j, (phase, label) in enumerate((("idle", "idle"), ("during_flood", "during a flood"))):
            offset = (2 * i + j - len(runs) + 0.5) * width
            left.bar(x + offset, [run[phase][k] for k in keys], width, label=f"{run['batch']}, {label}")
    left.set_xticks(x, [k.removesuffix("_ms") for k in keys])
    left.set(ylabel="ms", title="a single photo (TagImage); goal: max ≤ 2× idle p50")
    left.legend(fontsize=7)
    names = [run["batch"] for run in runs]
    right.bar(np.arange(len(runs)) - 0.2, [r["bulk_images_per_second_alone"] for r in runs], 0.4, label="import alone")
    right.bar(np.arange(len(runs)) + 0.2, [r["total_images_per_second_with_interactive"] for r in runs], 0.4,
              label="import + single photos")
    right.set_xticks(np.arange(len(runs)), names)
    right.set(ylabel="images/s", title="the box's images/s; goal: ≥ 95% kept")
    right.legend(fontsize=8)
    fig.suptitle(f"archivetag fairness, {result['models']} models, CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def batch_label(size: int) -> str:
    return "max batch by device (0)" if size == 0 else f"max batch {size}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, help="models directory (default: fresh smoke models)")
    parser.add_argument("--label", default="", help="what the models are, for the table (default: smoke or the folder)")
    parser.add_argument("--bulk", type=int, default=240, help="items in the import's stream")
    parser.add_argument("--photos", type=int, default=20, help="idle single photos")
    parser.add_argument("--batch-sizes", type=lambda v: [int(x) for x in v.split(",")], default=[0, 8],
                        help="comma-separated ARCHIVETAG_MAX_BATCH_SIZE values, one stack each (0: by device)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "fairness.json")
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory()
    models = models_or_smoke(args.models, Path(tmp.name))
    tokens = Path(tmp.name) / "tokens"
    tokens.write_text("".join(f"{name}:{token}\n" for name, token in TOKENS.items()))
    up_args, ports = stack_arguments(models, Path(tmp.name) / "logs", "--api-tokens-file", str(tokens))

    async def run(batch_size: int) -> dict:
        os.environ["ARCHIVETAG_MAX_BATCH_SIZE"] = str(batch_size)  # the stack's children inherit it
        stack = Stack(up_args, say=lambda *_: None)
        stack.start()
        try:
            await stack.wait_serving(900)
            clients = Clients(f"127.0.0.1:{ports['orchestrator']}", test_images(16))
            try:
                return await asyncio.to_thread(measure, clients, args.photos, args.bulk)
            finally:
                clients.close()
        finally:
            await stack.stop()

    runs = []
    for size in args.batch_sizes:
        runs.append({"batch": batch_label(size), "max_batch_size": size, **asyncio.run(run(size))})
    result = {"models": args.label or ("smoke" if not args.models else args.models.name),
              "machine": {"cpus": os.cpu_count()}, "bulk_items": args.bulk,
              "goal": {"max_over_idle_p50": 2.0, "throughput_kept": 0.95}, "runs": runs}
    print(f"{'single photo':44} {'n':>4} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for run_ in runs:
        for label, row in (("idle", run_["idle"]), ("during another's flood", run_["during_flood"])):
            print(f"{run_['batch'] + ', ' + label:44} {row['count']:4d} {row['p50_ms']:8.0f} "
                  f"{row['p95_ms']:8.0f} {row['max_ms']:8.0f}")
    print()
    print(f"{'':26} {'max/idle p50':>12} {'alone img/s':>11} {'with img/s':>10} {'kept':>6} {'import kept':>11}")
    for run_ in runs:
        print(f"{run_['batch']:26} {run_['max_over_idle_p50']:12.2f} {run_['bulk_images_per_second_alone']:11.2f} "
              f"{run_['total_images_per_second_with_interactive']:10.2f} {run_['throughput_kept']:6.0%} "
              f"{run_['bulk_kept']:11.0%}")
    print("goal: max/idle p50 ≤ 2, kept ≥ 95%")
    for run_ in runs:
        stages = ", ".join(f"{k} {v:.0f}" for k, v in run_["during_flood"]["median_stage_ms"].items())
        print(f"{run_['batch']}: desk's median ms during the flood by stage: {stages}; "
              f"answered by {'/'.join(run_['during_flood']['taggers'])}")
    write_results(args.out, result, plot)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
