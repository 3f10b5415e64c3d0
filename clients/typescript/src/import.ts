// importFolder(): what every archive app writes by hand around tagMany, done once. Walk a folder
// for photos, refuse those over the size limit before reading them, stream the rest through one
// TagImages stream with a window, retry per photo what the contract calls retryable, reopen the
// stream after the orchestrator went away, and append every answer to a JSON-lines ledger the app
// owns, so that a run killed at any point resumes where it stopped: nothing lost, nothing twice.
import { closeSync, fstatSync, mkdirSync, openSync, readSync, writeSync } from "node:fs";
import { readdir, readFile, stat } from "node:fs/promises";
import { dirname, extname, join, resolve } from "node:path";
import { Code } from "@connectrpc/connect";
import {
  sleep,
  summarizeResult,
  type ResultSummary,
  type TaggingClient,
  type TagItem,
  type TagOptions,
  type TagResult,
} from "./client.js";
import { ArchivetagError, type ErrorSummary } from "./errors.js";
import { ErrorReason } from "./gen/archivetag/v1/errors_pb.js";

/** The file extensions importFolder sends by default (as `archivetag tag`), compared in lower case. */
export const PHOTO_EXTENSIONS: readonly string[] = [
  ".jpg", ".jpeg", ".jpe", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".heic", ".heif",
];

export interface ImportOptions extends Omit<TagOptions, "deadlineMs" | "signal"> {
  /**
   * The ledger: a JSON-lines file the app owns (created with its folder when missing). Each line is one
   * answered photo (LedgerEntry), appended as the answer arrives; a photo whose path, size and mtime are
   * in it is not sent again. Unset: no resume (every photo is sent).
   */
  ledger?: string;
  /** Photos sent and not yet answered, at most; default 8. */
  window?: number;
  /** File extensions to send (with the dot, any case); default PHOTO_EXTENSIONS. */
  extensions?: readonly string[];
  /** Attempts per photo for a retryable answer (RESOURCE_EXHAUSTED with a reason, UNAVAILABLE); default 5. */
  attempts?: number;
  /**
   * Times the stream is reopened in a row, with no answer in between, after it failed with a retryable
   * error beyond the client's own retries (the orchestrator down, restarting); default 10.
   */
  restarts?: number;
  /** Wait before a photo's or the stream's next try: doubles from initialMs up to maxMs (with jitter). */
  backoff?: { initialMs?: number; maxMs?: number };
  /**
   * Called with each photo's full result before its ledger line is written (awaited): store it in the
   * app's database here, and a crash between the two only repeats this photo, never loses it.
   */
  onResult?: (path: string, result: TagResult) => void | Promise<void>;
  /** Stops the import (the generator throws the signal's reason); what was answered is in the ledger. */
  signal?: AbortSignal;
}

/** One line of the ledger: a photo and its answer. */
export type LedgerEntry = {
  /** Absolute path of the photo. */
  path: string;
  /** Size in bytes and modification time (ms since the epoch, fs.Stats.mtimeMs) when it was read. */
  size: number;
  mtimeMs: number;
  /** When the answer arrived (ISO 8601). */
  at: string;
} & ({ ok: true; result: ResultSummary } | { ok: false; error: ErrorSummary });

/** Counts of an import so far. */
export interface ImportProgress {
  /** Photos found in the folder. */
  total: number;
  /** In the ledger: answered, now or by an earlier run (tagged + rejected + resumed). */
  done: number;
  /** Answered with a result in this run. */
  tagged: number;
  /** Answered with an error that is the photo's (corrupt, too large, ...) in this run: in the ledger. */
  rejected: number;
  /** Answered by an earlier run (in the ledger already). */
  resumed: number;
  /** Not answered in this run (unreadable, or still failing after its attempts); the next run tries again. */
  deferred: number;
}

/**
 * What importFolder yields, in order: one `scanned`, then per photo `tagged`, `rejected` or `deferred` (and
 * `retrying` before another try), `reconnecting` when the stream is reopened, and `finished` last. Every
 * event is plain data (structured-clone and JSON safe): send it as is over Electron IPC.
 */
export type ImportEvent =
  | { type: "scanned"; folder: string; progress: ImportProgress }
  | { type: "tagged"; path: string; result: ResultSummary; progress: ImportProgress }
  | { type: "rejected"; path: string; error: ErrorSummary; progress: ImportProgress }
  | { type: "retrying"; path: string; attempt: number; delayMs: number; error: ErrorSummary; progress: ImportProgress }
  | { type: "deferred"; path: string; error: ErrorSummary; progress: ImportProgress }
  | { type: "reconnecting"; restart: number; delayMs: number; error: ErrorSummary; progress: ImportProgress }
  | { type: "finished"; progress: ImportProgress };

interface Photo {
  path: string;
  size: number;
  mtimeMs: number;
  attempts: number;
}

/**
 * Tags every photo under `folder` (recursively; files with `extensions`), resuming from `options.ledger`.
 * An async iterator of ImportEvent; it returns the final ImportProgress. Leaving the loop early (break,
 * or `signal`) stops the import: the photos answered so far are in the ledger, the next run goes on.
 * Throws ArchivetagError when the orchestrator refuses the stream itself (e.g. UNAUTHENTICATED) or stays
 * unreachable beyond `restarts`. One import per ledger at a time.
 */
export async function* importFolder(
  client: TaggingClient,
  folder: string,
  options: ImportOptions = {},
): AsyncGenerator<ImportEvent, ImportProgress> {
  const root = resolve(folder);
  const extensions = new Set((options.extensions ?? PHOTO_EXTENSIONS).map((e) => e.toLowerCase()));
  const maxAttempts = Math.max(1, options.attempts ?? 5);
  const maxRestarts = Math.max(0, options.restarts ?? 10);
  const initialMs = options.backoff?.initialMs ?? 1_000;
  const maxMs = options.backoff?.maxMs ?? 30_000;
  const backoff = (attempt: number) => Math.min(maxMs, initialMs * 2 ** (attempt - 1)) * (0.8 + 0.4 * Math.random());
  const { ledger: ledgerPath, window, attempts: _a, restarts: _r, backoff: _b, onResult, signal, extensions: _e, ...tag } =
    options;

  const progress: ImportProgress = { total: 0, done: 0, tagged: 0, rejected: 0, resumed: 0, deferred: 0 };
  const snapshot = (): ImportProgress => ({ ...progress });
  const photos = await findPhotos(root, extensions);
  const answered = ledgerPath ? await readLedger(ledgerPath) : new Map<string, LedgerEntry>();
  progress.total = photos.length;
  const queue: Photo[] = [];
  const tooLarge: Photo[] = [];
  for (const photo of photos) {
    const entry = answered.get(photo.path);
    if (entry && entry.size === photo.size && entry.mtimeMs === photo.mtimeMs) progress.resumed++;
    else if (photo.size > client.maxImageBytes) tooLarge.push(photo);
    else queue.push(photo);
  }
  progress.done = progress.resumed;
  // Photos to try again (retryable answers), each when its backoff has passed.
  const later: { photo: Photo; at: number }[] = [];
  const inFlight = new Map<string, Photo>();
  // Events found while reading the items (an unreadable file), yielded with the next answer.
  const pending: ImportEvent[] = [];
  let nextId = 0;
  let stopped = false;
  // Each stream has its own items(); one of a failed stream ends (its photo goes back to the queue).
  let generation = 0;
  const waiters = new Set<() => void>();
  const wake = () => [...waiters].forEach((w) => w());
  const woken = (ms?: number) =>
    new Promise<void>((resolveWake) => {
      const done = () => {
        clearTimeout(timer);
        waiters.delete(done);
        resolveWake();
      };
      const timer = ms === undefined ? undefined : setTimeout(done, ms);
      waiters.add(done);
    });

  // The stream's input: the queue, then the retries as they come due; it ends when nothing is left
  // unanswered (an answer in flight may still come back to be retried).
  async function* items(stream: number): AsyncGenerator<TagItem> {
    while (!stopped && stream === generation) {
      const now = Date.now();
      const due = later.findIndex((l) => l.at <= now);
      const photo = due >= 0 ? later.splice(due, 1)[0]!.photo : queue.shift();
      if (!photo) {
        if (later.length === 0 && inFlight.size === 0) return;
        const next = later.length ? Math.max(0, Math.min(...later.map((l) => l.at)) - now) : undefined;
        await woken(next);
        continue;
      }
      let data: Uint8Array;
      try {
        data = await readFile(photo.path);
      } catch (cause) {
        progress.deferred++;
        const error = new ArchivetagError(Code.Unavailable, `cannot read ${photo.path}: ${String((cause as Error).message ?? cause)}`,
          ErrorReason.UNSPECIFIED, {}, "", { cause });
        pending.push({ type: "deferred", path: photo.path, error: error.toJSON(), progress: snapshot() });
        continue;
      }
      if (stopped || stream !== generation) {
        queue.unshift(photo);
        return;
      }
      const id = String(nextId++);
      inFlight.set(id, photo);
      yield { ...tag, id, image: data };
    }
  }

  const ledger = ledgerPath ? new Ledger(ledgerPath) : undefined;
  try {
    yield { type: "scanned", folder: root, progress: snapshot() };

    // Over the limit: refused from the file's size, never read (the client would refuse the bytes alike).
    for (const photo of tooLarge) {
      const error = tooLargeError(photo.size, client.maxImageBytes).toJSON();
      ledger?.append({ path: photo.path, size: photo.size, mtimeMs: photo.mtimeMs, at: new Date().toISOString(), ok: false, error });
      progress.rejected++;
      progress.done++;
      yield { type: "rejected", path: photo.path, error, progress: snapshot() };
    }

    for (let restart = 0; ; ) {
      signal?.throwIfAborted();
      try {
        for await (const answer of client.tagMany(items(generation), { window: window ?? 8, signal })) {
          yield* pending.splice(0);
          const photo = inFlight.get(answer.id);
          if (!photo) continue;
          inFlight.delete(answer.id);
          restart = 0;
          const base = { path: photo.path, size: photo.size, mtimeMs: photo.mtimeMs };
          if (answer.ok) {
            await onResult?.(photo.path, answer.result);
            const result = summarizeResult(answer.result);
            ledger?.append({ ...base, at: new Date().toISOString(), ok: true, result });
            progress.tagged++;
            progress.done++;
            wake();
            yield { type: "tagged", path: photo.path, result, progress: snapshot() };
            continue;
          }
          const error = answer.error.toJSON();
          if (!answer.error.retryable) {
            ledger?.append({ ...base, at: new Date().toISOString(), ok: false, error });
            progress.rejected++;
            progress.done++;
            wake();
            yield { type: "rejected", path: photo.path, error, progress: snapshot() };
          } else if (++photo.attempts < maxAttempts) {
            const delayMs = Math.round(backoff(photo.attempts));
            later.push({ photo, at: Date.now() + delayMs });
            wake();
            yield { type: "retrying", path: photo.path, attempt: photo.attempts, delayMs, error, progress: snapshot() };
          } else {
            progress.deferred++;
            wake();
            yield { type: "deferred", path: photo.path, error, progress: snapshot() };
          }
        }
        yield* pending.splice(0);
        break; // every photo answered or deferred
      } catch (cause) {
        yield* pending.splice(0);
        signal?.throwIfAborted();
        const error = cause instanceof ArchivetagError ? cause : undefined;
        if (!error || !error.retryable || ++restart > maxRestarts) throw cause;
        // What was in flight goes first in the reopened stream.
        generation++;
        wake();
        queue.unshift(...inFlight.values());
        inFlight.clear();
        const delayMs = Math.round(backoff(restart));
        yield { type: "reconnecting", restart, delayMs, error: error.toJSON(), progress: snapshot() };
        await sleep(delayMs, signal);
      }
    }
    yield { type: "finished", progress: snapshot() };
    return snapshot();
  } finally {
    // Stopped early (break, signal, error): a waiting items() ends.
    stopped = true;
    wake();
    ledger?.close();
  }
}

/** The ledger's entries by path (the last line of a path wins; a torn last line is skipped). */
export async function readLedger(path: string): Promise<Map<string, LedgerEntry>> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return new Map();
    throw error;
  }
  const entries = new Map<string, LedgerEntry>();
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    try {
      const entry = JSON.parse(line) as LedgerEntry;
      if (typeof entry.path === "string" && typeof entry.size === "number" && typeof entry.mtimeMs === "number") {
        entries.set(entry.path, entry);
      }
    } catch {
      // a line cut short by a crash (power loss): that photo is sent again
    }
  }
  return entries;
}

/** Every file under root with one of the extensions, sorted by path, with its size and mtime. */
async function findPhotos(root: string, extensions: Set<string>): Promise<Photo[]> {
  const found: Photo[] = [];
  const walk = async (dir: string) => {
    const entries = await readdir(dir, { withFileTypes: true });
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const entry of entries) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) {
        await walk(path);
      } else if ((entry.isFile() || entry.isSymbolicLink()) && extensions.has(extname(entry.name).toLowerCase())) {
        try {
          const info = await stat(path); // a link: its target (a link to a folder is not followed)
          if (info.isFile()) found.push({ path, size: info.size, mtimeMs: info.mtimeMs, attempts: 0 });
        } catch {
          // a dangling link, or a file gone since the listing
        }
      }
    }
  };
  if (!(await stat(root)).isDirectory()) throw new Error(`importFolder: ${root} is not a folder`);
  await walk(root);
  return found;
}

function tooLargeError(size: number, limit: number): ArchivetagError {
  const mib = (n: number) => (n / 1024 / 1024).toFixed(1);
  return new ArchivetagError(
    Code.InvalidArgument,
    `image is ${size} bytes (${mib(size)} MiB); the limit is ${limit} bytes (${mib(limit)} MiB: the client's ` +
      "maxImageBytes, as the server's ARCHIVETAG_MAX_IMAGE_BYTES)",
    ErrorReason.IMAGE_TOO_LARGE,
    { size_bytes: String(size), limit_bytes: String(limit), setting: "ARCHIVETAG_MAX_IMAGE_BYTES" },
    "image.data",
  );
}

/** The ledger file, appended a whole line per write (what a killed process wrote stays). */
class Ledger {
  private fd: number | undefined;
  constructor(path: string) {
    mkdirSync(dirname(path), { recursive: true });
    this.fd = openSync(path, "a+");
    const size = fstatSync(this.fd).size;
    if (size > 0) {
      // A line cut short by a crash: start the next one on a line of its own.
      const last = Buffer.alloc(1);
      readSync(this.fd, last, 0, 1, size - 1);
      if (last[0] !== 0x0a) this.write("\n");
    }
  }
  append(entry: LedgerEntry): void {
    this.write(JSON.stringify(entry) + "\n");
  }
  private write(text: string): void {
    const data = Buffer.from(text, "utf8");
    for (let written = 0; written < data.length; ) written += writeSync(this.fd!, data, written);
  }
  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}
