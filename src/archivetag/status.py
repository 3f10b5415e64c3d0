"""Show the backends the orchestrator sees: health, breaker, replicas, latency; and its result cache."""

from __future__ import annotations

import argparse
import json
import sys

from google.protobuf.json_format import MessageToDict

from archivetag.client import CLIENT_OPTIONS, ClientError, TaggingClient
from archivetag.v1 import tagging_pb2

OPTION_GROUPS = [CLIENT_OPTIONS]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the raw status as JSON")


def _when(backend: tagging_pb2.BackendStatus) -> str:
    at = backend.last_error_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{at}; recovered since" if backend.last_error_resolved else at


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
    c = reply.cache
    lines.append(f"result cache ({c.backend}): {c.entries} answers, {c.bytes / 1e6:.1f} MB; since start {c.hits} hits, "
                 f"{c.shared} shared, {c.misses} misses; {c.evictions} evicted"
                 + (f"; last error: {c.last_error}" if c.last_error else ""))
    errors = [f"  {b.name}: {b.last_error} ({_when(b)})" for b in reply.backends if b.last_error]
    if errors:
        lines += ["last errors:", *errors]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        with TaggingClient.from_settings(args) as client:
            reply = client.status()
    except ClientError as exc:
        print(f"archivetag status: {args.target}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(MessageToDict(reply), indent=2))
    else:
        print(status_table(reply))
    return 0
