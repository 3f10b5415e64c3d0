"""Attacks on a shared box, each beside a well-behaved witness client (issue 30), for hostile_bench.py --attacks.

The smoke stack (RAM++ as the only tagger, SigLIP, the orchestrator with three token clients) runs on
loopback. A witness tags one photo every 0.25 s throughout. Each attack runs for --attack-seconds; per
attack: what the attacker's calls got, the orchestrator's and SigLIP's peak RSS above their size before
(VmHWM reset through /proc/PID/clear_refs), the witness's success rate and p50 before and during, and
every health state the orchestrator's readiness and SigLIP showed while it ran.

    mpo bomb          an authenticated client sends a 110 KB progressive MPO of 3,000 scans, over and over
    pre-auth memory   12 threads send 30 MiB TagImage calls without a token
    watch lockout     64 idle health Watch streams without a token from the witness's own address
    cache lock        another process holds the result cache's SQLite write lock
"""

from __future__ import annotations

import sqlite3
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from archivetag.v1 import tagging_pb2, tagging_pb2_grpc
from tests.support.image_corpus import as_mpo, encode, photo, progressive_jpeg
from tests.support.servers import ServerProcess, health_status, memory_kib, python_module

TOKENS = {"witness": "witness-token-0123456789", "mallory": "mallory-token-0123456789",
          "import": "import-token-0123456789ab"}
TAGGING = "archivetag.v1.TaggingService"
MIB = 1 << 20


def metadata(client: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[client]}"),)


def tag_request(data: bytes) -> tagging_pb2.TagImageRequest:
    request = tagging_pb2.TagImageRequest(bypass_cache=False)
    request.image.data = data
    return request


class Witness(threading.Thread):
    """One photo every 0.25 s (a fresh one each time, so the cache does not answer), 10 s deadline."""

    def __init__(self, address: str):
        super().__init__(daemon=True)
        self.api = tagging_pb2_grpc.TaggingServiceStub(grpc.insecure_channel(address))
        self.calls: list[tuple[float, bool, float]] = []  # (when, ok, seconds)
        self.stopping = threading.Event()

    def run(self) -> None:
        seed = 0
        while not self.stopping.is_set():
            seed += 1
            started = time.monotonic()
            try:
                self.api.TagImage(tag_request(encode(photo(96 + seed % 50, 64 + seed % 40), "PNG")),
                                  metadata=metadata("witness"), timeout=10)
                ok = True
            except grpc.RpcError:
                ok = False
            self.calls.append((started, ok, time.monotonic() - started))
            self.stopping.wait(max(0.0, 0.25 - (time.monotonic() - started)))

    def between(self, start: float, end: float) -> dict:
        calls = [(ok, s) for when, ok, s in self.calls if start <= when < end]
        times = [s for ok, s in calls if ok]
        return {"calls": len(calls), "ok_rate": round(sum(ok for ok, _ in calls) / len(calls), 3) if calls else None,
                "p50_seconds": round(statistics.median(times), 3) if times else None}


@contextmanager
def running(flood: Callable[[threading.Event, Counter], None], threads: int) -> Iterator[Counter]:
    stop, outcomes = threading.Event(), Counter()
    workers = [threading.Thread(target=flood, args=(stop, outcomes), daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    try:
        yield outcomes
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=60)


def calls_until(stop: threading.Event, outcomes: Counter, call: Callable[[], object]) -> None:
    while not stop.is_set():
        try:
            call()
            outcomes["OK"] += 1
        except grpc.RpcError as exc:
            outcomes[exc.code().name] += 1


def mpo_bomb(address: str, _: Path) -> tuple[Callable, int]:
    api = tagging_pb2_grpc.TaggingServiceStub(grpc.insecure_channel(address))
    bomb = as_mpo(progressive_jpeg(8000, 8000, 3000))
    return (lambda stop, out: calls_until(stop, out, lambda: api.TagImage(
        tag_request(bomb), metadata=metadata("mallory"), timeout=30))), 2


def pre_auth_memory(address: str, _: Path) -> tuple[Callable, int]:
    channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 * MIB)])
    api = tagging_pb2_grpc.TaggingServiceStub(channel)
    big = tag_request(b"\xff" * (30 * MIB))
    return (lambda stop, out: calls_until(stop, out, lambda: api.TagImage(big, timeout=30))), 12


def watch_lockout(address: str, _: Path) -> tuple[Callable, int]:
    def hold(stop: threading.Event, outcomes: Counter) -> None:
        channel = grpc.insecure_channel(address)  # one connection per stream, as separate clients behind a NAT
        call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=TAGGING))
        try:
            next(call)
            outcomes["held"] += 1
        except grpc.RpcError as exc:
            outcomes[exc.code().name] += 1
        stop.wait()
        call.cancel()
        channel.close()
    return hold, 64


def cache_lock(_: str, workdir: Path) -> tuple[Callable, int]:
    def hold(stop: threading.Event, outcomes: Counter) -> None:
        db = sqlite3.connect(workdir / "cache.sqlite", timeout=60, isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        outcomes["lock held"] += 1
        stop.wait()
        db.execute("ROLLBACK")
        db.close()
    return hold, 1


ATTACKS = {"mpo bomb": mpo_bomb, "pre-auth memory": pre_auth_memory, "watch lockout": watch_lockout,
           "cache lock": cache_lock}


def run_attacks(workdir: Path, attack_seconds: float, quiet_seconds: float) -> list[dict]:
    models = workdir / "models"
    subprocess.run(python_module("archivetag.cli", "models", "smoke", "--models", str(models),
                                 "--only", "rampp", "siglip"), check=True, capture_output=True)
    rampp = ServerProcess(python_module("archivetag.cli", "serve", "rampp", "--models", str(models)),
                          log_path=workdir / "rampp.log")
    siglip = ServerProcess(python_module("archivetag.cli", "serve", "siglip", "--models", str(models)),
                           log_path=workdir / "siglip.log")
    rows = []
    with rampp, siglip:
        rampp.wait_status("archivetag.v1.TaggerService", "SERVING", timeout=300)
        siglip.wait_status("archivetag.v1.ViewTypeService", "SERVING", timeout=300)
        tokens = ",".join(f"{name}:{token}" for name, token in TOKENS.items())
        argv = python_module("archivetag.cli", "serve", "orchestrator", "--api-tokens", tokens,
                             "--taggers", "rampp,florence", "--florence-target", "127.0.0.1:1",
                             "--rampp-target", rampp.address, "--siglip-target", siglip.address,
                             "--cache-path", str(workdir / "cache.sqlite"))
        with ServerProcess(argv, log_path=workdir / "orchestrator.log") as front:
            front.wait_status(TAGGING, "SERVING", timeout=120)
            witness = Witness(front.address)
            witness.start()
            try:
                for name, attack in ATTACKS.items():
                    quiet_from = time.monotonic()
                    time.sleep(quiet_seconds)
                    flood, threads = attack(front.address, workdir)
                    for server in (front, siglip):
                        Path(f"/proc/{server.proc.pid}/clear_refs").write_text("5")
                    before = {s: memory_kib(p.proc.pid) for s, p in (("orchestrator", front), ("siglip", siglip))}
                    health_seen: dict[str, set[str]] = {"orchestrator": set(), "siglip": set()}
                    started = time.monotonic()
                    with running(flood, threads) as outcomes:
                        while time.monotonic() - started < attack_seconds:
                            health_seen["orchestrator"].add(health_status(front.address, TAGGING, timeout=5))
                            health_seen["siglip"].add(health_status(siglip.address, "archivetag.v1.ViewTypeService",
                                                                    timeout=5))
                            time.sleep(0.5)
                    ended = time.monotonic()
                    row = {
                        "attack": name, "attacker": dict(outcomes), "seconds": round(ended - started, 1),
                        **{f"{s}_peak_above_mib": (memory_kib(p.proc.pid, "VmHWM") - before[s]) >> 10
                           for s, p in (("orchestrator", front), ("siglip", siglip))},
                        "witness_before": witness.between(quiet_from, started),
                        "witness_during": witness.between(started, ended),
                        "health_seen": {k: sorted(v) for k, v in health_seen.items()},
                    }
                    rows.append(row)
                    print(row, flush=True)
            finally:
                witness.stopping.set()
                witness.join(timeout=30)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| attack | attacker's calls | orchestrator peak +MiB | SigLIP peak +MiB | witness ok before → during | "
             "witness p50 s before → during | health seen (orchestrator; SigLIP) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        b, d = r["witness_before"], r["witness_during"]
        lines.append(f"| {r['attack']} | {r['attacker']} | {r['orchestrator_peak_above_mib']} | "
                     f"{r['siglip_peak_above_mib']} | {b['ok_rate']} → {d['ok_rate']} ({d['calls']} calls) | "
                     f"{b['p50_seconds']} → {d['p50_seconds']} | {', '.join(r['health_seen']['orchestrator'])}; "
                     f"{', '.join(r['health_seen']['siglip'])} |")
    return "\n".join(lines)
