"""How fast a hung replica is seen: Florence-2 (smoke model) stopped with SIGSTOP behind the orchestrator.

For each setting, several times: SIGSTOP Florence, then measure
  - detection: until GetStatus shows it UNREACHABLE (polled every 50 ms);
  - the call in flight when it stopped: how long it took and who answered (RAM++ after
    the call to Florence was abandoned, instead of waiting Florence's 30 s deadline);
then SIGCONT and the time until it is SERVING again.
Settings: the defaults (keepalive pings + Health/Check with a deadline), and keepalive alone
(health checks every 600 s), to show what each part contributes.

    python benchmarks/hang_bench.py [--repeats 3] [--out benchmarks/results/hang.json]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from archivetag.models import write_smoke_models  # noqa: E402
from archivetag.v1 import tagging_pb2, tagging_pb2_grpc  # noqa: E402
from tests.conftest import model_service, orchestrator  # noqa: E402
from tests.support.image_corpus import encode, photo  # noqa: E402
from timing import write_results  # noqa: E402 - benchmarks/timing.py, beside this script

SETTINGS = {"defaults (keepalive + health check)": (), "keepalive alone": ("--health-check-seconds", "600")}
FLORENCE_FAST = ("--florence-max-new-tokens", "8", "--florence-num-beams", "1")


def florence_health(api) -> int:
    status = api.GetStatus(tagging_pb2.GetStatusRequest(), timeout=10)
    return next(b for b in status.backends if b.name == "florence").health


def wait_health(api, want: int, limit: float = 120.0) -> float:
    started = time.perf_counter()
    while florence_health(api) != want:
        if time.perf_counter() - started > limit:
            raise TimeoutError(f"florence not {tagging_pb2.BackendHealth.Name(want)} after {limit} s")
        time.sleep(0.05)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "hang.json")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hang-"))
    write_smoke_models(tmp / "models")
    florence = model_service("florence", tmp / "models", tmp, *FLORENCE_FAST).start()
    rampp = model_service("rampp", tmp / "models", tmp).start()
    results: dict = {"machine": {"cpus": os.cpu_count()}, "repeats": args.repeats, "settings": {}}
    try:
        for server in (florence, rampp):
            server.wait_status("archivetag.v1.TaggerService", "SERVING", timeout=240)
        request = tagging_pb2.TagImageRequest()
        request.image.data = encode(photo(), "JPEG")
        for label, extra in SETTINGS.items():
            with orchestrator(tmp, "--no-auth", "--disabled-backends", "siglip", "--florence-target", florence.address,
                              "--rampp-target", rampp.address, *extra, name=f"orchestrator-{len(extra)}") as front:
                front.wait_status("archivetag.v1.TaggingService", "SERVING", timeout=120)
                api = tagging_pb2_grpc.TaggingServiceStub(grpc.insecure_channel(front.address))
                wait_health(api, tagging_pb2.BACKEND_HEALTH_SERVING)
                api.TagImage(request, timeout=120)
                runs = []
                for _ in range(args.repeats):
                    time.sleep(5)  # an idle connection, as between bursts of work
                    florence.proc.send_signal(signal.SIGSTOP)
                    stopped = time.perf_counter()
                    in_flight = api.TagImage.future(request, timeout=120)
                    detected = wait_health(api, tagging_pb2.BACKEND_HEALTH_UNREACHABLE)
                    reply = in_flight.result()
                    call_seconds = time.perf_counter() - stopped
                    florence.proc.send_signal(signal.SIGCONT)
                    recovered = wait_health(api, tagging_pb2.BACKEND_HEALTH_SERVING)
                    runs.append({"detect_seconds": detected, "in_flight_call_seconds": call_seconds,
                                 "in_flight_answered_by": reply.tagger, "serving_again_seconds": recovered})
                results["settings"][label] = {
                    "runs": runs,
                    "detect_median_seconds": statistics.median(r["detect_seconds"] for r in runs),
                    "detect_max_seconds": max(r["detect_seconds"] for r in runs),
                    "in_flight_call_median_seconds": statistics.median(r["in_flight_call_seconds"] for r in runs),
                }
    finally:
        if florence.proc and florence.proc.poll() is None:
            florence.proc.send_signal(signal.SIGCONT)
        for server in (florence, rampp):
            server.__exit__(None, None, None)

    print(f"{'setting':38} {'detect median s':>16} {'detect max s':>13} {'in-flight call s':>17}  answered by")
    for label, row in results["settings"].items():
        print(f"{label:38} {row['detect_median_seconds']:16.1f} {row['detect_max_seconds']:13.1f} "
              f"{row['in_flight_call_median_seconds']:17.1f}  {sorted({r['in_flight_answered_by'] for r in row['runs']})}")
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
