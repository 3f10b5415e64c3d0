// The contract's errors as a typed value: status code, ErrorReason, metadata and bad field,
// read from the google.rpc.Status details every archivetag error carries.
import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorReason } from "./gen/archivetag/v1/errors_pb.js";
import type { ItemError } from "./gen/archivetag/v1/tagging_pb.js";
import { BadRequestSchema, ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";

/** The ErrorInfo domain of archivetag errors. */
export const ERROR_DOMAIN = "archivetag.v1";

/**
 * The ErrorInfo metadata each reason carries (protos/archivetag/v1/errors.proto, docs/errors.md):
 * every value is a string. A reason not listed here carries none.
 */
export interface ReasonMetadata {
  [ErrorReason.IMAGE_TOO_LARGE]: { size_bytes: string; limit_bytes: string; setting: string };
  [ErrorReason.IMAGE_TOO_MANY_PIXELS]: { width: string; height: string; limit_pixels: string; setting: string };
  [ErrorReason.CLIENT_QUEUE_FULL]: { client: string; limit: string; setting: string };
  [ErrorReason.INFERENCE_QUEUE_FULL]: { model: string; limit: string; setting: string };
  [ErrorReason.MODEL_NOT_SERVING]: { model: string; phase: string };
  /** One entry per tagger: its FallbackReason's full name, e.g. { florence: "FALLBACK_REASON_UNREACHABLE" }. */
  [ErrorReason.NO_TAGGER_AVAILABLE]: { [tagger: string]: string };
  [ErrorReason.DEADLINE_PASSED]: { deadline_seconds: string };
  [ErrorReason.REQUEST_MALFORMED]: { message: string };
}

/**
 * The metadata of an error with reason R: the keys that reason carries (ReasonMetadata), typed, beside
 * any others as strings.
 */
export type ErrorMetadata<R extends ErrorReason> = Readonly<Record<string, string>> &
  Readonly<R extends keyof ReasonMetadata ? ReasonMetadata[R] : unknown>;

/** An ArchivetagError known to have reason R (what `error.is(R)` narrows to): its metadata typed. */
export type ArchivetagErrorOf<R extends ErrorReason> = ArchivetagError & { readonly reason: R; readonly metadata: ErrorMetadata<R> };

/**
 * A failed archivetag call or stream item. Branch on `reason` (and `code`), never on `message`.
 * `error.is(ErrorReason.IMAGE_TOO_LARGE)` narrows `metadata` to that reason's keys.
 */
export class ArchivetagError extends Error {
  override readonly name = "ArchivetagError";

  constructor(
    /** gRPC status code (connect's Code has the gRPC numbers). */
    readonly code: Code,
    message: string,
    /** Why, for programs; UNSPECIFIED when the gRPC library itself failed (no details). */
    readonly reason: ErrorReason,
    /** ErrorInfo metadata: limits, settings, each tagger's fallback reason; `is(reason)` types it (ReasonMetadata). */
    readonly metadata: Readonly<Record<string, string>>,
    /** The bad request field (google.rpc.BadRequest), or "". */
    readonly field: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  /** Whether this error has the given reason; narrows `reason` and `metadata` (ReasonMetadata). */
  is<T extends ErrorReason>(reason: T): this is ArchivetagErrorOf<T> {
    return this.reason === reason;
  }

  /** A plain, JSON- and structured-clone-safe copy (for IPC, logs, a ledger): an Error's own fields do not
   * survive Electron's IPC. */
  toJSON(): ErrorSummary {
    return {
      code: this.code,
      status: this.status,
      reason: this.reasonName,
      message: this.message,
      metadata: { ...this.metadata },
      field: this.field,
      retryable: this.retryable,
    };
  }

  /** The gRPC status name, e.g. "INVALID_ARGUMENT". */
  get status(): string {
    return STATUS_NAMES[this.code] ?? "UNKNOWN";
  }

  /** The reason's name without prefix, as in ErrorInfo.reason, e.g. "IMAGE_CORRUPT". */
  get reasonName(): string {
    return ErrorReason[this.reason] ?? String(this.reason);
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

/** An ArchivetagError as plain data (ArchivetagError.toJSON()). */
export interface ErrorSummary {
  code: number;
  /** gRPC status name, e.g. "INVALID_ARGUMENT". */
  status: string;
  /** ErrorReason name without prefix, e.g. "IMAGE_CORRUPT" ("UNSPECIFIED": the transport's, not the server's). */
  reason: string;
  message: string;
  metadata: Record<string, string>;
  field: string;
  retryable: boolean;
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
