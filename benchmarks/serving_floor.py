"""The floor under the serving path's CPU: bare gRPC Python in the stack's shape, at the stack's rate.

The stack's serving-path CPU (stack_bench.py, section 5) counts three gRPC hops per photo: the client's call
into the orchestrator, and the orchestrator's calls to Florence-2 and SigLIP, at once. How much of that any
Python gRPC service would spend depends on the request rate (at a few calls a second every call wakes
sleeping threads; at thousands they stay awake), so the floor is measured here in the same shape and at the
same rate: three grpc.aio processes (a front that calls two leaves at once, as the orchestrator does), the
same image bytes, the same clients, and leaves that burn, on one worker thread each (as a batch-1 model
service infers), as much CPU per call as the stack's models took, with the GIL released (hashing), and subtract
it as the stack subtracts its inference timers. What is left is what gRPC, asyncio and the interpreter cost
with nothing of ours in the way.

    python benchmarks/serving_floor.py [--clients 4] [--requests 64] [--slow-ms 100] [--fast-ms 10]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.servers import free_port  # the repository on sys.path, above
from timing import process_cpu_seconds  # benchmarks/timing.py, beside this script

METHOD = "/floor.Floor/Call"


def _identity(data: bytes) -> bytes:
    return data


def _burn(seconds: float) -> None:
    """Spend `seconds` of this thread's CPU with the GIL released, as a model's inference does."""
    block, started = bytes(65536), time.thread_time()
    while time.thread_time() - started < seconds:
        hashlib.sha256(block).digest()


def _serve(port: int, burn_seconds: float, leaves: list[int], ready) -> None:
    """A grpc.aio server: a leaf burns burn_seconds of CPU per call on its one worker thread; the front calls
    every leaf at once with the request's bytes."""

    async def main() -> None:
        worker = ThreadPoolExecutor(1)
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{p}") for p in leaves]
        calls = [c.unary_unary(METHOD, request_serializer=_identity, response_deserializer=_identity)
                 for c in channels]

        async def handle(request: bytes, context) -> bytes:
            if calls:
                await asyncio.gather(*(call(request, timeout=600) for call in calls))
            else:
                await asyncio.get_running_loop().run_in_executor(worker, _burn, burn_seconds)
            return b"ok"

        server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(handle, _identity, _identity)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("floor.Floor", {"Call": handler}),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        ready.put(os.getpid())
        await server.wait_for_termination()

    asyncio.run(main())


def _load(port: int, images: list[bytes], clients: int, per_client: int) -> float:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    call = channel.unary_unary(METHOD, request_serializer=_identity, response_deserializer=_identity)

    def client(index: int) -> None:
        for i in range(per_client):
            call(images[(index * per_client + i) % len(images)], timeout=600)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    channel.close()
    return clients * per_client / (time.perf_counter() - started)


def floor_cpu(images: list[bytes], clients: int, requests: int, slow_seconds: float, fast_seconds: float) -> dict:
    """CPU ms per request of bare gRPC Python in the stack's shape (front, slow leaf, fast leaf) outside the
    leaves' burn; the same warm-up as the stack's measurement (4 calls per client first)."""
    context = multiprocessing.get_context("spawn")
    ready = context.Queue()
    ports = {"slow": free_port(), "fast": free_port(), "front": free_port()}
    burns = {"slow": slow_seconds, "fast": fast_seconds, "front": 0.0}
    leaves = {"slow": [], "fast": [], "front": [ports["slow"], ports["fast"]]}
    processes, pids = [], {}
    try:
        for name in ports:
            process = context.Process(target=_serve, args=(ports[name], burns[name], leaves[name], ready),
                                      daemon=True)
            process.start()
            processes.append(process)
            pids[name] = ready.get(timeout=60)
        per_client = max(1, requests // clients)
        _load(ports["front"], images, clients, 4)
        before = {n: process_cpu_seconds(p) for n, p in pids.items()}
        rate = _load(ports["front"], images, clients, per_client)
        cpu = {n: process_cpu_seconds(p) - before[n] for n, p in pids.items()}
    finally:
        for process in processes:
            process.kill()
    answered = clients * per_client
    cpu = {n: v - burns[n] * answered for n, v in cpu.items()}  # the burn ends a hash past its target: < 0.1 ms
    return {"requests": answered, "clients": clients, "images_per_second": rate,
            "slow_leaf_burn_ms": slow_seconds * 1000, "fast_leaf_burn_ms": fast_seconds * 1000,
            "cpu_ms_per_request": {n: v / answered * 1000 for n, v in cpu.items()},
            "cpu_ms_per_request_total": sum(cpu.values()) / answered * 1000}


def main() -> int:
    import stack_bench  # beside this script: the same test images

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--slow-ms", type=float, default=100.0, help="the slow leaf's CPU per call (Florence-2)")
    parser.add_argument("--fast-ms", type=float, default=10.0, help="the fast leaf's CPU per call (SigLIP)")
    args = parser.parse_args()
    result = floor_cpu(stack_bench.test_images(16), args.clients, args.requests, args.slow_ms / 1000,
                       args.fast_ms / 1000)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
