"""Client authentication: bearer tokens in metadata, compared in constant time.

Each token belongs to a named client; the name is what fair sharing and logs use.
Health and reflection stay open (probes carry no token); TaggingService needs a token
unless auth is off (a single-user machine).
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc

from archivetag.runtime.admission import authenticated_client
from archivetag.runtime.channels import is_loopback_host
from archivetag.runtime.errors import Unauthenticated, abort_with
from archivetag.runtime.interceptors import CallInterceptor

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


class AuthInterceptor(CallInterceptor):
    """Refuses TaggingService calls without a valid token; records the client's name."""

    def __init__(self, authenticator: TokenAuthenticator | None):
        self.authenticator = authenticator

    def applies(self, method: str) -> bool:
        return method.startswith(PROTECTED_PREFIX)

    @asynccontextmanager
    async def around(self, method: str, context: grpc.aio.ServicerContext, streaming: bool) -> AsyncIterator[None]:
        metadata = context.invocation_metadata()
        if self.authenticator is None:
            current_client.set(client_without_auth(metadata, context.peer()))
            yield
            return
        client = self.authenticator.client_for(metadata)
        if client is None:
            has_header = any(k == "authorization" for k, _ in (metadata or ()))
            await abort_with(context, Unauthenticated("invalid token", reason="TOKEN_INVALID") if has_header
                             else Unauthenticated("missing token: send metadata 'authorization: Bearer <token>'"))
        current_client.set(client)
        authenticated_client.set(client)  # its streams count against its own allowance, not its address's
        yield
