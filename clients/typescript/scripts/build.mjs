// npm run build: bundle the protos, then the two builds of the same sources, each with its
// declarations: dist/esm (ES modules, `import`) and dist/cjs (CommonJS, `require()`), which
// package.json's "exports" picks between. dist/cjs/package.json marks its files CommonJS (the
// package itself is "type": "module").
import { execFileSync } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const PACKAGE = join(dirname(fileURLToPath(import.meta.url)), "..");
const TSC = join(PACKAGE, "node_modules", "typescript", "bin", "tsc");
const run = (...args) => execFileSync(process.execPath, args, { cwd: PACKAGE, stdio: "inherit" });

run(join(PACKAGE, "scripts", "generate.mjs"), "--bundle");
rmSync(join(PACKAGE, "dist"), { recursive: true, force: true });
run(TSC, "-p", "tsconfig.json");
run(TSC, "-p", "tsconfig.cjs.json");
mkdirSync(join(PACKAGE, "dist", "cjs"), { recursive: true });
writeFileSync(join(PACKAGE, "dist", "cjs", "package.json"), JSON.stringify({ type: "commonjs" }, null, 2) + "\n");
