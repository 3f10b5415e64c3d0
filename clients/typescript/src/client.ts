// A small layer over the generated TaggingService client: typed results without nulls where
// the contract guarantees a value, bearer token, deadlines, per-item stream results with
// backpressure, and a retry policy that retries only what the contract calls retryable.
import { Code, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import type { ClientSessionOptions, SecureClientSessionOptions } from "node:http2";
import {
  ImageContextSchema,
  ModelIdentitySchema,
  OcrMode,
  OcrStatus,
  type ImageContext,
  type ModelIdentity,
} from "./gen/archivetag/v1/common_pb.js";
import {
  FallbackReason,
  OverflowPolicy,
  StageTimingsSchema,
  TaggingService,
  ViewTypeSchema,
  type BackendStatus,
  type CacheStatus,
  type StageTimings,
  type TagImageRequestSchema,
  type TagImageResponse,
  type TagImagesRequestSchema,
  type ViewType as ViewTypeMessage,
} from "./gen/archivetag/v1/tagging_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "./gen/grpc/health/v1/health_pb.js";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { ArchivetagError, fromItemError, toArchivetagError } from "./errors.js";
import { ErrorReason } from "./gen/archivetag/v1/errors_pb.js";

/** The orchestrator's health name. */
export const TAGGING_SERVICE = TaggingService.typeName;

export interface RetryPolicy {
  /** Attempts in all, the first included (1: no retry). */
  maxAttempts: number;
  /** Wait before the first retry; doubles (with jitter) up to maxBackoffMs. */
  initialBackoffMs: number;
  maxBackoffMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { maxAttempts: 4, initialBackoffMs: 200, maxBackoffMs: 5_000 };

export interface ClientOptions {
  /** The orchestrator: "host:port" (plaintext), or "http://host:port" / "https://host:port". */
  target: string;
  /** Bearer token (at least 16 characters); omit when the server runs without auth. */
  token?: string;
  /**
   * Deadline of each call unless the call sets its own; default 120 s. Under about 5 s Florence-2 is skipped:
   * the orchestrator keeps ARCHIVETAG_FALLBACK_RESERVE_SECONDS (5 s) of the deadline for RAM++ (see TagOptions.deadlineMs).
   */
  deadlineMs?: number;
  /** Retries of retryable failures (UNAVAILABLE, explained RESOURCE_EXHAUSTED); false: none. */
  retry?: RetryPolicy | false;
  /** TLS: CA bundle, client certificate and key (PEM), as node:http2 takes them. */
  tls?: Pick<SecureClientSessionOptions, "ca" | "cert" | "key">;
  /**
   * Largest image sent, in bytes; a larger one is refused before sending, INVALID_ARGUMENT IMAGE_TOO_LARGE.
   * Default 32 MiB, the orchestrator's default (its ARCHIVETAG_MAX_IMAGE_BYTES): set both alike.
   */
  maxImageBytes?: number;
  /**
   * node:http2's maxSessionMemory (MB): the data one connection may hold buffered before it refuses new
   * streams. Node's default, 10 MB, is less than one large scan, and a connection over it fails every later
   * call. Default: room for a full window of images at maxImageBytes.
   */
  sessionMemoryMb?: number;
  /**
   * More node:http2 session options (http2.connect's), e.g. { peerMaxConcurrentStreams } or a `lookup`.
   * `tls` and `sessionMemoryMb` are applied over them; `maxSessionMemory` here is used when sessionMemoryMb is unset.
   */
  http2?: ClientSessionOptions | SecureClientSessionOptions;
  /** Close the connection after it was idle this long (no call open); default 15 min. An idle connection
   * never keeps the process alive; `close()` ends it at once. */
  idleConnectionTimeoutMs?: number;
  /** HTTP/2 PING the server when no data arrived for this long, and drop the connection when no answer
   * comes within pingTimeoutMs (default 15 s); default: no pings. */
  pingIntervalMs?: number;
  pingTimeoutMs?: number;
}

export type ImageInput = Uint8Array | { uri: string };

export interface TagOptions {
  /** At most this many tags, the most confident first; 0 or unset: no cap. */
  maxTags?: number;
  /** Minimum tag confidence in [0, 1]; unset: each tagger's defaults. */
  threshold?: number;
  /** Also return the SigLIP embedding. */
  includeEmbedding?: boolean;
  /** Also read the text in the photo (OcrMode.TEXT, or TEXT_WITH_REGIONS with where it is): one more
   * Florence-2 pass. The answer's `ocr` says OcrStatus.NOT_AVAILABLE when RAM++ answered. Unset: no OCR. */
  ocr?: OcrMode;
  /** Skip the orchestrator's result cache: the models answer and the answer is not stored. */
  bypassCache?: boolean;
  /** When the primary tagger is busy: OverflowPolicy.WAIT for it (every photo gets its answer) or
   * OverflowPolicy.FALLBACK to the next tagger at once (throughput first). Unset: the orchestrator's policy. */
  overflow?: OverflowPolicy;
  /** What the archive knows about the photo (echoed). */
  context?: Partial<Pick<ImageContext, "viewType" | "locationType" | "region">>;
  /**
   * Also score the photo against the archive's own labels with SigLIP (zero-shot): the answer's `labels`
   * carries each label's probability, most probable first. A label without prompts uses `template`
   * (default "a photo of {}."). Bad labels: INVALID_ARGUMENT (FIELD_INVALID) naming the field.
   */
  labels?: LabelSetInput;
  /**
   * A W3C trace context (`00-<trace id>-<span id>-<flags>`) the call continues: with tracing on in the
   * orchestrator (docs/operations.md), the photo's spans join the app's trace. Unset: the orchestrator starts one.
   */
  traceparent?: string;
  /**
   * This call's deadline (all retries included). Keep it well over 5 s: the orchestrator reserves
   * ARCHIVETAG_FALLBACK_RESERVE_SECONDS (default 5 s) of every deadline for the fallback tagger, so under
   * about 5 s Florence-2 is not asked at all and RAM++ answers, with
   * `fallback` FallbackReason.NO_TIME_LEFT: RAM++'s tags, no caption (and with `ocr`, no text: `degraded`).
   * This is an answer, not an error; `deadlineMs: 400` gets RAM++'s tags. Too short for RAM++ too: DEADLINE_EXCEEDED (DEADLINE_PASSED).
   */
  deadlineMs?: number;
  signal?: AbortSignal;
}

/** A label set: each label's name with its prompts (empty: the template filled with the name). */
export interface LabelSetInput {
  labels: { name: string; prompts?: string[] }[];
  /** "{}" stands for the label's name; default "a photo of {}.". */
  template?: string;
}

/** Text embeddings from SigLIP's text tower (TaggingClient.embedText). */
export interface TextEmbeddings {
  /** One L2-normalised vector per text, in request order. */
  embeddings: Float32Array[];
  /** The SigLIP model that made them: compare only with image embeddings from the same model. */
  model: ModelIdentity;
  /** SigLIP's score of an image for a text: sigmoid(exp(logitScale) * cosine + logitBias). */
  logitScale: number;
  logitBias: number;
}

/** SigLIP's probability that a text describes an image, from the cosine of their embeddings. */
export function siglipScore(cosine: number, logitScale: number, logitBias: number): number {
  return 1 / (1 + Math.exp(-(Math.exp(logitScale) * cosine + logitBias)));
}

/** The view-type classes of the SigLIP head; a later model may add others (the string stays open). */
export type ViewTypeName = "interior" | "exterior" | "aerial" | "detail" | "unknown" | (string & {});

/** The view type of a photo (SigLIP zero-shot), its `name` one of ViewTypeName. */
export type ViewType = Omit<ViewTypeMessage, "name"> & { name: ViewTypeName };

/** TagImageResponse with every part the contract always sets present (never undefined), times as Dates. */
export type TagResult = Omit<TagImageResponse, "viewType" | "timings" | "context" | "models" | "taggedAt"> & {
  viewType: ViewType;
  timings: StageTimings;
  context: ImageContext;
  models: ModelIdentity[];
  /** When the models gave this answer (for a cached answer: the original's). */
  taggedAt: Date;
};

export interface TagItem extends Omit<TagOptions, "deadlineMs" | "signal" | "traceparent"> {
  /** Unique within the call; the client numbers items that have none ("0", "1", ...). */
  id?: string;
  image: ImageInput;
}

/** The answer to one tagMany item: its result or its own error. */
export type TagItemResult =
  | { id: string; item: TagItem; ok: true; result: TagResult }
  | { id: string; item: TagItem; ok: false; error: ArchivetagError };

export interface TagManyOptions {
  /** Items sent and not yet answered, at most (backpressure on the input); default 16. */
  window?: number;
  /** Deadline of the whole stream; default none (each item has the server's default deadline). */
  deadlineMs?: number;
  /** A W3C trace context the stream's items continue (as TagOptions.traceparent). */
  traceparent?: string;
  signal?: AbortSignal;
}

export type BackendState = Omit<BackendStatus, "model" | "lastErrorTime" | "okCount" | "errorCount"> & {
  model: ModelIdentity;
  /** When lastError happened; undefined when there was none. */
  lastErrorTime: Date | undefined;
  /** Calls answered / failed since the orchestrator started (numbers, not the wire's uint64 bigint). */
  okCount: number;
  errorCount: number;
};

/** The orchestrator's result cache (docs/cache.md), counts as numbers. */
export type CacheState = Omit<CacheStatus, "$typeName" | "$unknown" | "entries" | "bytes" | "hits" | "misses" | "shared" | "evictions"> & {
  /** "sqlite", "redis" or "off". */
  backend: "sqlite" | "redis" | "off" | (string & {});
  entries: number;
  bytes: number;
  hits: number;
  misses: number;
  shared: number;
  evictions: number;
};

export interface StackStatus {
  backends: BackendState[];
  /** Images being processed now, over all clients. */
  inFlight: number;
  /** Images waiting for their client's turn. */
  queued: number;
  /** The result cache. */
  cache: CacheState;
}

export type HealthStatus = "SERVING" | "NOT_SERVING" | "UNKNOWN" | "SERVICE_UNKNOWN";

const DEFAULT_DEADLINE_MS = 120_000;
/** The orchestrator's default image limit (ARCHIVETAG_MAX_IMAGE_BYTES). */
export const DEFAULT_MAX_IMAGE_BYTES = 32 * 1024 * 1024;
/** Room around an image for the rest of a request, as the server allows (runtime/channels.py). */
const MESSAGE_HEADROOM_BYTES = 4 * 1024 * 1024;
const SESSION_IMAGES = 24; // a tagMany window (16 by default) and a few calls beside it

/**
 * The orchestrator's client: one HTTP/2 connection, opened on the first call. `close()` (or `await using`)
 * ends it; an idle connection (no call open) never keeps the process alive.
 */
export class TaggingClient {
  private readonly client: Client<typeof TaggingService>;
  private readonly health_: Client<typeof Health>;
  private readonly deadlineMs: number;
  private readonly sessions: Http2SessionManager;
  private readonly closing = new AbortController();
  /** The retry policy of this client's calls (maxAttempts 1: none). */
  readonly retry: RetryPolicy;
  /** Largest image sent, in bytes (ClientOptions.maxImageBytes). */
  readonly maxImageBytes: number;

  constructor(options: ClientOptions) {
    const baseUrl = /^https?:\/\//.test(options.target)
      ? options.target
      : `${options.tls ? "https" : "http"}://${options.target}`;
    const interceptors: Interceptor[] = [];
    if (options.token) {
      const header = `Bearer ${options.token}`;
      interceptors.push((next) => (request) => {
        request.header.set("authorization", header);
        return next(request);
      });
    }
    this.maxImageBytes = options.maxImageBytes ?? DEFAULT_MAX_IMAGE_BYTES;
    const sessionMemoryMb =
      options.sessionMemoryMb ?? Math.max(10, Math.ceil(((this.maxImageBytes + MESSAGE_HEADROOM_BYTES) * SESSION_IMAGES) / 1e6));
    this.sessions = new Http2SessionManager(
      baseUrl,
      {
        idleConnectionTimeoutMs: options.idleConnectionTimeoutMs,
        pingIntervalMs: options.pingIntervalMs,
        pingTimeoutMs: options.pingTimeoutMs,
      },
      {
        ...(options.http2 ?? {}),
        ...(options.tls ?? {}),
        maxSessionMemory: options.sessionMemoryMb === undefined && options.http2?.maxSessionMemory !== undefined
          ? options.http2.maxSessionMemory
          : sessionMemoryMb,
      },
    );
    const transport = createGrpcTransport({
      baseUrl,
      interceptors,
      sessionManager: this.sessions,
      // The server's image limit decides what is too large, with a clear INVALID_ARGUMENT.
      writeMaxBytes: 0x7fffffff,
      readMaxBytes: 0x7fffffff,
    });
    this.client = createClient(TaggingService, transport);
    this.health_ = createClient(Health, transport);
    this.deadlineMs = options.deadlineMs ?? DEFAULT_DEADLINE_MS;
    this.retry = options.retry === false ? { ...DEFAULT_RETRY, maxAttempts: 1 } : (options.retry ?? DEFAULT_RETRY);
  }

  /** Whether close() was called. */
  get closed(): boolean {
    return this.closing.signal.aborted;
  }

  /**
   * Ends the connection and every call and stream still open on it (they fail CANCELLED, not retried);
   * later calls fail at once. Idempotent. After it nothing of the client keeps the process alive.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    const reason = new ArchivetagError(Code.Canceled, "the client was closed", ErrorReason.UNSPECIFIED, {}, "");
    this.closing.abort(reason);
    this.sessions.abort(reason);
  }

  /** `await using client = new TaggingClient(...)`: close() at the end of the scope. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** Tags one image. Throws ArchivetagError. */
  async tag(image: ImageInput, options: TagOptions = {}): Promise<TagResult> {
    const tooLarge = this.tooLarge(image);
    if (tooLarge) throw tooLarge;
    const request = tagRequest(image, options);
    const response = await this.withRetry(options, (callOptions) =>
      this.client.tagImage(request, { ...callOptions, headers: traceHeaders(options.traceparent) }),
    );
    return tagResult(response);
  }

  /**
   * Embeds texts with SigLIP's text tower, for search by words over image embeddings the app stored
   * (tag with `includeEmbedding`). At most 64 texts of at most 1000 characters each by default; an empty
   * or over-long text: INVALID_ARGUMENT (FIELD_INVALID) with `field` e.g. "texts[1]". Throws ArchivetagError.
   */
  async embedText(texts: string[], options: { deadlineMs?: number; signal?: AbortSignal } = {}): Promise<TextEmbeddings> {
    const reply = await this.withRetry(options, (callOptions) => this.client.embedText({ texts }, callOptions));
    return {
      embeddings: reply.embeddings.map((e) => Float32Array.from(e.values)),
      model: reply.model ?? create(ModelIdentitySchema),
      logitScale: reply.logitScale,
      logitBias: reply.logitBias,
    };
  }

  /** The refusal of an image over maxImageBytes (it is never sent), or undefined. */
  private tooLarge(image: ImageInput): ArchivetagError | undefined {
    if (!(image instanceof Uint8Array) || image.byteLength <= this.maxImageBytes) return undefined;
    const mib = (n: number) => (n / 1024 / 1024).toFixed(1);
    return new ArchivetagError(
      Code.InvalidArgument,
      `image is ${image.byteLength} bytes (${mib(image.byteLength)} MiB); the limit is ${this.maxImageBytes} bytes ` +
        `(${mib(this.maxImageBytes)} MiB: the client's maxImageBytes, as the server's ARCHIVETAG_MAX_IMAGE_BYTES)`,
      ErrorReason.IMAGE_TOO_LARGE,
      { size_bytes: String(image.byteLength), limit_bytes: String(this.maxImageBytes), setting: "ARCHIVETAG_MAX_IMAGE_BYTES" },
      "image.data",
    );
  }

  /**
   * Tags many images over one TagImages stream. Yields one answer per item, in completion
   * order, each with the item's result or its own error; a bad item does not end the stream.
   * Reads the next input item only when fewer than `window` are unanswered. If the stream
   * itself breaks with a retryable error, it is reopened and the unanswered items are resent.
   * Leaving the loop early (`break`, `return`, a throw) ends the stream and the input iterator.
   */
  async *tagMany(items: AsyncIterable<TagItem> | Iterable<TagItem>, options: TagManyOptions = {}): AsyncGenerator<TagItemResult> {
    const window = Math.max(1, options.window ?? 16);
    const source = toAsyncIterator(items);
    const unanswered = new Map<string, TagItem>();
    const used = new Set<string>();
    let nextNumber = 0;
    let sourceDone = false;
    let free = new Slots(window);
    const deadlineAt = options.deadlineMs === undefined ? undefined : Date.now() + options.deadlineMs;
    // Items over maxImageBytes are answered here, with their own error, and never sent.
    const refused: TagItemResult[] = [];
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const self = this;
    // Ends the stream when the caller leaves the loop early (the request side would wait for a free slot).
    const call = linkedSignal(options.signal, this.closing.signal);

    const requests = async function* (resend: TagItem[]): AsyncGenerator<MessageInitShape<typeof TagImagesRequestSchema>> {
      for (const item of resend) {
        await free.take();
        if (call.signal.aborted) return;
        yield { id: item.id, request: tagRequest(item.image, item) };
      }
      while (!sourceDone) {
        await free.take();
        if (call.signal.aborted) return;
        const next = await source.next();
        if (next.done) {
          sourceDone = true;
          free.give();
          return;
        }
        const item = { ...next.value };
        if (item.id !== undefined && used.has(item.id)) {
          throw new Error(`tagMany: item id ${JSON.stringify(item.id)} is used twice; ids must be unique within a call`);
        }
        if (item.id === undefined) {
          while (used.has(String(nextNumber))) nextNumber++;
          item.id = String(nextNumber++);
        }
        used.add(item.id);
        const tooLarge = self.tooLarge(item.image);
        if (tooLarge) {
          refused.push({ id: item.id, item, ok: false, error: tooLarge });
          free.give();
          continue;
        }
        unanswered.set(item.id, item);
        yield { id: item.id, request: tagRequest(item.image, item) };
      }
    };

    try {
      for (let attempt = 1; ; attempt++) {
        this.throwIfClosed();
        const resend = [...unanswered.values()];
        free = new Slots(window);
        try {
          const timeoutMs = deadlineAt === undefined ? undefined : Math.max(1, deadlineAt - Date.now());
          for await (const answer of this.client.tagImages(requests(resend), {
            timeoutMs,
            signal: call.signal,
            headers: traceHeaders(options.traceparent),
          })) {
            yield* refused.splice(0);
            const item = unanswered.get(answer.id);
            if (!item) continue; // answered already (before a reconnect)
            unanswered.delete(answer.id);
            free.give();
            if (answer.outcome.case === "result") {
              yield { id: answer.id, item, ok: true, result: tagResult(answer.outcome.value) };
            } else if (answer.outcome.case === "error") {
              yield { id: answer.id, item, ok: false, error: fromItemError(answer.outcome.value) };
            }
          }
          yield* refused.splice(0);
          if (sourceDone && unanswered.size === 0) return;
          throw new ArchivetagError(14, `stream ended with ${unanswered.size} item(s) unanswered`, 0, {}, "");
        } catch (cause) {
          yield* refused.splice(0);
          const error = connectionLost(toArchivetagError(cause), call.signal);
          if (!error.retryable || attempt >= this.retry.maxAttempts || pastDeadline(deadlineAt)) throw error;
          await sleep(backoffMs(this.retry, attempt), call.signal);
        }
      }
    } finally {
      // The caller left early or the stream failed: end the HTTP/2 stream and the input.
      call.abort();
      free.close();
      // Not awaited: an input waiting for its own next item (a file, a queue) may take long to return.
      if (!sourceDone) void Promise.resolve(source.return?.()).catch(() => undefined);
    }
  }

  /** The orchestrator's own health (grpc.health.v1, no token needed). */
  async health(options: { deadlineMs?: number; signal?: AbortSignal } = {}): Promise<HealthStatus> {
    this.throwIfClosed();
    const call = linkedSignal(options.signal, this.closing.signal);
    try {
      const reply = await this.health_
        .check({ service: TAGGING_SERVICE }, { timeoutMs: options.deadlineMs ?? 10_000, signal: call.signal })
        .catch((cause) => {
          throw toArchivetagError(cause);
        });
      return HealthCheckResponse_ServingStatus[reply.status] as HealthStatus;
    } finally {
      call.dispose();
    }
  }

  /** Every backend's health, breaker, latency and last error, and the result cache. */
  async status(options: { deadlineMs?: number; signal?: AbortSignal } = {}): Promise<StackStatus> {
    const reply = await this.withRetry({ deadlineMs: options.deadlineMs ?? 10_000, signal: options.signal }, (o) =>
      this.client.getStatus({}, o),
    );
    return {
      backends: reply.backends.map((b) => ({
        ...b,
        model: b.model ?? create(ModelIdentitySchema),
        lastErrorTime: b.lastErrorTime ? timestampDate(b.lastErrorTime) : undefined,
        okCount: Number(b.okCount),
        errorCount: Number(b.errorCount),
      })),
      inFlight: reply.inFlight,
      queued: reply.queued,
      cache: {
        backend: reply.cache?.backend ?? "off",
        entries: Number(reply.cache?.entries ?? 0),
        bytes: Number(reply.cache?.bytes ?? 0),
        hits: Number(reply.cache?.hits ?? 0),
        misses: Number(reply.cache?.misses ?? 0),
        shared: Number(reply.cache?.shared ?? 0),
        evictions: Number(reply.cache?.evictions ?? 0),
        lastError: reply.cache?.lastError ?? "",
      },
    };
  }

  private throwIfClosed(): void {
    if (this.closed) throw new ArchivetagError(Code.Canceled, "the client is closed", ErrorReason.UNSPECIFIED, {}, "");
  }

  private async withRetry<T>(
    options: { deadlineMs?: number; signal?: AbortSignal },
    call: (o: { timeoutMs: number; signal?: AbortSignal }) => Promise<T>,
  ): Promise<T> {
    this.throwIfClosed();
    const deadlineAt = Date.now() + (options.deadlineMs ?? this.deadlineMs);
    const signal = linkedSignal(options.signal, this.closing.signal);
    try {
      for (let attempt = 1; ; attempt++) {
        try {
          return await call({ timeoutMs: Math.max(1, deadlineAt - Date.now()), signal: signal.signal });
        } catch (cause) {
          const error = connectionLost(toArchivetagError(cause), signal.signal);
          const wait = backoffMs(this.retry, attempt);
          if (!error.retryable || attempt >= this.retry.maxAttempts || Date.now() + wait >= deadlineAt) throw error;
          await sleep(wait, signal.signal);
        }
      }
    } finally {
      signal.dispose();
    }
  }
}

/** The `traceparent` header of a call, when the caller gave a trace context. */
function traceHeaders(traceparent: string | undefined): Record<string, string> | undefined {
  return traceparent ? { traceparent } : undefined;
}

/**
 * A stream or call cut off by the connection (the orchestrator died) reaches us as CANCELLED (the
 * HTTP/2 stream reset with CANCEL), which would say the caller cancelled, or ABORTED (the socket reset,
 * ECONNRESET), which no archivetag server sends. Unless the caller aborted, it is UNAVAILABLE: the server
 * went away, and retrying (another replica, or the restarted one) may succeed.
 */
function connectionLost(error: ArchivetagError, signal: AbortSignal | undefined): ArchivetagError {
  const lost = error.code === Code.Canceled || (error.code === Code.Aborted && error.reason === ErrorReason.UNSPECIFIED);
  if (!lost || signal?.aborted) return error;
  return new ArchivetagError(Code.Unavailable, `connection lost: ${error.message}`, error.reason, error.metadata,
    error.field, { cause: error });
}

function tagRequest(
  image: ImageInput,
  options: Omit<TagOptions, "deadlineMs" | "signal">,
): MessageInitShape<typeof TagImageRequestSchema> {
  return {
    image: { source: image instanceof Uint8Array ? { case: "data", value: image } : { case: "uri", value: image.uri } },
    context: options.context,
    maxTags: options.maxTags ?? 0,
    threshold: options.threshold,
    includeEmbedding: options.includeEmbedding ?? false,
    ocr: options.ocr ?? OcrMode.UNSPECIFIED,
    bypassCache: options.bypassCache ?? false,
    overflow: options.overflow ?? OverflowPolicy.UNSPECIFIED,
    labels: options.labels
      ? { labels: options.labels.labels.map((l) => ({ name: l.name, prompts: l.prompts ?? [] })), template: options.labels.template ?? "" }
      : undefined,
  };
}

function tagResult(response: TagImageResponse): TagResult {
  return {
    ...response,
    viewType: response.viewType ?? create(ViewTypeSchema, { name: "unknown" }),
    timings: response.timings ?? create(StageTimingsSchema),
    context: response.context ?? create(ImageContextSchema),
    // Every orchestrator sets it; one before tagged_at existed: when the answer arrived.
    taggedAt: response.taggedAt ? timestampDate(response.taggedAt) : new Date(),
  };
}

/** A TagResult as small, plain, JSON-safe data: what an app keeps or sends over IPC. */
export interface ResultSummary {
  tagger: string;
  caption: string;
  tags: { name: string; confidence: number }[];
  viewType: ViewTypeName;
  viewTypeConfidence: number;
  /** FallbackReason name without prefix ("UNSPECIFIED": the primary answered). */
  fallback: string;
  degraded: boolean;
  cached: boolean;
  /** The text read in the photo, when OCR was asked and Florence-2 answered. */
  ocrText?: string;
  /** ISO 8601 (taggedAt). */
  taggedAt: string;
}

/** The plain summary of a result (ResultSummary). */
export function summarizeResult(result: TagResult): ResultSummary {
  const summary: ResultSummary = {
    tagger: result.tagger,
    caption: result.caption,
    tags: result.tags.map((t) => ({ name: t.name, confidence: t.confidence })),
    viewType: result.viewType.name,
    viewTypeConfidence: result.viewType.confidence,
    fallback: FallbackReason[result.fallback] ?? String(result.fallback),
    degraded: result.degraded,
    cached: result.cached,
    taggedAt: result.taggedAt.toISOString(),
  };
  if (result.ocr?.status === OcrStatus.READ) summary.ocrText = result.ocr.text;
  return summary;
}

/** A signal that aborts with any of the given ones or with abort(); dispose() detaches it from them. */
function linkedSignal(...signals: (AbortSignal | undefined)[]): { signal: AbortSignal; abort(): void; dispose(): void } {
  const controller = new AbortController();
  const detach: (() => void)[] = [];
  for (const signal of signals) {
    if (!signal) continue;
    if (signal.aborted) {
      controller.abort(signal.reason);
      break;
    }
    const onAbort = () => controller.abort(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    detach.push(() => signal.removeEventListener("abort", onAbort));
  }
  const dispose = () => detach.splice(0).forEach((d) => d());
  return {
    signal: controller.signal,
    abort() {
      dispose();
      if (!controller.signal.aborted) {
        controller.abort(new ArchivetagError(Code.Canceled, "the stream was ended by its caller", ErrorReason.UNSPECIFIED, {}, ""));
      }
    },
    dispose,
  };
}

/** Counts free places in the stream window; take() waits for one. */
class Slots {
  private waiting: (() => void)[] = [];
  constructor(private free: number) {}
  async take(): Promise<void> {
    if (this.free > 0) {
      this.free--;
      return;
    }
    await new Promise<void>((resolve) => this.waiting.push(resolve));
  }
  give(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.free++;
  }
  /** Lets every waiter go (the stream is over; they find it so). */
  close(): void {
    this.free = Number.POSITIVE_INFINITY;
    this.waiting.splice(0).forEach((w) => w());
  }
}

function toAsyncIterator<T>(items: AsyncIterable<T> | Iterable<T>): AsyncIterator<T> {
  if (Symbol.asyncIterator in items) return (items as AsyncIterable<T>)[Symbol.asyncIterator]();
  const iterator = (items as Iterable<T>)[Symbol.iterator]();
  return {
    next: async () => iterator.next(),
    return: async (value?: unknown) => iterator.return?.(value) ?? { done: true, value: undefined },
  };
}

function backoffMs(policy: RetryPolicy, attempt: number): number {
  const base = Math.min(policy.maxBackoffMs, policy.initialBackoffMs * 2 ** (attempt - 1));
  return base * (0.8 + 0.4 * Math.random());
}

function pastDeadline(deadlineAt: number | undefined): boolean {
  return deadlineAt !== undefined && Date.now() >= deadlineAt;
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
