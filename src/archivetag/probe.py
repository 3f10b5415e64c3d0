"""Check a server's grpc.health.v1 status; exit 0 when SERVING (container health checks).

`archivetag probe --server florence` (or ARCHIVETAG_SERVER=florence, as the images' one
HEALTHCHECK uses it) checks that server on this host: its port (ARCHIVETAG_PORT when set, as
the server itself reads it), its health name from the registry, and TLS when the server
serves TLS (ARCHIVETAG_TLS_CERT, trusted as the CA unless --probe-tls-ca says otherwise).
Without a server, --probe-address and --probe-service say what to check.

Imports only grpc and the registry: a health check answers in a fraction of a second.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc

from archivetag.runtime import registry
from archivetag.runtime.health_client import check_address
from archivetag.runtime.options import server_options
from archivetag.runtime.settings import Option, OptionGroup, parse_path

PROBE_OPTIONS = OptionGroup(
    "probe",
    (
        Option(
            "server", "",
            "Check this server on this host (its port, health name and TLS setting); "
            "empty: use --probe-address and --probe-service.",
            choices=("", *registry.SERVER_NAMES),
        ),
        Option("probe_address", "127.0.0.1:50051", "Server to check, host:port (without --server)."),
        Option("probe_service", "", "Health name to check: '' = the process, or e.g. archivetag.v1.TaggerService."),
        Option("probe_timeout_seconds", 3.0, "Give up after this long.", float),
        Option(
            "probe_tls_ca", None, "PEM CA bundle: connect with TLS and verify the server against it.",
            parse_path, metavar="FILE",
        ),
        Option(
            "probe_tls_server_name", "",
            "Name the server's certificate must carry, when it does not name the probed address.",
        ),
    ),
)
OPTION_GROUPS = [PROBE_OPTIONS]


@dataclass(frozen=True)
class Target:
    address: str
    service: str
    tls_ca: Path | None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def target_of(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Target:
    """What to check: the named server as it is configured here, or the explicit address."""
    if not args.server:
        return Target(args.probe_address, args.probe_service, args.probe_tls_ca)
    environ = dict(os.environ) if environ is None else environ
    spec = registry.server(args.server)
    served = {o.name: o.env_value(environ) for o in server_options(spec).options}
    tls_ca = args.probe_tls_ca or served["tls_cert"]
    return Target(f"127.0.0.1:{served['port']}", spec.health_service, tls_ca)


def run(args: argparse.Namespace) -> int:
    return run_target(target_of(args), args)


def run_target(target: Target, args: argparse.Namespace) -> int:
    credentials = options = None
    if target.tls_ca is not None:
        credentials = grpc.ssl_channel_credentials(root_certificates=target.tls_ca.read_bytes())
        if args.probe_tls_server_name:
            options = [("grpc.ssl_target_name_override", args.probe_tls_server_name)]
    status, detail = check_address(target.address, target.service, args.probe_timeout_seconds, credentials, options)
    if detail:
        print(f"{target.address}: {status}: {detail}", file=sys.stderr)
        return 1
    print(f"{target.address} {target.service or '(process)'}: {status}")
    return 0 if status == "SERVING" else 1
