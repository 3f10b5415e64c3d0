"""Client authentication: bearer tokens in metadata, compared in constant time.

Each token belongs to a named client; the name is what fair sharing and logs use.
Health and reflection stay open (probes carry no token); TaggingService needs a token
unless auth is off (a single-user machine).
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc

from archivetag.runtime.admission import authenticated_client
from archivetag.runtime.channels import is_loopback_host
from archivetag.runtime.errors import Unauthenticated, abort_with
from archivetag.runtime.interceptors import wrap_handler
from archivetag.runtime.logs import fields

log = logging.getLogger("archivetag.orchestrator.auth")

# The authenticated client of the call being handled (set by the interceptor).
current_client: contextvars.ContextVar[str] = contextvars.ContextVar("archivetag_client", default="anonymous")

PROTECTED_PREFIX = "/archivetag.v1.TaggingService/"


class TokenError(ValueError):
    """The tokens configuration is unusable."""


def parse_tokens(lines: list[str], source: str) -> dict[str, str]:
    """'client-name:token' lines → {token: client-name}."""
    tokens: dict[str, str] = {}
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = line.partition(":")
        if not sep or not name.strip() or len(token.strip()) < 16:
            raise TokenError(f"{source} entry {number}: expected 'client-name:token' "
                             "with a token of at least 16 characters")
        tokens[token.strip()] = name.strip()
    return tokens


def load_tokens(tokens_file: Path | None, inline: list[str]) -> dict[str, str]:
    tokens = parse_tokens(inline, "ARCHIVETAG_API_TOKENS")
    if tokens_file:
        try:
            text = Path(tokens_file).read_text()
        except OSError as exc:
            raise TokenError(f"cannot read tokens file {tokens_file}: {exc.strerror}") from None
        tokens.update(parse_tokens(text.splitlines(), str(tokens_file)))
    return tokens


def metrics_names(tokens: dict[str, str], open_to_network: bool) -> Callable[[str], str]:
    """How the metrics endpoint names clients: by name, unless it is open to the network (no
    --metrics-token-file, a non-loopback address), where whoever reaches the port would learn every client's
    name and volume; there, by a pseudonym keyed by the tokens (stable while they are, unguessable without
    them), and the log says once which pseudonym is whose."""
    if not open_to_network or not tokens:
        return str
    key = hashlib.sha256("\n".join(sorted(tokens)).encode()).digest()

    def pseudonym(name: str) -> str:
        return "client-" + hmac.new(key, name.encode(), hashlib.sha256).hexdigest()[:10]

    log.info("metrics name clients by pseudonym (the endpoint is open to the network; see --metrics-token-file)",
             extra=fields(pseudonyms={name: pseudonym(name) for name in sorted(set(tokens.values()))}))
    return pseudonym


class TokenAuthenticator:
    def __init__(self, tokens: dict[str, str]):
        # Compare fixed-length digests so the comparison time says nothing about the token.
        self._digests = [(hashlib.sha256(t.encode()).digest(), name) for t, name in tokens.items()]

    def client_for(self, metadata: Any) -> str | None:
        """The client name for the call's metadata, or None."""
        header = next((value for key, value in (metadata or ()) if key == "authorization"), "")
        scheme, _, token = str(header).partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        offered = hashlib.sha256(token.strip().encode()).digest()
        found = None
        for digest, name in self._digests:  # no early exit: every token is compared
            if hmac.compare_digest(offered, digest):
                found = name
        return found


def is_loopback_peer(peer: str) -> bool:
    """Is a gRPC peer ('ipv4:127.0.0.1:5000', 'ipv6:[::1]:5000', 'unix:...') on this machine?"""
    kind, _, rest = peer.partition(":")
    return kind == "unix" or is_loopback_host(rest.rpartition(":")[0])


def client_without_auth(metadata: Any, peer: str) -> str:
    """With auth off, a local caller may name itself (x-archivetag-client) for fair sharing;
    a remote one is known by its address, so it cannot take another client's share."""
    if is_loopback_peer(peer):
        return next((str(v) for k, v in (metadata or ()) if k == "x-archivetag-client"), "local")
    return "peer " + peer.partition(":")[2].rpartition(":")[0].strip("[]")


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses TaggingService calls without a valid token; records the client's name.

    The token is checked from the call's metadata, before its request is received: a refused call's
    handler is declared request-streaming and never reads, because grpc receives a unary request whole
    before its handler runs (eight unauthenticated 30 MiB TagImage calls took the orchestrator from
    65 to 453 MiB that way)."""

    def __init__(self, authenticator: TokenAuthenticator | None):
        self.authenticator = authenticator

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(PROTECTED_PREFIX):
            return handler
        if self.authenticator is None:
            return wrap_handler(handler, self._unauthenticated_client)
        metadata = details.invocation_metadata
        client = self.authenticator.client_for(metadata)
        if client is None:
            has_header = any(k == "authorization" for k, _ in (metadata or ()))
            return refusal(handler, Unauthenticated("invalid token", reason="TOKEN_INVALID") if has_header
                           else Unauthenticated("missing token: send metadata 'authorization: Bearer <token>'"))
        return wrap_handler(handler, lambda context, streaming: _as_client(client))

    @staticmethod
    @asynccontextmanager
    async def _unauthenticated_client(context: grpc.aio.ServicerContext, streaming: bool) -> AsyncIterator[None]:
        current_client.set(client_without_auth(context.invocation_metadata(), context.peer()))
        yield


@asynccontextmanager
async def _as_client(client: str) -> AsyncIterator[None]:
    current_client.set(client)
    authenticated_client.set(client)  # its streams count against its own allowance, not its address's
    yield


def refusal(handler: grpc.RpcMethodHandler, error: Exception) -> grpc.RpcMethodHandler:
    """A handler for `handler`'s method that answers `error` without receiving the request."""

    async def refuse(requests: Any, context: grpc.aio.ServicerContext) -> None:
        await abort_with(context, error)

    make = grpc.stream_stream_rpc_method_handler if handler.response_streaming else grpc.stream_unary_rpc_method_handler
    return make(refuse, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
