// The one command for the generated code: bundle the protos, then generate TypeScript.
//
//   npm run generate            # refresh protos/ and src/gen/ (src/gen/ is committed)
//   npm run generate -- --check # exit 1 if src/gen/ differs from what this makes
//   node scripts/generate.mjs --bundle  # only protos/ (npm run build does this)
//
// protos/ bundles the contract (../../protos/archivetag/v1), the google.rpc error details
// every error carries (from google-proto-files) and grpc.health.v1 (from grpc-health-check),
// so users of the package need no other .proto files. The import root is protos/. It is a
// copy made for the package, not committed: the contract lives in ../../protos only.
import { execFileSync } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const PACKAGE = join(dirname(fileURLToPath(import.meta.url)), "..");
const REPO_PROTOS = join(PACKAGE, "..", "..", "protos");
const MODULES = join(PACKAGE, "node_modules");
const BUNDLE = [
  // [from, to (under protos/)]
  [join(REPO_PROTOS, "archivetag", "v1"), join("archivetag", "v1")],
  [join(MODULES, "google-proto-files", "google", "rpc", "status.proto"), join("google", "rpc", "status.proto")],
  [join(MODULES, "google-proto-files", "google", "rpc", "error_details.proto"), join("google", "rpc", "error_details.proto")],
  [join(MODULES, "grpc-health-check", "proto", "health", "v1", "health.proto"), join("grpc", "health", "v1", "health.proto")],
];
const GENERATED = [join("src", "gen")];

function bundle(root) {
  rmSync(join(root, "protos"), { recursive: true, force: true });
  for (const [from, to] of BUNDLE) {
    mkdirSync(dirname(join(root, "protos", to)), { recursive: true });
    cpSync(from, join(root, "protos", to), { recursive: true, filter: (p) => statSync(p).isDirectory() || p.endsWith(".proto") });
  }
}

function generate(root) {
  bundle(root);
  const bin = join(MODULES, ".bin");
  execFileSync(join(bin, "buf"), ["generate", join(root, "protos"), "--template", join(PACKAGE, "buf.gen.yaml"), "-o", root], {
    cwd: PACKAGE,
    stdio: "inherit",
    env: { ...process.env, PATH: `${bin}:${process.env.PATH}` },
  });
}

function files(dir) {
  const out = new Map();
  const walk = (d) => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else out.set(relative(dir, p), readFileSync(p, "utf8"));
    }
  };
  walk(dir);
  return out;
}

export function staleFiles() {
  const tmp = mkdtempSync(join(tmpdir(), "archivetag-gen-"));
  try {
    generate(tmp);
    const stale = [];
    for (const folder of GENERATED) {
      const fresh = files(join(tmp, folder));
      let committed;
      try {
        committed = files(join(PACKAGE, folder));
      } catch {
        committed = new Map();
      }
      for (const name of new Set([...fresh.keys(), ...committed.keys()])) {
        if (fresh.get(name) !== committed.get(name)) stale.push(join(folder, name));
      }
    }
    return stale.sort();
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  if (process.argv.includes("--bundle")) {
    bundle(PACKAGE);
  } else if (process.argv.includes("--check")) {
    const stale = staleFiles();
    if (stale.length) {
      console.log(`stale generated files: ${stale.join(", ")}; run: npm run generate`);
      process.exit(1);
    }
    console.log("generated code is up to date");
  } else {
    generate(PACKAGE);
    console.log("wrote protos/ and src/gen/");
  }
}
