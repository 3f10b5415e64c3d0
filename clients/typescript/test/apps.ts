// The package as apps get it: the npm pack tarball installed into a CommonJS and an ES module project
// (strict tsc), and child node processes of the package (test/app/) that must end by themselves or are
// killed midway. Used by client.test.ts, against its stack.
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

export const PACKAGE = join(dirname(fileURLToPath(import.meta.url)), "..");
export const APP = join(PACKAGE, "test", "app");
const TSC = join(PACKAGE, "node_modules", "typescript", "bin", "tsc");
const TYPES_NODE = "@types/node@20.19.43"; // as the package's devDependency
const exec = promisify(execFile);

/** `npm pack` of the package (built by `npm test` before the tests) into a new folder: the tarball's path. */
export async function packTarball(): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), "archivetag-pack-"));
  const { stdout } = await exec("npm", ["pack", "--ignore-scripts", "--json", "--pack-destination", dir], { cwd: PACKAGE });
  return join(dir, (JSON.parse(stdout) as { filename: string }[])[0]!.filename);
}

/**
 * A new app project of the given module format with the tarball installed by npm (offline from npm's cache
 * when it can; otherwise from the registry, cache first) and test/app/app.ts compiled by strict tsc:
 * the path of the compiled app.js.
 */
export async function appProject(format: "commonjs" | "module", tarball: string): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), `archivetag-app-${format}-`));
  writeFileSync(join(dir, "package.json"), JSON.stringify({ name: `app-${format}`, private: true, type: format }));
  const module = format === "commonjs" ? "node16" : "nodenext";
  writeFileSync(join(dir, "tsconfig.json"), JSON.stringify({
    compilerOptions: {
      target: "ES2022", module, moduleResolution: module, strict: true, outDir: "out", rootDir: "src", types: ["node"],
      // The package's declarations and its dependencies' are checked too (no skipLibCheck).
    },
    include: ["src"],
  }));
  mkdirSync(join(dir, "src"));
  copyFileSync(join(APP, "app.ts"), join(dir, "src", "app.ts"));
  const install = (mode: string) =>
    exec("npm", ["install", mode, "--no-audit", "--no-fund", "--no-save", tarball, TYPES_NODE], { cwd: dir });
  try {
    await install("--offline");
  } catch {
    await install("--prefer-offline");
  }
  try {
    await exec(process.execPath, [TSC, "-p", dir], { cwd: dir });
  } catch (error) {
    const { stdout, stderr } = error as { stdout: string; stderr: string };
    throw new Error(`tsc in the ${format} project failed:\n${stdout}${stderr}`);
  }
  return join(dir, "out", "app.js");
}

export interface Finished {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** The process did not end within the time given; it was killed. */
  timedOut: boolean;
}

/** A child node process; `finished` resolves when it exits, or kills it after timeoutMs. */
export function child(args: string[], timeoutMs: number): { process: ChildProcess; finished: Promise<Finished> } {
  const proc = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  proc.stdout!.on("data", (chunk) => (stdout += chunk));
  proc.stderr!.on("data", (chunk) => (stderr += chunk));
  const finished = new Promise<Finished>((resolve) => {
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      proc.kill("SIGKILL");
    }, timeoutMs);
    proc.once("exit", (code, signal) => {
      clearTimeout(timer);
      // The pipes may still hold output: read it to the end.
      let open = 2;
      const done = () => --open === 0 && resolve({ code, signal, stdout, stderr, timedOut });
      if (proc.stdout!.readableEnded) done(); else proc.stdout!.once("end", done);
      if (proc.stderr!.readableEnded) done(); else proc.stderr!.once("end", done);
    });
  });
  return { process: proc, finished };
}
