"""gRPC channel and server options, written once for every server and client."""

from __future__ import annotations

import ipaddress
from typing import Any

MIB = 1024 * 1024
# Room for the request's other fields around the image, so that an image just under the
# image limit is never refused by the transport (RESOURCE_EXHAUSTED means "retry later").
MESSAGE_HEADROOM_BYTES = 4 * MIB


def message_limit_bytes(max_image_bytes: int) -> int:
    """The gRPC message limit of a server (and of its backend channels) with this image limit."""
    return max_image_bytes + MESSAGE_HEADROOM_BYTES


def message_limits(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


def client_channel_options(max_message_bytes: int, *, keepalive_seconds: float = 10.0,
                           keepalive_timeout_seconds: float = 5.0, reconnect_max_seconds: float | None = None
                           ) -> list[tuple[str, Any]]:
    """A client channel: message limits, and keepalive pings that also run between calls, so a peer
    that stops answering is noticed while the connection is idle (a health Watch, say)."""
    options = [
        *message_limits(max_message_bytes),
        ("grpc.keepalive_time_ms", int(keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", int(keepalive_timeout_seconds * 1000)),
        # Core waits this long for the ack of any ping, the keepalive's included (default 60 s:
        # without it a stopped peer is noticed after a minute, whatever keepalive_timeout says).
        ("grpc.http2.ping_timeout_ms", int(keepalive_timeout_seconds * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    if reconnect_max_seconds is not None:
        options += [
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", int(reconnect_max_seconds * 1000)),
        ]
    return options


def server_channel_options(settings) -> list[tuple[str, Any]]:
    """A server's options from its settings (the `server` option group)."""
    options = [
        *message_limits(message_limit_bytes(settings.max_image_bytes)),
        ("grpc.keepalive_time_ms", int(settings.keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_seconds * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        # Accept clients' keepalive pings as often as every 2 s (the orchestrator pings its backends
        # every 4 s to see a hung one); pings more frequent than this get GOAWAY too_many_pings.
        ("grpc.http2.min_ping_interval_without_data_ms", 2_000),
        ("grpc.http2.max_pings_without_data", 0),
        # Without this a second server on the same port starts silently and steals calls.
        ("grpc.so_reuseport", 0),
    ]
    if settings.max_connection_age_seconds > 0:
        options += [
            ("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * 1000)),
            ("grpc.max_connection_age_grace_ms", int(settings.grace_seconds * 1000)),
        ]
    return options


def is_loopback_host(host: str) -> bool:
    """Is a listen or peer address (an IP or 'localhost') reachable from this machine only?"""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback
