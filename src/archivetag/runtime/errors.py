"""The product's error language: exception type → gRPC status code, decided here once."""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """An error whose gRPC status is known. The message is shown to the client."""

    code = grpc.StatusCode.INTERNAL


class InvalidInput(ServiceError):
    """The request (usually the image) is bad: the caller's fault, retrying won't help."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class QueueFull(ServiceError):
    """The inference queue is full: back off, or send to another replica."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NotServing(ServiceError):
    """The model is not ready (loading, unhealthy, draining)."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExpired(ServiceError):
    """The caller's deadline passed before inference."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


def abandoned_batch(size: int) -> list[DeadlineExpired]:
    """What infer_batch returns for a batch it stopped early because every caller had gone."""
    return [DeadlineExpired("every caller of this batch has gone (cancelled or past its deadline)")] * size


class ModelLoadError(Exception):
    """The model cannot be loaded; the service stays NOT_SERVING and says this."""


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-facing message for an exception."""
    if isinstance(exc, ServiceError):
        return exc.code, str(exc)
    # Matched by name so that this module does not import torch.
    if type(exc).__name__ == "OutOfMemoryError":
        return (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"out of accelerator memory during inference ({exc}); lower ARCHIVETAG_MAX_BATCH_SIZE",
        )
    return grpc.StatusCode.INTERNAL, f"inference failed: {type(exc).__name__}: {exc}"


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    code, message = status_for(exc)
    await context.abort(code, message)
