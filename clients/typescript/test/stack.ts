// The real stack for the tests: `archivetag models smoke` + `archivetag up` from the
// repository's virtual environment (ARCHIVETAG_VENV, default ../../.venv), on free ports,
// with a tokens file. Nothing here is a stand-in: the smoke models are the real architectures.
// The servers (and so `up`'s --<name>-port flags) come from deploy/servers.json, the registry's
// table that deploy/generate.py writes: no model is named here.
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
export const SAMPLES = join(REPO, "src", "archivetag", "samples");
export const TOKEN = "typescript-client-test-token";
// The server's default image limit (ARCHIVETAG_MAX_IMAGE_BYTES), as archives run it: large scans are what
// break a transport, so the tests send photos of tens of MiB.
export const MAX_IMAGE_BYTES = 32 * 1024 * 1024;

const VENV = process.env.ARCHIVETAG_VENV ?? join(REPO, ".venv");
/** One row of deploy/servers.json (the fields used here). */
interface ServerRow {
  name: string;
  role: string;
  port: number;
}
export const SERVERS: ServerRow[] = JSON.parse(readFileSync(join(REPO, "deploy", "servers.json"), "utf8")).servers;
const ARCHIVETAG = join(VENV, "bin", "archivetag");

async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => resolvePort(typeof address === "object" && address ? address.port : 0));
    });
  });
}

export class Stack {
  readonly dir = mkdtempSync(join(tmpdir(), "archivetag-ts-"));
  readonly logDir = join(this.dir, "logs");
  target = "";
  private process: ChildProcess | undefined;
  private output = "";

  async start(timeoutMs = 900_000): Promise<void> {
    const models = join(this.dir, "models");
    execFileSync(ARCHIVETAG, ["models", "smoke", "--models", models], { stdio: "ignore" });
    const tokens = join(this.dir, "tokens.txt");
    writeFileSync(tokens, `typescript-test:${TOKEN}\n`);
    // A free port for every server of the registry: `up --<name>-port PORT`.
    const ports = new Map<string, number>();
    for (const server of SERVERS) ports.set(server.name, await freePort());
    this.target = `127.0.0.1:${ports.get("orchestrator")}`;
    const args = [
      "up", "--models", models, "--log-dir", this.logDir, "--api-tokens-file", tokens, "--no-metrics",
      ...[...ports].flatMap(([name, port]) => [`--${name}-port`, String(port)]),
    ];
    // Unbuffered, so that up's "services are SERVING" arrives when it is printed.
    const env = {
      ...process.env,
      PYTHONUNBUFFERED: "1",
      // The orchestrator's result cache in the test's folder, not the user's.
      ARCHIVETAG_CACHE_PATH: join(this.dir, "cache.sqlite"),
      // Random weights never emit an end token: short greedy captions keep Florence-2 quick on a CPU.
      ARCHIVETAG_FLORENCE_MAX_NEW_TOKENS: "8",
      ARCHIVETAG_FLORENCE_NUM_BEAMS: "1",
      ARCHIVETAG_FLORENCE_OCR_MAX_NEW_TOKENS: "8",
    };
    const child = spawn(ARCHIVETAG, args, { env, stdio: ["ignore", "pipe", "pipe"] });
    this.process = child;
    // up stops its services on SIGTERM: send it even when this test process is ended early.
    process.once("exit", () => child.kill("SIGTERM"));
    for (const signal of ["SIGINT", "SIGTERM"] as const) {
      process.once(signal, () => {
        child.kill("SIGTERM");
        process.exit(1);
      });
    }
    this.process.stdout!.on("data", (chunk) => (this.output += chunk));
    this.process.stderr!.on("data", (chunk) => (this.output += chunk));
    const started = Date.now();
    while (!this.output.includes("services are SERVING")) {
      if (this.process.exitCode !== null) throw new Error(`archivetag up exited ${this.process.exitCode}:\n${this.output}`);
      if (Date.now() - started > timeoutMs) throw new Error(`stack not SERVING after ${timeoutMs} ms:\n${this.output}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  /** A file made by the repository's Python (Pillow), e.g. a large TIFF: `python(code, path)`. */
  python(code: string, ...args: string[]): void {
    execFileSync(join(VENV, "bin", "python"), ["-c", code, ...args], { stdio: "inherit" });
  }

  /** The pid `up` wrote for one service. */
  pid(service: string): number {
    return Number(readFileSync(join(this.logDir, `${service}.pid`), "utf8").trim());
  }

  /** Stops the stack and removes its folder (models, logs, stores: about 40 MB a run), unless
   * ARCHIVETAG_KEEP_TEST_DIRS is set, to read the logs of a failed run. */
  async stop(): Promise<void> {
    const child = this.process;
    if (child && child.exitCode === null) {
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      await exited;
    }
    if (!process.env.ARCHIVETAG_KEEP_TEST_DIRS) rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Poll `probe` until it returns a value that is not undefined; fail with what it last saw. */
export async function waitFor<T>(probe: () => Promise<T | undefined>, what: string, timeoutMs = 120_000): Promise<T> {
  const started = Date.now();
  let last: unknown;
  while (Date.now() - started < timeoutMs) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
      last = "no match";
    } catch (error) {
      last = error;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`${what}: not seen after ${timeoutMs} ms; last: ${String(last)}`);
}
