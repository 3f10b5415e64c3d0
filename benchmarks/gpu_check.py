"""The GPU check: every model on CUDA at fp16, decode vs model stage, the stack at 16 clients, GPU memory.

Run by benchmarks/gpu_check.sh (which installs the environment and runs the tests first):
  1. full-size random-weight models: SigLIP-B/16 (ONNX, through the service's backend: ORT's CUDA
     provider), RAM++ swin_l/384, Florence-2 base and large (the service's backend, fp16);
  2. each model's images/s at batch 1, 8 and 16 through the service backend's prepare + infer_batch;
  3. the decode stage: a 24-megapixel camera JPEG decoded on the CPU (Pillow, DCT draft scale)
     and on the GPU (nvJPEG through images.finish_decode_with_torch), images/s, beside the model stage;
  4. the stack (`up`: the three services and the orchestrator, all on one card) at 16 clients,
     and each service's GPU memory there (nvidia-smi, per process).

    python benchmarks/gpu_check.py [--dry-run] [--workdir DIR] [--out benchmarks/results/gpu_check.json]

--dry-run: the same code paths on the CPU with smoke-sized models and a small JPEG (CI runs it).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

from archivetag.cli import build_parser  # noqa: E402
from archivetag.models import write_smoke_models  # noqa: E402
from archivetag.runtime.images import ImageLimits, decode_image, finish_decode_with_torch, open_image  # noqa: E402
from archivetag.runtime.model_card import ModelCard  # noqa: E402
from archivetag.runtime.registry import server  # noqa: E402
from archivetag.runtime.specs import load  # noqa: E402
from archivetag.v1 import tagger_pb2, view_type_pb2  # noqa: E402

BATCHES = (1, 8, 16)
DRY_BATCHES = (1, 2)


# -- models ---------------------------------------------------------------------------------------
def write_full_florence(target: Path, size: str) -> None:
    """Florence-2 base or large's architecture, random weights, with the smoke processor and vocabulary."""
    import torch
    from transformers import Florence2ForConditionalGeneration, GenerationConfig

    from archivetag.bundled import smoke_vocabulary
    from archivetag_florence.smoke import VOCABULARY_FILE, build_tokenizer, smoke_processor
    from florence_bench import full_config

    target.mkdir(parents=True, exist_ok=True)
    vocabulary = smoke_vocabulary()
    torch.manual_seed(0)
    model = Florence2ForConditionalGeneration(full_config(size)).eval()
    model.generation_config = GenerationConfig(bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2,
                                               num_beams=1, max_new_tokens=20)
    model.save_pretrained(target)
    smoke_processor(build_tokenizer(sorted({w for t in vocabulary for w in t.split()})), edge=768).save_pretrained(target)
    (target / VOCABULARY_FILE).write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    ModelCard(family="florence", name=f"florence-2-{size}-architecture-random", smoke=True,
              source="benchmarks/gpu_check.py").write(target)


def write_full_rampp(target: Path) -> None:
    from archivetag.bundled import RAMPP_TAG_LIST, RAMPP_THRESHOLDS
    from archivetag_rampp.checkpoint import save_safetensors
    from archivetag_rampp.layout import CONVERTED, TAG_LIST_FILE, THRESHOLD_FILE
    from archivetag_rampp.model import FULL
    from archivetag_rampp.random_checkpoint import random_model

    target.mkdir(parents=True, exist_ok=True)
    (target / TAG_LIST_FILE).write_bytes(RAMPP_TAG_LIST.read_bytes())
    (target / THRESHOLD_FILE).write_bytes(RAMPP_THRESHOLDS.read_bytes())
    save_safetensors(random_model(FULL), target / CONVERTED)
    ModelCard(family="rampp", name="ram-plus-swin-large-architecture-random", smoke=True,
              source="benchmarks/gpu_check.py").write(target)


def build_models(workdir: Path, dry: bool) -> dict[str, Path]:
    """{label: models folder holding that model under its service name}; reused when present."""
    folders = {"siglip": workdir / "main", "rampp": workdir / "main", "florence-base": workdir / "main",
               "florence-large": workdir / "large"}
    if dry:
        write_smoke_models(workdir / "main")
        write_smoke_models(workdir / "large", which=("florence",))
        return folders
    from siglip_bench import full_size_export

    main = workdir / "main"
    if not (main / "siglip").exists():
        export = full_size_export(workdir / "siglip-export")
        (main / "siglip").parent.mkdir(parents=True, exist_ok=True)
        os.symlink(export / "siglip", main / "siglip")
    if not (main / "rampp" / "archivetag-model.json").exists():
        write_full_rampp(main / "rampp")
    if not (main / "florence" / "archivetag-model.json").exists():
        write_full_florence(main / "florence", "base")
    if not (workdir / "large" / "florence" / "archivetag-model.json").exists():
        write_full_florence(workdir / "large" / "florence", "large")
    return folders


# -- images ---------------------------------------------------------------------------------------
def camera_jpeg(megapixels: float) -> bytes:
    """A photo-like JPEG (smooth gradients and noise) of about `megapixels`, quality 90."""
    height = int((megapixels * 1e6 / 1.5) ** 0.5)
    width = int(height * 1.5)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.stack([x / width * 200, y / height * 200, (x + y) / (width + height) * 255], axis=-1)
    pixels += rng.normal(0, 12, size=(height, width, 1)).astype(np.float32)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def photos(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 255, size=(480, 640, 3), dtype=np.uint8)) for _ in range(count)]


# -- measurements ---------------------------------------------------------------------------------
def rate(fn, items: int, seconds: float, synchronize=lambda: None) -> float:
    """items/s of fn, repeated for at least `seconds` after one warm-up call."""
    fn()
    synchronize()
    runs, started = 0, time.perf_counter()
    while True:
        fn()
        runs += 1
        synchronize()
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return runs * items / elapsed


def model_speed(name: str, models: Path, device: str, batches, seconds: float, synchronize) -> dict:
    """The service's backend (load, prepare, infer_batch) on `device` at fp16 (SigLIP: its ONNX export)."""
    args = build_parser().parse_args(["serve", name, "--models", str(models), "--device", device,
                                      "--dtype", "float16" if device.startswith("cuda") else "float32"])
    backend = load(server(name).app)(args)
    started = time.perf_counter()
    backend.load()
    load_seconds = time.perf_counter() - started
    request = view_type_pb2.ClassifyRequest() if name == "siglip" else tagger_pb2.TagRequest()
    images = photos(max(batches))
    items = [backend.prepare(image, request) for image in images]
    rows = []
    for batch in batches:
        def run(batch=batch):
            results = backend.infer_batch(items[:batch], lambda: False)
            failed = [r for r in results if isinstance(r, Exception)]
            if failed:
                raise failed[0]
        rows.append({"batch": batch, "images_per_second": rate(run, batch, seconds, synchronize)})
        print(f"  {name} batch {batch}: {rows[-1]['images_per_second']:.1f} images/s", file=sys.stderr)
    prepare = rate(lambda: backend.prepare(images[0], request), 1, seconds)
    return {"identity": str(backend.identity()).replace("\n", " "), "load_seconds": load_seconds,
            "prepare_images_per_second": prepare, "runs": rows}


def decode_speed(data: bytes, device: str | None, seconds: float, min_edge: int = 768) -> dict:
    """images/s of the decode stage: Pillow on the CPU (as the services do) and, given a device, nvJPEG there."""
    limits = ImageLimits(max_pixels=200_000_000)
    result = {"bytes": len(data), "size": list(Image.open(io.BytesIO(data)).size),
              "cpu_images_per_second": rate(lambda: decode_image(data, limits, min_edge), 1, seconds)}
    if device:
        import torch

        def on_device():
            image, plan = open_image(data, limits, min_edge)
            finish_decode_with_torch(data, image, plan, device)

        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        result[f"torch_{device}_images_per_second"] = rate(on_device, 1, seconds, sync)
    return result


def gpu_memory_by_pid() -> dict[int, float]:
    """MiB of GPU memory per process, from nvidia-smi ({} without one)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {int(pid): float(mib) for pid, mib in (line.split(",") for line in out.strip().splitlines() if line)}


def stack_at_16_clients(models: Path, device: str, requests: int, workdir: Path) -> dict:
    from stack_bench import run_clients, stack_arguments, test_images

    from archivetag.stack import Stack

    os.environ["ARCHIVETAG_DEVICE"] = device  # inherited by the services `up` starts
    os.environ["ARCHIVETAG_DTYPE"] = "float16" if device.startswith("cuda") else "float32"
    up_args, ports = stack_arguments(models, workdir / "logs")

    async def run() -> dict:
        stack = Stack(up_args, say=lambda *_: None)
        stack.start()
        try:
            await stack.wait_serving(900)
            address = f"127.0.0.1:{ports['orchestrator']}"
            images = test_images(16)
            await asyncio.to_thread(run_clients, address, images, 16, 1)  # warm-up
            row = await asyncio.to_thread(run_clients, address, images, 16, max(1, requests // 16))
            memory = gpu_memory_by_pid()
            row["gpu_memory_mib"] = {s.name: memory.get(s.process.pid) for s in stack.services if s.process}
            return row
        finally:
            await stack.stop()

    return asyncio.run(run())


# -- report ---------------------------------------------------------------------------------------
def print_table(result: dict) -> None:
    print(f"\nGPU check on {result['device']} ({result['gpu']}), {'DRY RUN (CPU, tiny models)' if result['dry_run'] else 'fp16'}")
    print(f"{'model':16} {'batch':>5} {'images/s':>10}")
    for label, model in result["models"].items():
        for row in model["runs"]:
            print(f"{label:16} {row['batch']:5d} {row['images_per_second']:10.1f}")
    decode = result["decode"]
    print(f"\ndecode {decode['size'][0]}×{decode['size'][1]} JPEG: CPU {decode['cpu_images_per_second']:.1f} images/s"
          + "".join(f", {k.removesuffix('_images_per_second')} {v:.1f} images/s"
                    for k, v in decode.items() if k.startswith("torch_")))
    stack = result["stack"]
    print(f"stack, 16 clients: {stack['images_per_second']:.1f} images/s, p50 {stack['p50_ms']:.0f} ms, "
          f"p95 {stack['p95_ms']:.0f} ms")
    print("GPU memory (MiB) with all three on one card: "
          + ", ".join(f"{name} {mib if mib is not None else 'n/a'}" for name, mib in stack["gpu_memory_mib"].items()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, smoke-sized models, small JPEG (CI)")
    parser.add_argument("--workdir", type=Path, help="where models are built (kept and reused); default: a temporary one")
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per figure")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gpu_check.json")
    args = parser.parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); use --dry-run on a CPU",
              file=sys.stderr)
        return 2
    if args.dry_run:  # the code paths, not the cost: short captions (the settings' env vars reach `up`'s services too)
        os.environ.update(ARCHIVETAG_FLORENCE_MAX_NEW_TOKENS="4", ARCHIVETAG_FLORENCE_NUM_BEAMS="1")
    device = "cpu" if args.dry_run else "cuda"
    seconds = 0.2 if args.dry_run else args.seconds
    batches = DRY_BATCHES if args.dry_run else BATCHES
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    started = time.perf_counter()
    temporary = tempfile.TemporaryDirectory() if args.workdir is None else None
    workdir = args.workdir or Path(temporary.name)
    folders = build_models(workdir, args.dry_run)
    built = time.perf_counter() - started
    result: dict = {"dry_run": args.dry_run, "device": device, "machine": platform.platform(),
                    "gpu": torch.cuda.get_device_name() if device == "cuda" else "none", "torch": torch.__version__,
                    "build_models_seconds": built, "models": {}}
    for label, models in folders.items():
        name = label.split("-")[0]
        result["models"][label] = model_speed(name, models, device, batches, seconds, sync)
        if device == "cuda":
            torch.cuda.empty_cache()
    result["decode"] = decode_speed(camera_jpeg(1.0 if args.dry_run else 24.0), device, seconds)
    result["stack"] = stack_at_16_clients(folders["siglip"], device, 32 if args.dry_run else 320, workdir)
    result["seconds"] = time.perf_counter() - started
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({result['seconds']:.0f} s)")
    if temporary is not None:
        temporary.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
