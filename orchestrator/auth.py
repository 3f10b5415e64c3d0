"""Client authentication: bearer tokens in metadata, compared in constant time.

Each token belongs to a named client; the name is what fair sharing and logs use.
Health and reflection stay open (probes carry no token); TaggingService needs a token
unless auth is off (a single-user machine).
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
from pathlib import Path
from typing import Any, Awaitable, Callable

import grpc

from archivetag.runtime.errors import Unauthenticated, abort_with

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
            raise TokenError(f"{source} entry {number}: expected 'client-name:token' with a token of at least 16 characters")
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


def _client_without_auth(metadata: Any) -> str:
    return next((str(v) for k, v in (metadata or ()) if k == "x-archivetag-client"), "local")


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses TaggingService calls without a valid token; records the client's name."""

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
            client, problem = _client_without_auth(details.invocation_metadata), None
        else:
            client = self.authenticator.client_for(details.invocation_metadata)
            has_header = any(k == "authorization" for k, _ in (details.invocation_metadata or ()))
            problem = None if client else (
                Unauthenticated("invalid token", reason="TOKEN_INVALID") if has_header
                else Unauthenticated("missing token: send metadata 'authorization: Bearer <token>'")
            )
        return _with_client(handler, client, problem)


def _with_client(handler: grpc.RpcMethodHandler, client: str | None,
                 problem: Unauthenticated | None) -> grpc.RpcMethodHandler:
    async def check(context: grpc.aio.ServicerContext) -> None:
        if problem:
            await abort_with(context, problem)
        current_client.set(client)

    if handler.unary_unary:
        inner = handler.unary_unary

        async def unary(request, context):
            await check(context)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )
    inner_stream = handler.stream_stream

    async def stream(request_iterator, context):
        await check(context)
        async for response in inner_stream(request_iterator, context):
            yield response

    return grpc.stream_stream_rpc_method_handler(
        stream, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )
