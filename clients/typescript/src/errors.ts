// The contract's errors as a typed value: status code, ErrorReason, metadata and bad field,
// read from the google.rpc.Status details every archivetag error carries.
import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorReason } from "./gen/archivetag/v1/errors_pb.js";
import type { ItemError } from "./gen/archivetag/v1/tagging_pb.js";
import { BadRequestSchema, ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";

/** The ErrorInfo domain of archivetag errors. */
export const ERROR_DOMAIN = "archivetag.v1";

/** A failed archivetag call or stream item. Branch on `reason` (and `code`), never on `message`. */
export class ArchivetagError extends Error {
  override readonly name = "ArchivetagError";

  constructor(
    /** gRPC status code (connect's Code has the gRPC numbers). */
    readonly code: Code,
    message: string,
    /** Why, for programs; UNSPECIFIED when the gRPC library itself failed (no details). */
    readonly reason: ErrorReason,
    /** ErrorInfo metadata: limits, settings, each tagger's fallback reason. */
    readonly metadata: Readonly<Record<string, string>>,
    /** The bad request field (google.rpc.BadRequest), or "". */
    readonly field: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  /** The gRPC status name, e.g. "INVALID_ARGUMENT". */
  get status(): string {
    return STATUS_NAMES[this.code] ?? "UNKNOWN";
  }

  /** The reason's name without prefix, as in ErrorInfo.reason, e.g. "IMAGE_CORRUPT". */
  get reasonName(): string {
    return ErrorReason[this.reason];
  }

  /**
   * Whether the contract says retrying later may succeed: UNAVAILABLE, and RESOURCE_EXHAUSTED
   * that the server explains ("retry later"). A RESOURCE_EXHAUSTED without a reason is the
   * gRPC library refusing an oversized message: the same request would fail again. An INTERNAL
   * without a reason is not an archivetag server's (each of its errors carries one) but the
   * transport's (a connection reset under a call or stream): retrying may succeed.
   */
  get retryable(): boolean {
    const unexplained = this.reason === ErrorReason.UNSPECIFIED;
    return (
      this.code === Code.Unavailable ||
      (this.code === Code.ResourceExhausted && !unexplained) ||
      (this.code === Code.Internal && unexplained)
    );
  }
}

const STATUS_NAMES: Record<number, string> = {
  [Code.Canceled]: "CANCELLED",
  [Code.Unknown]: "UNKNOWN",
  [Code.InvalidArgument]: "INVALID_ARGUMENT",
  [Code.DeadlineExceeded]: "DEADLINE_EXCEEDED",
  [Code.NotFound]: "NOT_FOUND",
  [Code.AlreadyExists]: "ALREADY_EXISTS",
  [Code.PermissionDenied]: "PERMISSION_DENIED",
  [Code.ResourceExhausted]: "RESOURCE_EXHAUSTED",
  [Code.FailedPrecondition]: "FAILED_PRECONDITION",
  [Code.Aborted]: "ABORTED",
  [Code.OutOfRange]: "OUT_OF_RANGE",
  [Code.Unimplemented]: "UNIMPLEMENTED",
  [Code.Internal]: "INTERNAL",
  [Code.Unavailable]: "UNAVAILABLE",
  [Code.DataLoss]: "DATA_LOSS",
  [Code.Unauthenticated]: "UNAUTHENTICATED",
};

/** ErrorInfo.reason ("IMAGE_CORRUPT") → ErrorReason; UNSPECIFIED for a name this version does not know. */
export function reasonFromName(name: string): ErrorReason {
  const value = (ErrorReason as unknown as Record<string, number | undefined>)[name];
  return typeof value === "number" ? value : ErrorReason.UNSPECIFIED;
}

/** Any failure of a call → ArchivetagError (reading the google.rpc details when present). */
export function toArchivetagError(error: unknown): ArchivetagError {
  if (error instanceof ArchivetagError) return error;
  const connect = ConnectError.from(error);
  let reason = ErrorReason.UNSPECIFIED;
  let metadata: Record<string, string> = {};
  for (const info of connect.findDetails(ErrorInfoSchema)) {
    if (info.domain === ERROR_DOMAIN) {
      reason = reasonFromName(info.reason);
      metadata = { ...info.metadata };
    }
  }
  const field = connect.findDetails(BadRequestSchema)[0]?.fieldViolations[0]?.field ?? "";
  return new ArchivetagError(connect.code, connect.rawMessage, reason, metadata, field, { cause: error });
}

/** A TagImages item's error → ArchivetagError, the same shape as a failed TagImage call. */
export function fromItemError(error: ItemError): ArchivetagError {
  return new ArchivetagError(error.code as Code, error.message, error.reason, { ...error.metadata }, error.field);
}
