"""Check a server's grpc.health.v1 status; exit 0 when SERVING (container health checks)."""

from __future__ import annotations

import argparse
import sys

from archivetag.runtime.health_client import check_address
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
    status, detail = check_address(args.probe_address, args.probe_service, args.probe_timeout_seconds)
    if detail:
        print(f"{args.probe_address}: {status}: {detail}", file=sys.stderr)
        return 1
    print(f"{args.probe_address} {args.probe_service or '(process)'}: {status}")
    return 0 if status == "SERVING" else 1
