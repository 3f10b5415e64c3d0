"""Check a server's grpc.health.v1 status; exit 0 when SERVING (container health checks)."""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from archivetag.runtime.settings import Option, OptionGroup

PROBE_OPTIONS = OptionGroup(
    "probe",
    (
        Option("probe_address", "127.0.0.1:50051", "Server to check, host:port."),
        Option("probe_service", "", "Health name to check: '' = the process, or e.g. archivetag.v1.TaggerService."),
        Option("probe_timeout_seconds", 3.0, "Give up after this long.", float),
    ),
)
OPTION_GROUPS = [PROBE_OPTIONS]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    with grpc.insecure_channel(args.probe_address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.probe_service), timeout=args.probe_timeout_seconds
            )
        except grpc.RpcError as exc:
            print(f"{args.probe_address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.probe_address} {args.probe_service or '(process)'}: {status}")
    return 0 if status == "SERVING" else 1
