"""Fairness benchmark: a person's single photos while another app imports in bulk.

The whole stack (`up`'s supervisor) with two token clients, "desk" (TagImage, one photo at
a time: a person waiting) and "import" (one TagImages stream):
  1. idle: desk's photos alone (one a second: a person looking at each answer): p50, p95, max;
  2. bulk alone: import's images/s;
  3. bulk with interactive load: desk's latency during import's flood, and import's images/s.

Goal (issue 14): desk's max during the flood ≤ 2× its idle p50; import keeps ≥ 95% of its images/s.

    python benchmarks/fairness_bench.py [--models DIR] [--bulk 240] [--photos 20]
        [--out benchmarks/results/fairness.json]

Prints a table, writes JSON and a PNG plot beside it. Without --models it builds smoke models.
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
            self.stubs["desk"].TagImage(request, timeout=600, metadata=self.metadata("desk"))
            latencies.append(time.perf_counter() - started)
            time.sleep(pause)
        return latencies

    def bulk(self, count: int, started: threading.Event | None = None) -> float:
        """import: one TagImages stream of `count` items; its images/s from the first answer on
        (the stream's start-up is not the backends' throughput)."""
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
        return (answered - 1) / (time.perf_counter() - first)

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()


def measure(clients: Clients, photos: int, bulk: int) -> dict:
    clients.single_photos(4)  # warm-up
    clients.bulk(16)
    load_at_start = os.getloadavg()[0]
    idle = stats(clients.single_photos(photos))
    bulk_alone = clients.bulk(bulk)
    flowing, done = threading.Event(), threading.Event()
    during: list[float] = []

    def desk():
        flowing.wait()
        during.extend(clients.single_photos(10 * photos, stop=done))

    person = threading.Thread(target=desk)
    person.start()
    bulk_with = clients.bulk(bulk, started=flowing)
    done.set()
    person.join()
    flood = stats(during)
    return {
        "load_average_at_start": load_at_start,
        "idle": idle, "during_flood": flood,
        "bulk_images_per_second_alone": bulk_alone, "bulk_images_per_second_with_interactive": bulk_with,
        "max_over_idle_p50": flood["max_ms"] / idle["p50_ms"],
        "p50_over_idle_p50": flood["p50_ms"] / idle["p50_ms"],
        "bulk_kept": bulk_with / bulk_alone,
        "goal": {"max_over_idle_p50": 2.0, "bulk_kept": 0.95},
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    keys = ("p50_ms", "p95_ms", "max_ms")
    x = np.arange(len(keys))
    left.bar(x - 0.2, [result["idle"][k] for k in keys], 0.4, label="idle")
    left.bar(x + 0.2, [result["during_flood"][k] for k in keys], 0.4, label="during another client's flood")
    left.axhline(2 * result["idle"]["p50_ms"], color="red", ls="--", label="goal: max ≤ 2× idle p50")
    left.set_xticks(x, [k.removesuffix("_ms") for k in keys])
    left.set(ylabel="ms", title="a single photo (TagImage)")
    left.legend(fontsize=8)
    right.bar([0, 1], [result["bulk_images_per_second_alone"], result["bulk_images_per_second_with_interactive"]])
    right.axhline(0.95 * result["bulk_images_per_second_alone"], color="red", ls="--", label="goal: ≥ 95%")
    right.set_xticks([0, 1], ["bulk alone", "bulk + single photos"])
    right.set(ylabel="images/s", title="the import (TagImages)")
    right.legend(fontsize=8)
    fig.suptitle(f"archivetag fairness, {result['models']} models, CPU (shared machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, help="models directory (default: fresh smoke models)")
    parser.add_argument("--label", default="", help="what the models are, for the table (default: smoke or the folder)")
    parser.add_argument("--bulk", type=int, default=240, help="items in the import's stream")
    parser.add_argument("--photos", type=int, default=20, help="idle single photos")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "fairness.json")
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory()
    models = models_or_smoke(args.models, Path(tmp.name))
    tokens = Path(tmp.name) / "tokens"
    tokens.write_text("".join(f"{name}:{token}\n" for name, token in TOKENS.items()))
    up_args, ports = stack_arguments(models, Path(tmp.name) / "logs", "--api-tokens-file", str(tokens))

    async def run() -> dict:
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

    result = asyncio.run(run())
    result.update(models=args.label or ("smoke" if not args.models else args.models.name),
                  machine={"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()[0]},
                  bulk_items=args.bulk)
    idle, flood = result["idle"], result["during_flood"]
    print(f"{'single photo':28} {'n':>4} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for label, row in (("idle", idle), ("during another's flood", flood)):
        print(f"{label:28} {row['count']:4d} {row['p50_ms']:8.0f} {row['p95_ms']:8.0f} {row['max_ms']:8.0f}")
    print(f"max during flood / idle p50: {result['max_over_idle_p50']:.2f} (goal ≤ 2)")
    print(f"bulk images/s alone {result['bulk_images_per_second_alone']:.2f}, with single photos "
          f"{result['bulk_images_per_second_with_interactive']:.2f}: kept {result['bulk_kept']:.0%} (goal ≥ 95%)")
    write_results(args.out, result, plot)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
