// @archivetag/client against the real stack (smoke models): every case asserts the typed
// reason or enum the contract promises, never a message text.
import assert from "node:assert/strict";
import { copyFileSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { after, before, describe, test } from "node:test";
import {
  ArchivetagError,
  BackendHealth,
  Code,
  ErrorReason,
  FallbackReason,
  OcrMode,
  OcrStatus,
  importFolder,
  readLedger,
  siglipScore,
  TaggingClient,
  type ImportEvent,
  type LedgerEntry,
  type TagItem,
} from "../src/index.js";
import { APP, appProject, child, packTarball } from "./apps.js";
import { MAX_IMAGE_BYTES, SAMPLES, Stack, TOKEN, waitFor } from "./stack.js";

const stack = new Stack();
let client: TaggingClient;
const samples = readdirSync(SAMPLES)
  .filter((name) => !name.endsWith(".md"))
  .map((name) => ({ name, data: readFileSync(join(SAMPLES, name)) }));
// A JPEG signature followed by garbage: an accepted format whose header is corrupt.
const CORRUPT_JPEG = Buffer.concat([Buffer.from([0xff, 0xd8, 0xff, 0xe0]), Buffer.alloc(64, 7)]);

async function rejection(promise: Promise<unknown>): Promise<ArchivetagError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof ArchivetagError, `not an ArchivetagError: ${String(error)}`);
    return error;
  }
  assert.fail("the call succeeded");
}

before(async () => {
  await stack.start();
  client = new TaggingClient({ target: stack.target, token: TOKEN });
});

after(async () => {
  await stack.stop();
});

describe("tag", () => {
  test("tags every sample photo with typed, non-null parts", async () => {
    for (const sample of samples) {
      const result = await client.tag(sample.data, { maxTags: 5 });
      assert.equal(result.tagger, "florence", sample.name);
      assert.equal(result.fallback, FallbackReason.UNSPECIFIED, sample.name);
      assert.equal(result.primaryHealth, BackendHealth.SERVING, sample.name);
      assert.ok(result.tags.length > 0, sample.name);
      assert.ok(result.tags.length <= 5, sample.name);
      assert.ok(result.viewType.scores.length > 0, sample.name);
      assert.ok(result.timings.totalSeconds > 0, sample.name);
      assert.ok(result.models.some((m) => m.family === "florence"), sample.name);
    }
  });

  test("a corrupt image is INVALID_ARGUMENT with reason IMAGE_CORRUPT", async () => {
    const error = await rejection(client.tag(CORRUPT_JPEG));
    assert.equal(error.code, Code.InvalidArgument);
    assert.equal(error.reason, ErrorReason.IMAGE_CORRUPT);
    assert.equal(error.retryable, false);
  });

  test("an image over the server's limit is IMAGE_TOO_LARGE naming the limit, not a transport error", async () => {
    // A client whose own limit is higher sends it: the server refuses it with the same reason.
    const lenient = new TaggingClient({ target: stack.target, token: TOKEN, maxImageBytes: 2 * MAX_IMAGE_BYTES });
    const error = await rejection(lenient.tag(new Uint8Array(MAX_IMAGE_BYTES + 1)));
    assert.equal(error.code, Code.InvalidArgument);
    assert.equal(error.reason, ErrorReason.IMAGE_TOO_LARGE);
    assert.equal(error.metadata.limit_bytes, String(MAX_IMAGE_BYTES));
    assert.equal(error.metadata.setting, "ARCHIVETAG_MAX_IMAGE_BYTES");
    assert.equal(error.field, "image.data");
  });

  test("a threshold outside [0, 1] names the field", async () => {
    const error = await rejection(client.tag(samples[0]!.data, { threshold: 1.5 }));
    assert.equal(error.reason, ErrorReason.FIELD_INVALID);
    assert.equal(error.field, "threshold");
  });

  test("ocr reads the text into its own field (random weights: the field, not the words)", async () => {
    const plain = await client.tag(samples[0]!.data);
    assert.equal(plain.ocr, undefined);
    const read = await client.tag(samples[0]!.data, { ocr: OcrMode.TEXT_WITH_REGIONS });
    assert.equal(read.tagger, "florence");
    assert.equal(read.ocr?.status, OcrStatus.READ);
    assert.equal(read.ocr?.text, read.ocr?.regions.map((r) => r.text).join("\n"));
  });

  test("an ocr value outside OcrMode names the field", async () => {
    const error = await rejection(client.tag(samples[0]!.data, { ocr: 7 as OcrMode }));
    assert.equal(error.reason, ErrorReason.FIELD_INVALID);
    assert.equal(error.field, "ocr");
  });

  test("a 50 ms deadline is DEADLINE_EXCEEDED (DEADLINE_PASSED), not UNAVAILABLE", async () => {
    // bypassCache: a photo tagged before is a cache hit, answered well within 50 ms.
    const error = await rejection(client.tag(samples[0]!.data, { deadlineMs: 50, bypassCache: true }));
    assert.equal(error.code, Code.DeadlineExceeded);
    assert.equal(error.reason, ErrorReason.DEADLINE_PASSED);
    assert.equal(error.retryable, false);
  });
});

describe("search by words and labels (SigLIP's text tower)", () => {
  test("embedText gives normalised vectors an app ranks its own stored image embeddings with", async () => {
    const stored = [];
    for (const sample of samples) stored.push((await client.tag(sample.data, { includeEmbedding: true })).embedding);
    const found = await client.embedText(["a staircase with graffiti", "A Staircase, with GRAFFITI!"]);
    assert.equal(found.embeddings.length, 2);
    assert.equal(found.model.family, "siglip");
    const query = found.embeddings[0]!;
    assert.ok(Math.abs(Math.hypot(...query) - 1) < 1e-4);
    // SigLIP's tokenizer lower-cases and drops punctuation: the same text to the model.
    const same = query.reduce((sum, v, i) => sum + v * found.embeddings[1]![i]!, 0);
    assert.ok(same > 0.99999, String(same));
    const scores = stored.map((image) => siglipScore(image.reduce((sum, v, i) => sum + v * query[i]!, 0),
      found.logitScale, found.logitBias));
    for (const score of scores) assert.ok(score >= 0 && score <= 1);
  });

  test("an empty or over-long text is INVALID_ARGUMENT naming the text", async () => {
    const empty = await rejection(client.embedText(["church", ""]));
    assert.equal(empty.code, Code.InvalidArgument);
    assert.equal(empty.reason, ErrorReason.FIELD_INVALID);
    assert.equal(empty.field, "texts[1]");
    const long = await rejection(client.embedText(["x".repeat(5000)]));
    assert.equal(long.reason, ErrorReason.FIELD_INVALID);
    assert.equal(long.field, "texts[0]");
  });

  test("a label set comes back with each label's probability, most probable first", async () => {
    const result = await client.tag(samples[0]!.data, {
      labels: { labels: [{ name: "hospital", prompts: ["a photo of a hospital ward."] }, { name: "church" }] },
      bypassCache: true,
    });
    assert.deepEqual(new Set(result.labels.map((l) => l.name)), new Set(["hospital", "church"]));
    assert.ok(result.labels[0]!.probability >= result.labels[1]!.probability);
    const bad = await rejection(client.tag(samples[0]!.data, { labels: { labels: [{ name: "" }] } }));
    assert.equal(bad.reason, ErrorReason.FIELD_INVALID);
    assert.equal(bad.field, "labels.labels[0].name");
  });
});

describe("auth", () => {
  test("no token is UNAUTHENTICATED with TOKEN_MISSING", async () => {
    const anonymous = new TaggingClient({ target: stack.target });
    const error = await rejection(anonymous.tag(samples[0]!.data));
    assert.equal(error.code, Code.Unauthenticated);
    assert.equal(error.reason, ErrorReason.TOKEN_MISSING);
  });

  test("a wrong token is UNAUTHENTICATED with TOKEN_INVALID, for calls and streams", async () => {
    const wrong = new TaggingClient({ target: stack.target, token: "not-the-right-token-at-all" });
    const error = await rejection(wrong.status());
    assert.equal(error.reason, ErrorReason.TOKEN_INVALID);
    const streamed = await rejection((async () => {
      for await (const answer of wrong.tagMany([{ image: samples[0]!.data }])) void answer;
    })());
    assert.equal(streamed.reason, ErrorReason.TOKEN_INVALID);
  });

  test("health needs no token", async () => {
    assert.equal(await new TaggingClient({ target: stack.target }).health(), "SERVING");
  });
});

describe("tagMany", () => {
  test("answers every item once under its id; the corrupt one has its own typed error", async () => {
    const items: TagItem[] = samples.map((s) => ({ id: s.name, image: s.data, maxTags: 3 }));
    items.splice(2, 0, { id: "corrupt", image: CORRUPT_JPEG });
    async function* slowly() {
      for (const item of items) yield item;
    }
    const answers = new Map<string, boolean>();
    for await (const answer of client.tagMany(slowly(), { window: 2 })) {
      assert.ok(!answers.has(answer.id), `answered twice: ${answer.id}`);
      answers.set(answer.id, answer.ok);
      if (answer.ok) {
        assert.ok(answer.result.tags.length <= 3, answer.id);
      } else {
        assert.equal(answer.id, "corrupt");
        assert.equal(answer.error.code, Code.InvalidArgument);
        assert.equal(answer.error.reason, ErrorReason.IMAGE_CORRUPT);
      }
    }
    assert.deepEqual([...answers.keys()].sort(), items.map((i) => i.id!).sort());
    assert.equal(answers.get("corrupt"), false);
    assert.equal([...answers.values()].filter(Boolean).length, samples.length);
  });

  test("numbers items that have no id", async () => {
    const ids: string[] = [];
    for await (const answer of client.tagMany([{ image: samples[0]!.data }, { image: samples[1]!.data }])) ids.push(answer.id);
    assert.deepEqual(ids.sort(), ["0", "1"]);
  });
});

describe("result cache", () => {
  test("a repeated photo is answered from the orchestrator's cache, unless the call opts out", async () => {
    const first = await client.tag(samples[1]!.data, { maxTags: 3 });
    const again = await client.tag(samples[1]!.data, { maxTags: 3 });
    const bypassed = await client.tag(samples[1]!.data, { maxTags: 3, bypassCache: true });
    assert.equal(again.cached, true);
    assert.deepEqual(again.tags, first.tags);
    assert.ok(first.taggedAt instanceof Date);
    assert.equal(again.taggedAt.getTime(), first.taggedAt.getTime());
    assert.equal(bypassed.cached, false);
    const status = await client.status();
    assert.equal(status.cache.backend, "sqlite");
    assert.ok(status.cache.hits >= 1 && status.cache.entries >= 1, JSON.stringify(status.cache));
    assert.equal(typeof status.backends[0]!.okCount, "number");
  });
});

describe("the package an app installs", () => {
  test("the npm pack tarball installs into a CommonJS and an ES module project (strict tsc); each calls health()", async (t) => {
    const tarball = await packTarball();
    const [cjs, esm] = await Promise.all([appProject("commonjs", tarball), appProject("module", tarball)]);
    // The pack folder and both app projects (about 16 MB) go when the test ends.
    t.after(() => {
      for (const dir of [dirname(tarball), dirname(dirname(cjs)), dirname(dirname(esm))]) {
        rmSync(dir, { recursive: true, force: true });
      }
    });
    // require() of the CommonJS build, without Node's require(esm) (Electron 33/34: Node 20.18 has none).
    const required = await child(["--no-experimental-require-module", cjs, stack.target], 60_000).finished;
    assert.equal(required.code, 0, required.stderr);
    assert.deepEqual(JSON.parse(required.stdout), { health: "SERVING", format: "commonjs" });
    const imported = await child([esm, stack.target], 60_000).finished;
    assert.equal(imported.code, 0, imported.stderr);
    assert.deepEqual(JSON.parse(imported.stdout), { health: "SERVING", format: "module" });
  });

  test("after break out of tagMany (or importFolder) and close(), the process ends by itself", async () => {
    const folder = join(stack.dir, "leave");
    mkdirSync(folder, { recursive: true });
    for (let i = 0; i < 6; i++) copyFileSync(join(SAMPLES, samples[0]!.name), join(folder, `copy-${i}-${samples[0]!.name}`));
    const runs = await Promise.all([
      child([join(APP, "leave.mjs"), "tagMany", stack.target, TOKEN, join(SAMPLES, samples[0]!.name)], 60_000).finished,
      child([join(APP, "leave.mjs"), "importFolder", stack.target, TOKEN, folder], 60_000).finished,
    ]);
    for (const run of runs) {
      assert.equal(run.timedOut, false, `still running 60 s after it left the loop:\n${run.stdout}${run.stderr}`);
      assert.equal(run.code, 0, run.stderr);
      assert.equal(run.stdout.trim(), "left the loop");
    }
  });

  test("a closed client's calls fail CANCELLED at once, not retried", async () => {
    const closing = new TaggingClient({ target: stack.target, token: TOKEN });
    assert.equal(await closing.health(), "SERVING");
    await closing.close();
    const error = await rejection(closing.status());
    assert.equal(error.code, Code.Canceled);
    assert.equal(error.retryable, false);
  });
});

describe("importFolder", () => {
  test("walks the folder, refuses what is too large or corrupt, and answers each photo once into the ledger", async () => {
    const folder = join(stack.dir, "import-small");
    mkdirSync(join(folder, "nested", "deeper"), { recursive: true });
    copyFileSync(join(SAMPLES, samples[0]!.name), join(folder, samples[0]!.name));
    copyFileSync(join(SAMPLES, samples[1]!.name), join(folder, "nested", "deeper", samples[1]!.name.toUpperCase()));
    writeFileSync(join(folder, "nested", "corrupt.jpg"), CORRUPT_JPEG);
    writeFileSync(join(folder, "notes.txt"), "not a photo");
    writeFileSync(join(folder, "huge.tif"), new Uint8Array(1024 * 1024 + 1));
    const small = new TaggingClient({ target: stack.target, token: TOKEN, maxImageBytes: 1024 * 1024 });
    const ledger = join(stack.dir, "ledgers", "small.jsonl");
    const events: ImportEvent[] = [];
    for await (const event of importFolder(small, folder, { ledger, maxTags: 3 })) events.push(event);
    assert.equal(events[0]!.type, "scanned");
    assert.equal(events[0]!.progress.total, 4);
    const last = events.at(-1)!;
    assert.equal(last.type, "finished");
    assert.deepEqual(last.progress, { total: 4, done: 4, tagged: 2, rejected: 2, resumed: 0, deferred: 0 });
    const entries = await readLedger(ledger);
    assert.equal(entries.size, 4);
    const reasons = [...entries.values()].map((e) => (e.ok ? "ok" : e.error.reason)).sort();
    assert.deepEqual(reasons, ["IMAGE_CORRUPT", "IMAGE_TOO_LARGE", "ok", "ok"]);
    // Run again: everything is in the ledger, nothing is sent.
    const again: ImportEvent[] = [];
    for await (const event of importFolder(small, folder, { ledger })) again.push(event);
    assert.deepEqual(again.map((e) => e.type), ["scanned", "finished"]);
    assert.equal(again[0]!.progress.resumed, 4);
    await small.close();
  });

  test("kill -9 midway, then run again: every photo in the ledger exactly once, none sent twice", async () => {
    const folder = join(stack.dir, "import-resume");
    const photos: string[] = [];
    for (let i = 0; i < 20; i++) {
      const sample = samples[i % samples.length]!;
      const sub = join(folder, `roll-${i % 3}`);
      mkdirSync(sub, { recursive: true });
      photos.push(join(sub, `${String(i).padStart(2, "0")}-${sample.name}`));
      copyFileSync(join(SAMPLES, sample.name), photos.at(-1)!);
    }
    const ledger = join(stack.dir, "ledgers", "resume.jsonl");
    const lines = () => {
      try {
        return readFileSync(ledger, "utf8").split("\n").filter((l) => l.trim()).length;
      } catch {
        return 0;
      }
    };
    const first = child([join(APP, "import.mjs"), stack.target, TOKEN, folder, ledger], 600_000);
    await waitFor(async () => (lines() >= 3 || first.process.exitCode !== null ? true : undefined), "3 answers in the ledger",
      300_000);
    first.process.kill("SIGKILL");
    const killed = await first.finished;
    assert.equal(killed.signal, "SIGKILL", `it ended before the kill:\n${killed.stdout}${killed.stderr}`);
    const before = lines();
    assert.ok(before >= 3 && before < 20, `${before} answers in the ledger when killed`);

    const second = await child([join(APP, "import.mjs"), stack.target, TOKEN, folder, ledger], 600_000).finished;
    assert.equal(second.code, 0, second.stderr);
    const events = second.stdout.trim().split("\n").map((l) => JSON.parse(l) as ImportEvent);
    assert.equal(events[0]!.type, "scanned");
    assert.equal(events[0]!.progress.resumed, before);
    const tagged = events.filter((e) => e.type === "tagged").map((e) => (e as { path: string }).path);
    assert.equal(tagged.length, 20 - before);
    assert.deepEqual(events.at(-1)!.progress, { total: 20, done: 20, tagged: 20 - before, rejected: 0, resumed: before,
      deferred: 0 });

    const paths = readFileSync(ledger, "utf8").split("\n").filter((l) => l.trim())
      .map((l) => (JSON.parse(l) as LedgerEntry).path);
    assert.equal(paths.length, 20, "a line per photo");
    assert.deepEqual([...new Set(paths)].sort(), [...photos].sort());
    const entries = [...(await readLedger(ledger)).values()];
    assert.ok(entries.every((e) => e.ok && e.result.tags.length > 0 && !Number.isNaN(Date.parse(e.at))));
  });
});

describe("fallback", () => {
  test("with Florence stopped, RAM++ answers and says why (typed); status shows the error, resolved after", async () => {
    // bypassCache: this is about the models answering, not about a cached answer of an earlier call.
    const florenceAnswers = async () =>
      (await client.tag(samples[0]!.data, { bypassCache: true })).tagger === "florence" ? true : undefined;
    // Earlier slow answers on a busy machine may have opened the breaker: start from Florence answering.
    await waitFor(florenceAnswers, "Florence answers", 300_000);
    const florence = stack.pid("florence");
    process.kill(florence, "SIGSTOP");
    try {
      // 8 s: Florence gets 3 s (5 s are kept for the fallback), then RAM++ answers.
      const result = await client.tag(samples[0]!.data, { deadlineMs: 8_000, ocr: OcrMode.TEXT, bypassCache: true });
      assert.equal(result.tagger, "rampp");
      assert.equal(result.fallback, FallbackReason.DEADLINE_EXCEEDED);
      assert.equal(result.ocr?.status, OcrStatus.NOT_AVAILABLE);
      assert.ok(result.degraded);
      // The cut call was the caller's deadline, not Florence's fault: the health check that finds the
      // stopped replica is what records the error.
      const backend = await waitFor(async () => {
        const found = (await client.status()).backends.find((b) => b.name === "florence");
        return found && found.lastError ? found : undefined;
      }, "Florence's last error in status", 120_000);
      assert.ok(backend.lastErrorTime instanceof Date);
      assert.equal(backend.lastErrorResolved, false);
    } finally {
      process.kill(florence, "SIGCONT");
    }
    await waitFor(florenceAnswers, "Florence answers again", 300_000);
    const backend = (await client.status()).backends.find((b) => b.name === "florence")!;
    assert.equal(backend.lastErrorResolved, true);
  });
});

describe("deadlines", () => {
  test("under the fallback's reserve (5 s) Florence-2 is skipped: RAM++ answers with NO_TIME_LEFT", async () => {
    // After the fallback test RAM++ is reachable; just after `up` the orchestrator may not have reached it yet.
    const result = await waitFor(async () => {
      const answer = await client.tag(samples[0]!.data, { deadlineMs: 4_000, bypassCache: true });
      return answer.tagger === "rampp" ? answer : undefined;
    }, "RAM++ answers a 4 s deadline", 180_000);
    assert.equal(result.fallback, FallbackReason.NO_TIME_LEFT);
    assert.ok(result.tags.length > 0);
  });
});

describe("large photos and lost connections", () => {
  test("a 40 MiB photo is refused before it is sent, and the next call on the client works", async () => {
    const error = await rejection(client.tag(new Uint8Array(40 * 1024 * 1024)));
    assert.equal(error.code, Code.InvalidArgument);
    assert.equal(error.reason, ErrorReason.IMAGE_TOO_LARGE);
    assert.equal(error.metadata.limit_bytes, String(MAX_IMAGE_BYTES));
    assert.equal(error.field, "image.data");
    assert.ok((await client.tag(samples[0]!.data, { bypassCache: true })).tags.length > 0);
  });

  test("a stream with an empty file before a 30 MB TIFF and a 40 MiB photo answers every item", async () => {
    const tiff = join(stack.dir, "scan.tif");
    // An uncompressed 3,200 x 3,200 RGB scan: 30.7 MB, under the 32 MiB limit.
    stack.python(
      "import sys, numpy as np; from PIL import Image; " +
        "Image.fromarray(np.random.default_rng(1).integers(0, 255, (3200, 3200, 3), dtype=np.uint8))" +
        ".save(sys.argv[1], compression=None)",
      tiff,
    );
    const scan = readFileSync(tiff);
    assert.ok(scan.byteLength > 30_000_000 && scan.byteLength < MAX_IMAGE_BYTES);
    const items: TagItem[] = [
      { id: "empty", image: new Uint8Array(0) },
      { id: "scan", image: scan, bypassCache: true },
      { id: "huge", image: new Uint8Array(40 * 1024 * 1024) },
      { id: "photo", image: samples[0]!.data, bypassCache: true },
    ];
    const answers = new Map<string, TagItemResultLike>();
    for await (const answer of client.tagMany(items, { window: 4 })) {
      assert.ok(!answers.has(answer.id), `answered twice: ${answer.id}`);
      answers.set(answer.id, answer.ok ? { ok: true } : { ok: false, reason: answer.error.reason });
    }
    assert.deepEqual(Object.fromEntries(answers), {
      empty: { ok: false, reason: ErrorReason.IMAGE_EMPTY },
      scan: { ok: true },
      huge: { ok: false, reason: ErrorReason.IMAGE_TOO_LARGE },
      photo: { ok: true },
    });
  });

  test("kill -9 of the orchestrator under 12 calls and a stream: after up restarts it, each is answered once", async () => {
    // Retries enough to outlast the restart (up waits 1 s, the orchestrator then finds its backends).
    const patient = new TaggingClient({
      target: stack.target, token: TOKEN, retry: { maxAttempts: 12, initialBackoffMs: 250, maxBackoffMs: 4_000 },
    });
    const streamed = new Map<string, number>();
    const stream = (async () => {
      const items = Array.from({ length: 24 }, (_, i) => ({ id: `item-${i}`, image: samples[i % samples.length]!.data,
        bypassCache: true }));
      for await (const answer of patient.tagMany(items, { window: 4 })) {
        assert.ok(answer.ok, `item ${answer.id}: ${answer.ok ? "" : answer.error.message}`);
        streamed.set(answer.id, (streamed.get(answer.id) ?? 0) + 1);
      }
    })();
    // Once the stream is under way (some of its items answered, the rest not), 12 calls, and the kill.
    await waitFor(async () => (streamed.size >= 2 ? true : undefined), "the stream under way", 300_000);
    const photos = Array.from({ length: 12 }, (_, i) => samples[i % samples.length]!.data);
    const calls = photos.map((photo) => patient.tag(photo, { bypassCache: true, deadlineMs: 300_000 }));
    const orchestrator = stack.pid("orchestrator");
    process.kill(orchestrator, "SIGKILL");
    const results = await Promise.all(calls);
    await stream;
    assert.equal(results.length, 12);
    assert.ok(results.every((r) => r.tags.length > 0));
    assert.equal(streamed.size, 24);
    assert.ok([...streamed.values()].every((count) => count === 1), JSON.stringify([...streamed]));
    assert.notEqual(stack.pid("orchestrator"), orchestrator); // up started a new one
  });
});

type TagItemResultLike = { ok: true } | { ok: false; reason: ErrorReason };
