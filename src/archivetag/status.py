"""Show the backends the orchestrator sees: health, breaker, replicas, latency."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import grpc
from google.protobuf.json_format import MessageToDict

from archivetag.client import CLIENT_OPTIONS, call_metadata, open_channel
from archivetag.v1 import tagging_pb2, tagging_pb2_grpc

OPTION_GROUPS = [CLIENT_OPTIONS]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the raw status as JSON")


def status_table(reply: tagging_pb2.GetStatusResponse) -> str:
    header = ("backend", "role", "health", "breaker", "replicas", "p50 ms", "p95 ms", "ok", "errors", "model")
    rows = [header]
    for b in reply.backends:
        rows.append((
            b.name,
            b.role,
            tagging_pb2.BackendHealth.Name(b.health).removeprefix("BACKEND_HEALTH_").lower(),
            tagging_pb2.BreakerState.Name(b.breaker).removeprefix("BREAKER_STATE_").lower(),
            f"{b.serving_replicas}/{b.replicas}",
            f"{b.latency_p50_seconds * 1000:.0f}",
            f"{b.latency_p95_seconds * 1000:.0f}",
            str(b.ok_count),
            str(b.error_count),
            b.model.name or "-",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"\nimages in flight: {reply.in_flight}, waiting: {reply.queued}")
    errors = [f"  {b.name}: {b.last_error}" for b in reply.backends if b.last_error]
    if errors:
        lines += ["last errors:", *errors]
    return "\n".join(lines)


async def fetch_status(settings) -> tagging_pb2.GetStatusResponse:
    async with open_channel(settings) as channel:
        stub = tagging_pb2_grpc.TaggingServiceStub(channel)
        return await stub.GetStatus(tagging_pb2.GetStatusRequest(), metadata=call_metadata(settings), timeout=10)


def run(args: argparse.Namespace) -> int:
    try:
        reply = asyncio.run(fetch_status(args))
    except grpc.aio.AioRpcError as exc:
        print(f"archivetag status: {args.target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(MessageToDict(reply), indent=2))
    else:
        print(status_table(reply))
    return 0
