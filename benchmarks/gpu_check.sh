#!/usr/bin/env bash
# The GPU check: install, the tests marked cuda, then benchmarks/gpu_check.py (full-size random models at
# fp16: SigLIP-B/16 from tensors and from JPEG bytes, RAM++, Florence-2 base and large greedy and 3 beams,
# the decode stage, the stack at 16 and 64 clients, each service's GPU memory), then the CPU-side runtime
# tests if time allows. Every stage prints its result when done and is appended to the JSON (--out) at
# once, so a run cut short still reports what it got. Under 10 minutes on one H100.
#
#   benchmarks/gpu_check.sh [--offline DIR] [--python PY] [--venv DIR] [--dry-run] [--install-only]
#                           [--wheelhouse DIR] [--workdir DIR] [--out FILE.json] [--seconds S]
#
# --offline DIR: an air-gapped box with its own CUDA torch (deploy/README.md, "An air-gapped GPU box").
#   PY (--python, $ARCHIVETAG_GPU_PYTHON, else python3) is the box's Python with its torch, torchvision,
#   transformers, onnxruntime & co. A venv (--venv, default .gpu-venv) is made over it: it sees PY's
#   packages, and its own come first. Into it, with --no-index --no-deps: the wheels in DIR (made by
#   benchmarks/gpu_wheels.py from benchmarks/gpu_wheels.txt), then archivetag, its three model services
#   and the orchestrator from this working tree (editable). Nothing else is installed, nothing replaced
#   in PY. SigLIP runs on CUDA through torch when the box's onnxruntime has no CUDA provider
#   (--siglip-runtime auto).
# Without --offline: PY when it already imports archivetag and torch, else .venv/bin/python when it does,
#   else a new .gpu-venv (with the system's site-packages) and `pip install -e .[dev]` & co., from
#   --wheelhouse DIR only (--no-index) when given, else from PyPI.
# --dry-run: the same stages on the CPU with smoke-sized models (CI runs it: tests/benchmarks and, in the
#   older-versions environment, scripts/test --older-versions); the cuda tests are skipped there.
# --install-only: stop after the install (scripts/test --older-versions uses it).
set -euo pipefail
cd "$(dirname "$0")/.."
dry="" offline="" wheelhouse="" install_only="" stamp="" venv=.gpu-venv python="${ARCHIVETAG_GPU_PYTHON:-}"
out=benchmarks/results/gpu_check.json measure_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1; measure_args+=(--dry-run) ;;
    --offline) offline="$2"; shift ;;
    --python) python="$2"; shift ;;
    --venv) venv="$2"; shift ;;
    --install-only) install_only=1 ;;
    --wheelhouse) wheelhouse="$2"; shift ;;
    --out) out="$2"; shift ;;
    --workdir|--seconds) measure_args+=("$1" "$2"); shift ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
started=$(date +%s)
say() { echo "gpu_check [$(( $(date +%s) - started )) s]: $*" >&2; }
failed=()

# record STAGE STATUS SECONDS [DETAIL...]: appended to the JSON at once (any python3 will do: json only).
record() {
  local stage="$1" status="$2" seconds="$3"; shift 3
  say "$stage: $status (${seconds} s)${*:+ - $*}"
  [ "$status" = ok ] || failed+=("$stage")
  python3 - "$out" "$stage" "$status" "$seconds" "$*" <<'PY'
import json, pathlib, sys
path, stage, status, seconds, detail = sys.argv[1:]
path = pathlib.Path(path)
data = json.loads(path.read_text()) if path.exists() else {}
data.setdefault("stages", []).append({"stage": stage, "status": status, "seconds": float(seconds),
                                      **({"detail": detail} if detail else {})})
tmp = path.with_name(path.name + ".tmp")
tmp.write_text(json.dumps(data, indent=2) + "\n")
tmp.replace(path)
PY
}
mkdir -p "$(dirname "$out")"
printf '{"started": "%s", "dry_run": %s, "offline": %s, "stages": []}\n' "$(date -u +%FT%TZ)" \
  "$([ -n "$dry" ] && echo true || echo false)" "$([ -n "$offline" ] && echo true || echo false)" > "$out"

members=(-e . -e services/florence -e services/rampp -e services/siglip -e orchestrator)

# The box's Python + a venv over it: its packages seen from the venv, behind the venv's own.
install_offline() {
  local base="${python:-python3}"
  [ -d "$offline" ] || { echo "gpu_check.sh: --offline $offline: no such folder" >&2; exit 2; }
  command -v "$base" >/dev/null || { echo "gpu_check.sh: no Python $base" >&2; exit 2; }
  stamp=$( (command -v "$base"; "$base" -VV; ls "$offline"; cat pyproject.toml services/*/pyproject.toml \
            orchestrator/pyproject.toml "$0") | sha256sum | cut -c1-16)
  if [ -f "$venv/.archivetag-offline-$stamp" ]; then
    python="$venv/bin/python"
    return
  fi
  rm -rf "$venv"
  "$base" -m venv "$venv"
  printf '*\n' > "$venv/.gitignore"  # never in git status, never sent to a GPU machine with the tree
  local site
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  # site.addsitedir, not a plain path line: the base's own .pth files (its editable installs) count too.
  "$base" - "$site/_gpu_box_base.pth" <<'PY'
import sys
dirs = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
open(sys.argv[1], "w").write(f"import site; list(map(site.addsitedir, {dirs!r}))\n")  # one line, no comprehension
PY
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-index --no-deps "$offline"/*.whl
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-index --no-deps \
    --no-build-isolation --config-settings editable_mode=compat "${members[@]}"
  python="$venv/bin/python"
}

usable() { [ -n "$1" ] && [ -x "$(command -v "$1")" ] && "$1" -c "import archivetag, torch" 2>/dev/null; }
t=$(date +%s)
if [ -n "$offline" ]; then
  say "installing offline from $offline over ${python:-python3} into $venv"
  install_offline
  record install ok $(( $(date +%s) - t )) "offline from $offline into $venv"
else
  if ! usable "$python"; then python=.venv/bin/python; fi
  if ! usable "$python"; then
    [ -n "$dry" ] && { echo "gpu_check.sh --dry-run: run scripts/bootstrap first (or give --offline DIR)" >&2; exit 2; }
    say "installing into .gpu-venv"
    [ -x .gpu-venv/bin/python ] || { python3 -m venv --system-site-packages .gpu-venv; printf '*\n' > .gpu-venv/.gitignore; }
    python=.gpu-venv/bin/python
    source_args=()
    [ -n "$wheelhouse" ] && source_args=(--no-index --find-links "$wheelhouse")
    "$python" -m pip install --quiet "${source_args[@]}" -e '.[dev]' -e services/florence -e services/rampp \
      -e 'services/siglip[export]' -e orchestrator
  fi
  record install ok $(( $(date +%s) - t )) "$python"
fi

# What runs: versions, the device, ONNX Runtime's providers, and that every server imports.
t=$(date +%s)
if versions=$("$python" - <<'PY' 2>&1
import importlib, importlib.metadata as md, sys
import torch
for name in ("archivetag_florence.backend", "archivetag_rampp.backend", "archivetag_siglip.backend",
             "archivetag_orchestrator.app", "archivetag.cli"):
    importlib.import_module(name)
import onnxruntime
parts = [f"python {sys.version.split()[0]}"]
for name in ("torch", "torchvision", "transformers", "onnxruntime", "tokenizers", "timm", "grpcio", "protobuf"):
    try:
        parts.append(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        parts.append(f"{name} missing")
parts.append("cuda " + (torch.cuda.get_device_name() if torch.cuda.is_available() else "none"))
parts.append("ort providers " + ",".join(onnxruntime.get_available_providers()))
print("; ".join(parts))
PY
); then
  record environment ok $(( $(date +%s) - t )) "$versions"
  [ -z "$offline" ] || touch "$venv/.archivetag-offline-$stamp"  # reused next time only once it imports
else
  record environment failed $(( $(date +%s) - t )) "$(echo "$versions" | tail -3)"
  exit 1
fi
[ -n "$install_only" ] && exit 0
if [ -z "$dry" ] && ! "$python" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu_check.sh: no CUDA device (or a CPU-only torch); --dry-run checks the code on a CPU" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 2>/dev/null || true

# The tests that need CUDA (skipped in a dry run: there they only check that pytest runs in this environment).
t=$(date +%s)
if "$python" -m pytest -q -p no:cacheprovider -m cuda tests/runtime/test_torch_decode.py \
     tests/siglip/test_torch_runtime.py >"$out.cuda-tests.log" 2>&1; then status=ok; else status=failed; fi
record cuda_tests "$status" $(( $(date +%s) - t )) "$(tail -1 "$out.cuda-tests.log")"

t=$(date +%s)
if "$python" benchmarks/gpu_check.py --append --out "$out" "${measure_args[@]}"; then status=ok; else status=failed; fi
record measure "$status" $(( $(date +%s) - t ))

if [ -z "$dry" ]; then  # CPU-side checks on the box's versions; bounded so they cannot eat the numbers' time
  t=$(date +%s)
  if timeout 150 "$python" -m pytest -q -x -p no:cacheprovider tests/runtime tests/orchestrator/test_parts.py \
       >"$out.runtime-tests.log" 2>&1; then status=ok; else status=failed; fi
  record runtime_tests "$status" $(( $(date +%s) - t )) "$(tail -1 "$out.runtime-tests.log")"
fi
say "done; ${#failed[@]} stage(s) failed${failed[*]:+: ${failed[*]}}; results in $out"
[ ${#failed[@]} -eq 0 ]
