// Contract hygiene: the bundled protos and generated code are fresh, buf lint passes, and
// the contract has no breaking change against main's last commit.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const PACKAGE = join(dirname(fileURLToPath(import.meta.url)), "..");
const BUF = join(PACKAGE, "node_modules", ".bin", "buf");

function run(command: string, args: string[]) {
  const result = spawnSync(command, args, { cwd: PACKAGE, encoding: "utf8" });
  return { code: result.status, output: `${result.stdout}${result.stderr}` };
}

test("generated code is fresh (npm run generate)", () => {
  const { code, output } = run(process.execPath, ["scripts/generate.mjs", "--check"]);
  assert.equal(code, 0, output);
});

test("buf lint passes on protos/", () => {
  const { code, output } = run(BUF, ["lint", "../../protos"]);
  assert.equal(code, 0, output);
});

test("buf breaking finds no breaking change against main", () => {
  const { code, output } = run(BUF, ["breaking", "../../protos", "--against", "../../.git#branch=main,subdir=protos"]);
  assert.equal(code, 0, output);
});
