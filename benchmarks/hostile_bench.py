"""Hostile files against a decoding service: peak RSS, time and status per file (issue 13).

Each file of the hostile corpus (tests/support/image_corpus.py) plus one ordinary photo is
sent alone to `archivetag serve siglip` (smoke model) on loopback. Before each file the
service's peak-RSS counter is reset (/proc/PID/clear_refs), so each row is that file's own
peak above the service's resident size before it. The header-based estimate of the new
decoder is printed beside it. With --baseline REF the same files go to a service running
the runtime of git REF (e.g. main) as well, in the same run, for before/after numbers.

    python benchmarks/hostile_bench.py [--baseline main] [--out benchmarks/results/hostile.json]
    python benchmarks/hostile_bench.py --attacks [--out benchmarks/results/hostile_attacks.json]

--attacks runs the attacks of benchmarks/hostile_attacks.py instead (MPO bombs, pre-auth memory, a
health-watch lockout, a held cache lock), each beside a witness client, through the whole smoke stack.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from archivetag.runtime.errors import InvalidInput  # noqa: E402
from archivetag.runtime.images import open_image  # noqa: E402
from archivetag.v1 import common_pb2, view_type_pb2, view_type_pb2_grpc  # noqa: E402
from tests.support.image_corpus import encode, hostile_corpus, photo  # noqa: E402
from tests.support.servers import ServerProcess, memory_kib, python_module  # noqa: E402

VIEW_TYPE_SERVICE = "archivetag.v1.ViewTypeService"
SIGLIP_SMOKE_EDGE = 224  # the smoke SigLIP's input edge (what the service passes as min_edge)


def baseline_source(ref: str, into: Path) -> Path:
    """The package as of git REF, extracted into one tree (services and orchestrator inside
    archivetag/, where the installed layout maps them): first on PYTHONPATH, it replaces the
    installed code."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "src", "services", "orchestrator"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    for part in ("services", "orchestrator"):
        (into / part).rename(into / "src" / "archivetag" / part)
    return into / "src"


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # 5: reset the peak RSS (VmHWM) to the current RSS


def send(address: str, data: bytes, timeout: float) -> tuple[str, float, str]:
    started = time.perf_counter()
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        try:
            view_type_pb2_grpc.ViewTypeServiceStub(channel).Classify(
                view_type_pb2.ClassifyRequest(image=common_pb2.Image(data=data)), timeout=timeout
            )
            return "OK", time.perf_counter() - started, ""
        except grpc.RpcError as exc:
            return exc.code().name, time.perf_counter() - started, (exc.details() or "")[:90]


def estimate_mib(data: bytes) -> int | None:
    try:
        return open_image(data, min_edge=SIGLIP_SMOKE_EDGE)[1].peak_bytes >> 20
    except InvalidInput:
        return None  # refused from the header


def measure(label: str, workdir: Path, cases: list[tuple[str, bytes]], timeout: float,
            pythonpath: Path | None) -> list[dict]:
    env = {"PYTHONPATH": str(pythonpath)} if pythonpath else {}
    models = workdir / f"models-{label}"  # written by the code measured: model formats change between versions
    subprocess.run(python_module("archivetag.cli", "models", "smoke", "--models", str(models), "--only", "siglip"),
                   cwd=workdir, env={**os.environ, **env}, check=True, capture_output=True)
    argv = python_module("archivetag.cli", "serve", "siglip", "--models", str(models))
    rows = []
    with ServerProcess(argv, env=env, log_path=workdir / f"{label}.log") as server:
        server.wait_status(VIEW_TYPE_SERVICE, "SERVING", timeout=180)
        for name, data in cases:
            reset_peak(server.proc.pid)
            before = memory_kib(server.proc.pid, "VmRSS")
            status, seconds, detail = send(server.address, data, timeout)
            peak = memory_kib(server.proc.pid, "VmHWM")
            serving = subprocess.run(  # the service is still up and answering health checks
                [sys.executable, "-c", "import sys; from tests.support.servers import health_status; "
                 f"print(health_status({server.address!r}, {VIEW_TYPE_SERVICE!r}, timeout=10))"],
                cwd=REPO, capture_output=True, text=True,
            ).stdout.strip()
            rows.append({"code": label, "file": name, "bytes": len(data), "status": status, "detail": detail,
                         "seconds": round(seconds, 2), "rss_before_mib": before >> 10,
                         "peak_above_mib": (peak - before) >> 10, "health_after": serving})
            print(f"{label:9s} {name[:46]:46s} {status:19s} {seconds:7.2f} s  peak +{(peak - before) >> 10:5d} MiB"
                  f"  {serving}", file=sys.stderr)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="git ref whose runtime is measured too (e.g. main)")
    parser.add_argument("--timeout", type=float, default=60.0, help="each call's deadline, seconds")
    parser.add_argument("--out", type=Path, help="JSON output (default benchmarks/results/hostile[_attacks].json)")
    parser.add_argument("--attacks", action="store_true", help="the attacks beside a witness client, not the files")
    parser.add_argument("--attack-seconds", type=float, default=15.0, help="how long each attack runs")
    args = parser.parse_args()
    if args.attacks:
        return attacks(args)
    args.out = args.out or REPO / "benchmarks" / "results" / "hostile.json"

    cases = [("ordinary 96x64 png", encode(photo(), "PNG"))] + [(c.name, c.data) for c in hostile_corpus()]
    estimates = {name: estimate_mib(data) for name, data in cases}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        rows = measure("this", workdir, cases, args.timeout, None)
        if args.baseline:
            rows += measure(args.baseline, workdir, cases, args.timeout, baseline_source(args.baseline, workdir))

    print("\n| file | bytes | estimate MiB | " + " | ".join(
        f"{code}: status, s, peak MiB" for code in dict.fromkeys(r["code"] for r in rows)) + " |")
    print("|---|---|---|" + "---|" * len(dict.fromkeys(r["code"] for r in rows)))
    for name, data in cases:
        cells = [f"{r['status']}, {r['seconds']}, +{r['peak_above_mib']}" for r in rows if r["file"] == name]
        estimate = estimates[name]
        print(f"| {name} | {len(data)} | {'refused' if estimate is None else estimate} | " + " | ".join(cells) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "model": "smoke SigLIP (random weights), CPU", "timeout_seconds": args.timeout,
        "estimates_mib": estimates, "rows": rows,
    }, indent=2) + "\n")
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


def attacks(args: argparse.Namespace) -> int:
    from benchmarks.hostile_attacks import run_attacks, table

    with tempfile.TemporaryDirectory() as tmp:
        rows = run_attacks(Path(tmp), args.attack_seconds, quiet_seconds=8.0)
    print("\n" + table(rows))
    out = args.out or REPO / "benchmarks" / "results" / "hostile_attacks.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
                               "stack": "smoke RAM++ (only tagger) and SigLIP, CPU", "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
