"""Soak: good clients beside hostile ones, against the real stack (smoke models, loopback).

Two phases of the same length on one running stack (three model services and the
orchestrator, tokens on):
  1. good clients alone: two archive apps tagging small photos one at a time;
  2. the same good clients while hostile ones run: corrupt files in a loop (the breaker
     must stay closed), byte hogs sending many 8 MiB junk requests at once (refused by
     the byte budget), a stream reusing item ids, and open health Watch streams.
Printed side by side: the good clients' success rate, p50/p95/p99 latency, which tagger
answered and the orchestrator's peak memory; the hostile clients' status codes; the
breakers at the end.

    python benchmarks/soak_bench.py [--phase-seconds 40] [--watch-streams 128] [--out benchmarks/results/soak.json]

Bounded: about 2 × phase seconds plus the services' start (well under 3 minutes by default).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from archivetag.models import write_smoke_models  # noqa: E402
from archivetag.v1 import tagging_pb2, tagging_pb2_grpc  # noqa: E402
from tests.conftest import model_service, orchestrator  # noqa: E402
from tests.orchestrator.test_faults import CORRUPT  # noqa: E402
from tests.support.image_corpus import encode, photo  # noqa: E402
from timing import write_results  # noqa: E402 - benchmarks/timing.py, beside this script

TOKENS = {name: f"{name}-token-0123456789abcdef" for name in ("desk", "archive", "hostile-files", "hostile-bytes",
                                                               "hostile-ids")}
FLORENCE_FAST = ("--florence-max-new-tokens", "8", "--florence-num-beams", "1")
GOOD = ("desk", "archive")


def metadata(client: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[client]}"),)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


class Phase:
    """Runs clients until `stop` is set; each records (ok, seconds, tagger or status)."""

    def __init__(self, address: str, pid: int):
        self.address = address
        self.pid = pid
        self.peak_rss = 0
        self.stop = threading.Event()
        self.good: dict[str, list[tuple[bool, float, str]]] = {c: [] for c in GOOD}
        self.hostile: dict[str, Counter] = {}

    def good_client(self, client: str) -> None:
        api = tagging_pb2_grpc.TaggingServiceStub(grpc.insecure_channel(self.address))
        images = [encode(photo(80 + i, 60 + i % 5), "JPEG") for i in range(8)]
        i = 0
        while not self.stop.is_set():
            request = tagging_pb2.TagImageRequest()
            request.image.data = images[i % len(images)]
            i += 1
            started = time.perf_counter()
            try:
                reply = api.TagImage(request, metadata=metadata(client), timeout=60)
                self.good[client].append((True, time.perf_counter() - started, reply.tagger))
            except grpc.RpcError as exc:
                self.good[client].append((False, time.perf_counter() - started, exc.code().name))

    def _count(self, client: str, outcome: str) -> None:
        self.hostile.setdefault(client, Counter())[outcome] += 1

    def corrupt_files(self) -> None:
        api = tagging_pb2_grpc.TaggingServiceStub(grpc.insecure_channel(self.address))
        files = list(CORRUPT.values())
        i = 0
        while not self.stop.is_set():
            request = tagging_pb2.TagImageRequest()
            request.image.data = files[i % len(files)]
            i += 1
            try:
                api.TagImage(request, metadata=metadata("hostile-files"), timeout=30)
                self._count("hostile-files", "OK")
            except grpc.RpcError as exc:
                self._count("hostile-files", exc.code().name)

    def byte_hog(self) -> None:
        channel = grpc.insecure_channel(self.address, options=[("grpc.max_send_message_length", 64 << 20)])
        api = tagging_pb2_grpc.TaggingServiceStub(channel)
        request = tagging_pb2.TagImageRequest()
        request.image.data = os.urandom(8 << 20)
        while not self.stop.is_set():
            futures = [api.TagImage.future(request, metadata=metadata("hostile-bytes"), timeout=30) for _ in range(24)]
            for future in futures:
                try:
                    future.result()
                    self._count("hostile-bytes", "OK")
                except grpc.RpcError as exc:
                    self._count("hostile-bytes", exc.code().name)

    def reused_ids(self) -> None:
        api = tagging_pb2_grpc.TaggingServiceStub(grpc.insecure_channel(self.address))
        image = encode(photo(), "PNG")
        while not self.stop.is_set():
            items = []
            for i in range(20):
                item = tagging_pb2.TagImagesRequest(id=str(i % 5))
                item.request.image.data = image
                items.append(item)
            try:
                for answer in api.TagImages(iter(items), metadata=metadata("hostile-ids"), timeout=60):
                    self._count("hostile-ids", answer.error.status or "OK")
            except grpc.RpcError as exc:
                self._count("hostile-ids", "stream " + exc.code().name)

    def watches(self, count: int) -> list:
        """Open health Watch streams without a token and keep them open (not read)."""
        channel = grpc.insecure_channel(self.address)
        health = health_pb2_grpc.HealthStub(channel)
        calls = [health.Watch(health_pb2.HealthCheckRequest(service="")) for _ in range(count)]
        self.hostile["hostile-watches"] = Counter({"open streams": count})
        return [channel, *calls]

    def sample_rss(self) -> None:
        """The orchestrator's peak resident memory during the phase (sampled every 0.1 s)."""
        while not self.stop.is_set():
            status = Path(f"/proc/{self.pid}/status").read_text()
            rss = int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) * 1024
            self.peak_rss = max(self.peak_rss, rss)
            time.sleep(0.1)

    def run(self, seconds: float, hostile: bool, watch_streams: int) -> dict:
        workers = [self.sample_rss, *(lambda c=c: self.good_client(c) for c in GOOD)]
        held = []
        if hostile:
            workers += [self.corrupt_files, self.byte_hog, self.reused_ids]
            held = self.watches(watch_streams)
        with ThreadPoolExecutor(len(workers)) as pool:
            futures = [pool.submit(w) for w in workers]
            time.sleep(seconds)
            self.stop.set()
            for future in futures:
                future.result()
        for call in held[1:]:
            call.cancel()
        return self.summary(seconds)

    def summary(self, seconds: float) -> dict:
        good = [r for c in GOOD for r in self.good[c]]
        ok = [r for r in good if r[0]]
        latencies = [r[1] for r in ok]
        return {
            "seconds": seconds,
            "good_requests": len(good),
            "good_success_rate": len(ok) / len(good) if good else 0.0,
            "good_per_second": len(ok) / seconds,
            "good_p50_ms": percentile(latencies, 50),
            "good_p95_ms": percentile(latencies, 95),
            "good_p99_ms": percentile(latencies, 99),
            "good_mean_ms": statistics.mean(latencies) * 1000 if latencies else 0.0,
            "good_taggers": dict(Counter(r[2] for r in ok)),
            "good_errors": dict(Counter(r[2] for r in good if not r[0])),
            "orchestrator_peak_rss_mb": self.peak_rss / 2**20,
            "hostile": {name: dict(counter) for name, counter in self.hostile.items()},
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase-seconds", type=float, default=40.0)
    parser.add_argument("--watch-streams", type=int, default=128, help="health Watch streams the hostile phase opens")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "soak.json")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    models = tmp / "models"
    write_smoke_models(models)
    services = {
        "florence": model_service("florence", models, tmp, *FLORENCE_FAST).start(),
        "rampp": model_service("rampp", models, tmp).start(),
        "siglip": model_service("siglip", models, tmp).start(),
    }
    started = [*services.values()]
    try:
        for name, server in services.items():
            server.wait_status("archivetag.v1.ViewTypeService" if name == "siglip" else "archivetag.v1.TaggerService",
                               "SERVING", timeout=240)
        targets = [arg for name, s in services.items() for arg in (f"--{name}-target", s.address)]
        tokens = ",".join(f"{name}:{token}" for name, token in TOKENS.items())
        front = orchestrator(tmp, "--api-tokens", tokens, *targets).start()
        started.append(front)
        front.wait_status("archivetag.v1.TaggingService", "SERVING", timeout=120)
        api = tagging_pb2_grpc.TaggingServiceStub(grpc.insecure_channel(front.address))
        warm = tagging_pb2.TagImageRequest()
        warm.image.data = encode(photo(), "JPEG")
        api.TagImage(warm, metadata=metadata("desk"), timeout=120)

        results = {"machine": {"cpus": os.cpu_count()}, "phase_seconds": args.phase_seconds,
                   "watch_streams": args.watch_streams}
        results["good_only"] = Phase(front.address, front.proc.pid).run(args.phase_seconds, False, 0)
        results["with_hostile"] = Phase(front.address, front.proc.pid).run(args.phase_seconds, True, args.watch_streams)
        status = api.GetStatus(tagging_pb2.GetStatusRequest(), metadata=metadata("desk"), timeout=10)
        results["breakers_at_end"] = {b.name: tagging_pb2.BreakerState.Name(b.breaker) for b in status.backends}
        results["backend_errors_at_end"] = {b.name: b.error_count for b in status.backends}
    finally:
        for server in reversed(started):
            server.__exit__(None, None, None)

    print(f"{'good clients':22} {'requests':>9} {'success':>8} {'ok/s':>6} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
          f"{'orch. RSS MB':>12}  taggers")
    for key, label in (("good_only", "alone"), ("with_hostile", "beside hostile ones")):
        r = results[key]
        print(f"{label:22} {r['good_requests']:9d} {r['good_success_rate']:8.1%} {r['good_per_second']:6.2f} "
              f"{r['good_p50_ms']:7.0f} {r['good_p95_ms']:7.0f} {r['good_p99_ms']:7.0f} "
              f"{r['orchestrator_peak_rss_mb']:12.0f}  {r['good_taggers']}"
              + (f"  errors {r['good_errors']}" if r["good_errors"] else ""))
    for name, outcomes in results["with_hostile"]["hostile"].items():
        print(f"  {name:20} {outcomes}")
    print(f"breakers at the end: {results['breakers_at_end']}; backend errors: {results['backend_errors_at_end']}")
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
