#!/usr/bin/env bash
# The GPU check on a fresh CUDA machine: install, run the tests (those marked cuda included),
# then benchmarks/gpu_check.py (full-size random models at fp16, batch 1/8/16; decode vs model
# stage; the stack at 16 clients; GPU memory of the three services on one card). Under 8 minutes.
#
#   benchmarks/gpu_check.sh [--dry-run] [--wheelhouse DIR] [--workdir DIR] [--out FILE.json]
#
# Installing, in this order:
#   - $ARCHIVETAG_GPU_PYTHON, or .venv/bin/python, when it already imports archivetag and torch;
#   - otherwise a new .gpu-venv (with the system's site-packages, so a CUDA torch already on the
#     machine is used) and `pip install -e .[dev]`: from --wheelhouse DIR only (--no-index) when
#     given, else from PyPI. A machine without network needs the wheelhouse: make it where PyPI is
#     reachable with `pip download -d wheelhouse -e '.[dev]' onnxruntime-gpu==<onnxruntime's pin>
#     --python-version 3.11 --platform manylinux_2_28_x86_64 --only-binary :all:` (CUDA torch wheels
#     are ~2.5 GB: carry them on the machine's disk, not through a 64 MiB transfer).
#   - SigLIP needs ONNX Runtime's CUDA provider: onnxruntime is replaced by onnxruntime-gpu of the
#     same version when the provider is missing.
# --dry-run: no install, no tests (a pytest test runs this mode), the same measuring code on the
# CPU with tiny models, under 2 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
dry="" wheelhouse="" passthrough=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1; passthrough+=(--dry-run) ;;
    --wheelhouse) wheelhouse="$2"; shift ;;
    --workdir|--out) passthrough+=("$1" "$2"); shift ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
started=$(date +%s)
say() { echo "gpu_check [$(( $(date +%s) - started )) s]: $*" >&2; }

usable() { [ -n "$1" ] && [ -x "$1" ] && "$1" -c "import archivetag, torch" 2>/dev/null; }
python="${ARCHIVETAG_GPU_PYTHON:-}"
if ! usable "$python"; then python=.venv/bin/python; fi
if ! usable "$python"; then
  [ -n "$dry" ] && { echo "gpu_check.sh --dry-run: run scripts/bootstrap first" >&2; exit 2; }
  say "installing into .gpu-venv"
  [ -x .gpu-venv/bin/python ] || python3 -m venv --system-site-packages .gpu-venv
  python=.gpu-venv/bin/python
  source_args=()
  [ -n "$wheelhouse" ] && source_args=(--no-index --find-links "$wheelhouse")
  "$python" -m pip install --quiet "${source_args[@]}" -e '.[dev]' -e services/florence -e services/rampp \
    -e 'services/siglip[export]' -e orchestrator
fi

if [ -z "$dry" ]; then
  "$python" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'" \
    || { echo "gpu_check.sh: no CUDA device (or a CPU-only torch); --dry-run checks the code on a CPU" >&2; exit 2; }
  if ! "$python" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"; then
    version=$("$python" -c "import onnxruntime; print(onnxruntime.__version__)")
    say "installing onnxruntime-gpu==$version (SigLIP's CUDA provider)"
    source_args=()
    [ -n "$wheelhouse" ] && source_args=(--no-index --find-links "$wheelhouse")
    "$python" -m pip uninstall --quiet --yes onnxruntime
    "$python" -m pip install --quiet "${source_args[@]}" "onnxruntime-gpu==$version"
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true
  say "tests marked cuda"
  "$python" -m pytest -q -m cuda tests/runtime/test_torch_decode.py
  say "runtime and scheduler tests (the rest of the suite: scripts/test)"
  "$python" -m pytest -q -x tests/runtime tests/orchestrator/test_parts.py
fi
say "measuring"
"$python" benchmarks/gpu_check.py "${passthrough[@]}"
say "done"
