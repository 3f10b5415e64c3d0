// @archivetag/client against the real stack (smoke models): every case asserts the typed
// reason or enum the contract promises, never a message text.
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import {
  ArchivetagError,
  BackendHealth,
  Code,
  ErrorReason,
  FallbackReason,
  OcrMode,
  OcrStatus,
  TaggingClient,
  type TagItem,
} from "../src/index.js";
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
    assert.equal(again.taggedAt?.seconds, first.taggedAt?.seconds);
    assert.equal(bypassed.cached, false);
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
