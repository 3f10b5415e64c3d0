"""Client side of TaggingService, shared by `tag`, `status` and `demo`."""

from __future__ import annotations

import grpc

from archivetag.runtime.channels import message_limits
from archivetag.runtime.settings import Option, OptionGroup, parse_path

CLIENT_OPTIONS = OptionGroup(
    "client",
    (
        Option("target", "127.0.0.1:50051", "The orchestrator, host:port."),
        Option("token", "", "Bearer token for the orchestrator (empty when its auth is off)."),
        Option("tls_ca", None, "PEM CA bundle: connect with TLS and verify the server against it.", parse_path, metavar="FILE"),
        Option("tls_client_cert", None, "PEM client certificate, when the server asks for one.", parse_path, metavar="FILE"),
        Option("tls_client_key", None, "PEM key of --tls-client-cert.", parse_path, metavar="FILE"),
    ),
)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def open_channel(settings) -> grpc.aio.Channel:
    options = message_limits(MAX_MESSAGE_BYTES)
    if settings.tls_ca:
        cert = settings.tls_client_cert.read_bytes() if settings.tls_client_cert else None
        key = settings.tls_client_key.read_bytes() if settings.tls_client_key else None
        credentials = grpc.ssl_channel_credentials(settings.tls_ca.read_bytes(), key, cert)
        return grpc.aio.secure_channel(settings.target, credentials, options=options)
    return grpc.aio.insecure_channel(settings.target, options=options)


def call_metadata(settings) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {settings.token}"),) if settings.token else ()
