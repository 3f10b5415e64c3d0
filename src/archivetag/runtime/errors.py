"""The product's error language, decided here once: exception → status, reason and details.

Each reason (archivetag.v1.ErrorReason without its prefix) belongs to exactly one gRPC
status (REASON_STATUS, the table docs/errors.md shows). Every error leaves a server as
that status with a google.rpc.Status trailer: an ErrorInfo (domain, reason, metadata) and,
for a bad field, a BadRequest. TagImages items carry the same reason in ItemError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from prometheus_client import Counter

from archivetag.v1 import tagging_pb2

ERRORS_ANSWERED = Counter("archivetag_errors_total",
                          "Errors answered (calls and stream items), by reason (docs/errors.md).", ["reason"])

DOMAIN = "archivetag.v1"
REASON_PREFIX = "ERROR_REASON_"

_S = grpc.StatusCode
REASON_STATUS: dict[str, grpc.StatusCode] = {
    "IMAGE_MISSING": _S.INVALID_ARGUMENT,
    "IMAGE_EMPTY": _S.INVALID_ARGUMENT,
    "IMAGE_TOO_LARGE": _S.INVALID_ARGUMENT,
    "IMAGE_TOO_MANY_PIXELS": _S.INVALID_ARGUMENT,
    "IMAGE_FORMAT_UNSUPPORTED": _S.INVALID_ARGUMENT,
    "IMAGE_CORRUPT": _S.INVALID_ARGUMENT,
    "IMAGE_URI_REFUSED": _S.INVALID_ARGUMENT,
    "FIELD_INVALID": _S.INVALID_ARGUMENT,
    "ITEM_ID_INVALID": _S.INVALID_ARGUMENT,
    "TOKEN_MISSING": _S.UNAUTHENTICATED,
    "TOKEN_INVALID": _S.UNAUTHENTICATED,
    "CLIENT_QUEUE_FULL": _S.RESOURCE_EXHAUSTED,
    "INFERENCE_QUEUE_FULL": _S.RESOURCE_EXHAUSTED,
    "ACCELERATOR_OUT_OF_MEMORY": _S.RESOURCE_EXHAUSTED,
    "MODEL_NOT_SERVING": _S.UNAVAILABLE,
    "NO_TAGGER_AVAILABLE": _S.UNAVAILABLE,
    "DEADLINE_PASSED": _S.DEADLINE_EXCEEDED,
    "INFERENCE_FAILED": _S.INTERNAL,
    "REQUEST_MALFORMED": _S.INVALID_ARGUMENT,
    "IMAGE_DECODE_LIMIT": _S.INVALID_ARGUMENT,
}


class ServiceError(Exception):
    """An error whose status is known. The message is shown to the client; the reason,
    metadata and field go to programs. The status comes from the reason (REASON_STATUS)."""

    reason = "INFERENCE_FAILED"

    def __init__(self, message: str, *, reason: str | None = None, metadata: dict | None = None, field: str = ""):
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        if self.reason not in REASON_STATUS:
            raise ValueError(f"unknown error reason {self.reason!r}")
        self.metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
        self.field = field

    @property
    def code(self) -> grpc.StatusCode:
        return REASON_STATUS[self.reason]


class InvalidInput(ServiceError):
    """The request (usually the image) is bad: the caller's fault, retrying won't help."""

    reason = "IMAGE_CORRUPT"


class QueueFull(ServiceError):
    """Too much work waiting: back off, or send to another replica."""

    reason = "INFERENCE_QUEUE_FULL"


class NotServing(ServiceError):
    """The model is not ready (loading, unhealthy, draining)."""

    reason = "MODEL_NOT_SERVING"


class DeadlineExpired(ServiceError):
    """The caller's deadline passed before the work was done."""

    reason = "DEADLINE_PASSED"


class Unauthenticated(ServiceError):
    """No valid bearer token."""

    reason = "TOKEN_MISSING"


def abandoned_batch(size: int) -> list[DeadlineExpired]:
    """What infer_batch returns for a batch it stopped early because every caller had gone."""
    return [DeadlineExpired("every caller of this batch has gone (cancelled or past its deadline)")] * size


class ModelLoadError(Exception):
    """The model cannot be loaded; the service stays NOT_SERVING and says this."""


@dataclass(frozen=True)
class ErrorStatus:
    """What a client is told about one failure."""

    code: grpc.StatusCode
    message: str
    reason: str
    metadata: dict[str, str] = field(default_factory=dict)
    field: str = ""

    def rpc_status(self) -> grpc.Status:
        """The status with its google.rpc details, ready for context.abort's trailing metadata."""
        info = any_pb2.Any()
        info.Pack(error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.metadata))
        details = [info]
        if self.field:
            bad = any_pb2.Any()
            bad.Pack(error_details_pb2.BadRequest(field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=self.field, description=self.message)
            ]))
            details.append(bad)
        return rpc_status.to_status(status_pb2.Status(code=self.code.value[0], message=self.message, details=details))

    def item_error(self) -> tagging_pb2.ItemError:
        return tagging_pb2.ItemError(
            code=self.code.value[0], status=self.code.name, message=self.message,
            reason=REASON_PREFIX + self.reason,  # the enum by name: the constructor looks it up
            metadata=self.metadata, field=self.field,
        )


def status_for(exc: BaseException) -> ErrorStatus:
    """The status, message, reason and details for an exception about to be answered (counted by reason)."""
    status = _status_for(exc)
    ERRORS_ANSWERED.labels(status.reason).inc()
    return status


def _status_for(exc: BaseException) -> ErrorStatus:
    if isinstance(exc, ServiceError):
        return ErrorStatus(exc.code, str(exc), exc.reason, exc.metadata, exc.field)
    # Matched by name so that this module does not import torch.
    if type(exc).__name__ == "OutOfMemoryError":
        return ErrorStatus(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"out of accelerator memory during inference ({exc}); lower ARCHIVETAG_MAX_BATCH_SIZE",
            "ACCELERATOR_OUT_OF_MEMORY", {"setting": "ARCHIVETAG_MAX_BATCH_SIZE"},
        )
    return ErrorStatus(grpc.StatusCode.INTERNAL, f"inference failed: {type(exc).__name__}: {exc}", "INFERENCE_FAILED")


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException) -> NoReturn:
    status = status_for(exc).rpc_status()
    await context.abort(status.code, status.details, trailing_metadata=status.trailing_metadata)
    raise AssertionError("unreachable: ServicerContext.abort always raises")  # grpc is untyped


@dataclass(frozen=True)
class CallError:
    """The details of a failed call as a client reads them (reason '' when none was sent)."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    field: str = ""


def read_call_error(call: grpc.RpcError) -> CallError:
    """The google.rpc details of a failed call (sync or aio)."""
    code, message = call.code(), call.details() or ""
    try:
        status = rpc_status.from_call(call)
    except ValueError:  # details that contradict the status line: trust the status line
        status = None
    reason, metadata, bad_field = "", {}, ""
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.domain == DOMAIN:
                reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            bad_field = bad.field_violations[0].field if bad.field_violations else ""
    return CallError(code, message, reason, metadata, bad_field)


def reraise_from_call(call: grpc.RpcError, cls: type[ServiceError] = InvalidInput) -> ServiceError:
    """A backend's error, passed on to our caller with its reason and details intact."""
    error = read_call_error(call)
    if error.reason in REASON_STATUS and REASON_STATUS[error.reason] == error.code:
        return cls(error.message, reason=error.reason, metadata=error.metadata, field=error.field)
    return cls(error.message)

