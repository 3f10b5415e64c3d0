"""The GPU check (issue 28, item 4): every model on CUDA at fp16, from tensors and from JPEG bytes, the stack, GPU memory.

Run by benchmarks/gpu_check.sh (which installs the environment and runs the cuda tests first):
  1. full-size random-weight models, built on the GPU: SigLIP-B/16 (exported as the service exports it: ONNX +
     the torch weights), RAM++ swin_l/384, Florence-2 base and large (saved at fp16, 64 fixed new tokens);
  2. SigLIP images/s at batch 1, 32, 256 through the service's backend (on CUDA: the torch runtime) from
     tensors (prepared pixels), and from 640×480 JPEG bytes: decoded on the CPU (Pillow, all cores, as the
     service does) or on the GPU (nvJPEG, resize and normalise there); its fp16 embeddings against ONNX fp32;
  3. RAM++ images/s at batch 1, 16, 64; Florence-2 base and large captions/s at batch 1, 8, 32 for 64 new
     tokens, greedy and 3 beams (the service's backend: prepare + infer_batch);
  4. the decode stage alone: a 24-megapixel camera JPEG on the CPU and with nvJPEG;
  5. the stack (`up`: the three services and the orchestrator on one card) at 16 and 64 clients: photos/s,
     p50/p95/p99, and each service's GPU memory with all three resident (nvidia-smi, per process).

    python benchmarks/gpu_check.py [--dry-run] [--workdir DIR] [--seconds 2] [--out FILE.json] [--append]

Each figure is printed when measured and the JSON (--out) rewritten after each stage, so a run cut short
still has what it measured; --append keeps what the file already holds (gpu_check.sh's stages).
--dry-run: the same code paths on the CPU with smoke-sized models and small batches (CI runs it).
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
import traceback
from concurrent.futures import ThreadPoolExecutor
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

BATCHES = {"siglip": (1, 32, 256), "rampp": (1, 16, 64), "florence": (1, 8, 32)}
DRY_BATCHES = {"siglip": (1, 2), "rampp": (1, 2), "florence": (1, 2)}
TOKENS, DRY_TOKENS = 64, 4
BEAMS, DRY_BEAMS = (1, 3), (1, 2)
CLIENTS, DRY_CLIENTS = (16, 64), (2, 4)


def say(text: str) -> None:
    print(f"gpu_check: {text}", file=sys.stderr, flush=True)


# -- models ---------------------------------------------------------------------------------------
def write_full_florence(target: Path, size: str, device: str, tokens: int) -> None:
    """Florence-2 base or large's architecture, random weights (built on `device`, saved at fp16 on CUDA), with
    the smoke processor and vocabulary; generation_config fixes every caption at `tokens` new tokens."""
    import torch
    from transformers import Florence2ForConditionalGeneration, GenerationConfig

    from archivetag.bundled import smoke_vocabulary
    from archivetag_florence.smoke import VOCABULARY_FILE, build_tokenizer, smoke_processor
    from florence_bench import full_config

    target.mkdir(parents=True, exist_ok=True)
    vocabulary = smoke_vocabulary()
    torch.manual_seed(0)
    with torch.device(device):
        model = Florence2ForConditionalGeneration(full_config(size)).eval()
    if device.startswith("cuda"):
        model = model.half()
    model.generation_config = GenerationConfig(bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2,
                                               num_beams=1, max_new_tokens=tokens, min_new_tokens=tokens)
    model.save_pretrained(target)
    smoke_processor(build_tokenizer(sorted({w for t in vocabulary for w in t.split()})), edge=768).save_pretrained(target)
    (target / VOCABULARY_FILE).write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    ModelCard(family="florence", name=f"florence-2-{size}-architecture-random", smoke=True,
              source="benchmarks/gpu_check.py").write(target)


def write_full_rampp(target: Path, device: str) -> None:
    import torch

    from archivetag.bundled import RAMPP_TAG_LIST, RAMPP_THRESHOLDS
    from archivetag_rampp.checkpoint import save_safetensors
    from archivetag_rampp.layout import CONVERTED, TAG_LIST_FILE, THRESHOLD_FILE
    from archivetag_rampp.model import FULL
    from archivetag_rampp.random_checkpoint import random_model

    target.mkdir(parents=True, exist_ok=True)
    (target / TAG_LIST_FILE).write_bytes(RAMPP_TAG_LIST.read_bytes())
    (target / THRESHOLD_FILE).write_bytes(RAMPP_THRESHOLDS.read_bytes())
    try:
        with torch.device(device):
            model = random_model(FULL)
    except (RuntimeError, TypeError) as exc:  # a CPU tensor made inside: build it on the CPU instead
        say(f"RAM++ not buildable on {device} ({type(exc).__name__}: {exc}); building on the CPU")
        model = random_model(FULL)
    save_safetensors(model.cpu(), target / CONVERTED)
    ModelCard(family="rampp", name="ram-plus-swin-large-architecture-random", smoke=True,
              source="benchmarks/gpu_check.py").write(target)


def write_full_siglip(target: Path, workdir: Path) -> None:
    """siglip-base-patch16-224's architecture, random weights, exported as the service exports it (vision only)."""
    from archivetag_siglip.export import export_folder
    from archivetag_siglip.smoke import write_random_checkpoint

    checkpoint = write_random_checkpoint(workdir / "siglip-checkpoint", image_size=224, full_size=True)
    export_folder(str(checkpoint), target, model_id="siglip-base-patch16-224-architecture-random", text_tower=False)
    ModelCard(family="siglip", name="siglip-base-patch16-224-architecture-random", smoke=True,
              source="benchmarks/gpu_check.py").write(target)


def build_models(workdir: Path, dry: bool, device: str, tokens: int) -> dict[str, Path]:
    """{label: models folder holding that model under its service name}; reused when present."""
    folders = {"siglip": workdir / "main", "rampp": workdir / "main", "florence-base": workdir / "main",
               "florence-large": workdir / "large"}
    if dry:
        write_smoke_models(workdir / "main")
        write_smoke_models(workdir / "large", which=("florence",))
        return folders
    main = workdir / "main"
    steps = (("siglip", main / "siglip", lambda t: write_full_siglip(t, workdir)),
             ("rampp", main / "rampp", lambda t: write_full_rampp(t, device)),
             ("florence-base", main / "florence", lambda t: write_full_florence(t, "base", device, tokens)),
             ("florence-large", workdir / "large" / "florence", lambda t: write_full_florence(t, "large", device, tokens)))
    for label, target, write in steps:
        if not (target / "archivetag-model.json").exists():
            started = time.perf_counter()
            write(target)
            say(f"built {label} in {time.perf_counter() - started:.1f} s")
    return folders


# -- images ---------------------------------------------------------------------------------------
def camera_jpeg(megapixels: float, seed: int = 0) -> bytes:
    """A photo-like JPEG (smooth gradients and noise) of about `megapixels`, quality 90."""
    height = int((megapixels * 1e6 / 1.5) ** 0.5)
    width = int(height * 1.5)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.stack([x / width * 200, y / height * 200, (x + y) / (width + height) * 255], axis=-1)
    pixels += rng.normal(0, 12, size=(height, width, 1)).astype(np.float32)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def photos(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 255, size=(480, 640, 3), dtype=np.uint8)) for _ in range(count)]


def photo_jpegs(count: int) -> list[bytes]:
    """count 640×480 photo-like JPEGs (the from-bytes figures), quality 90."""
    out = []
    for image in photos(count):
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


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


def backend_for(name: str, models: Path, device: str, *extra: str):
    args = build_parser().parse_args(["serve", name, "--models", str(models), "--device", device,
                                      "--dtype", "float16" if device.startswith("cuda") else "float32", *extra])
    backend = load(server(name).app)(args)
    started = time.perf_counter()
    backend.load()
    return backend, time.perf_counter() - started


def run_batch(backend, items):
    results = backend.infer_batch(items, lambda: False)
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        raise failed[0]


def model_speed(name: str, models: Path, device: str, batches, seconds: float, synchronize, *extra: str,
                beams=(None,), label: str = "") -> dict:
    """The service's backend (load, prepare, infer_batch) on `device`, images/s per batch (and beam count)."""
    backend, load_seconds = backend_for(name, models, device, *extra)
    request = view_type_pb2.ClassifyRequest() if name == "siglip" else tagger_pb2.TagRequest()
    images = photos(max(batches))
    items = [backend.prepare(image, request) for image in images]
    rows = []
    for beam in beams:
        if beam is not None:
            backend.num_beams = beam  # Florence-2's --florence-num-beams, read per generate call
        for batch in batches:
            row = {"batch": batch, **({"beams": beam} if beam is not None else {}),
                   "images_per_second": rate(lambda b=batch: run_batch(backend, items[:b]), batch, seconds, synchronize)}
            rows.append(row)
            say(f"{label or name} batch {batch}{f' beams {beam}' if beam else ''}: "
                f"{row['images_per_second']:.1f} images/s")
    prepare = rate(lambda: backend.prepare(images[0], request), 1, seconds)
    return {"identity": str(backend.identity()).replace("\n", " "), "load_seconds": load_seconds,
            "settings": backend.describe(), "prepare_images_per_second": prepare, "runs": rows, "_backend": backend}


def siglip_from_jpeg(backend, jpegs: list[bytes], batches, device: str, seconds: float, synchronize) -> dict:
    """SigLIP images/s from JPEG bytes: CPU decode (Pillow on every core, then the service's preprocessing) vs
    the GPU's (torchvision's decode_jpeg: nvJPEG on CUDA; resize and normalise there; the torch tower)."""
    import torch
    import torch.nn.functional as F
    from torchvision.io import decode_jpeg

    limits = ImageLimits()
    request = view_type_pb2.ClassifyRequest()
    pool = ThreadPoolExecutor(os.cpu_count() or 1)
    edge = backend.input_edge

    def cpu(batch: int):
        items = list(pool.map(lambda d: backend.prepare(decode_image(d, limits, edge), request), jpegs[:batch]))
        run_batch(backend, items)

    pre = backend.preprocess
    mean = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1)
    encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in jpegs]
    tower = backend.torch_tower

    def on_device(batch: int):
        decoded = decode_jpeg(encoded[:batch], device=device)
        pixels = torch.stack(decoded).float()
        pixels = F.interpolate(pixels, size=(pre.height, pre.width), mode="bicubic", antialias=True,
                               align_corners=False)
        pixels = (pixels * float(pre.rescale_factor) - mean) / std
        tower.embed_tensor(pixels).cpu()

    result: dict = {"jpeg": {"bytes": len(jpegs[0]), "size": list(Image.open(io.BytesIO(jpegs[0])).size)},
                    "cpu_decode": [], "device_decode": [], "device": device}
    for batch in batches:
        result["cpu_decode"].append({"batch": batch, "images_per_second": rate(lambda b=batch: cpu(b), batch, seconds,
                                                                             synchronize)})
        say(f"siglip from JPEG, CPU decode, batch {batch}: {result['cpu_decode'][-1]['images_per_second']:.1f} images/s")
        if tower is not None:
            result["device_decode"].append({"batch": batch, "images_per_second": rate(
                lambda b=batch: on_device(b), batch, seconds, synchronize)})
            say(f"siglip from JPEG, {device} decode (torchvision{', nvJPEG' if device == 'cuda' else ''}), batch "
                f"{batch}: {result['device_decode'][-1]['images_per_second']:.1f} images/s")
    pool.shutdown()
    return result


def siglip_parity(backend, models: Path) -> dict:
    """The served tower (torch, fp16 on CUDA) against vision.onnx at fp32 on ONNX Runtime's CPU: embeddings'
    cosine and view types on 16 photos."""
    reference, _ = backend_for("siglip", models, "cpu", "--siglip-runtime", "onnx")
    request = view_type_pb2.ClassifyRequest(include_embedding=True)
    images = photos(16)
    got = backend.infer_batch([backend.prepare(i, request) for i in images], lambda: False)
    expected = reference.infer_batch([reference.prepare(i, request) for i in images], lambda: False)
    cosines = []
    for a, b in zip(expected, got):
        ea, eb = np.asarray(a.embedding, np.float64), np.asarray(b.embedding, np.float64)
        cosines.append(float(ea @ eb / (np.linalg.norm(ea) * np.linalg.norm(eb))))
    return {"against": "vision.onnx fp32 on ONNX Runtime CPU", "min_cosine": min(cosines),
            "view_types_equal": sum(a.view_type == b.view_type for a, b in zip(expected, got)), "of": len(images)}


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


def gpu_memory_total() -> dict[str, float]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        used, total = (float(v) for v in out.strip().splitlines()[0].split(","))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return {}
    return {"used_mib": used, "total_mib": total}


def stack_under_load(models: Path, device: str, client_counts, per_client: int, workdir: Path, result: dict,
                     report) -> None:
    """`up` on `device`; fills `result` as it goes (report() after each figure)."""
    from stack_bench import run_clients, stack_arguments, test_images

    from archivetag.stack import Stack

    os.environ["ARCHIVETAG_DEVICE"] = device  # inherited by the services `up` starts
    os.environ["ARCHIVETAG_DTYPE"] = "float16" if device.startswith("cuda") else "float32"
    up_args, ports = stack_arguments(models, workdir / "logs")
    result["clients"] = {}

    async def run() -> None:
        stack = Stack(up_args, say=lambda *_: None)
        started = time.perf_counter()
        stack.start()
        try:
            await stack.wait_serving(900)
            result["start_seconds"] = time.perf_counter() - started
            say(f"stack serving after {result['start_seconds']:.1f} s")
            memory = gpu_memory_by_pid()
            result["gpu_memory_mib"] = {s.name: memory.get(s.process.pid) for s in stack.services if s.process}
            result["gpu_memory_card"] = gpu_memory_total()
            report()
            address = f"127.0.0.1:{ports['orchestrator']}"
            images = test_images(16)
            await asyncio.to_thread(run_clients, address, images, max(client_counts), 1)  # warm-up
            for clients in client_counts:
                row = await asyncio.to_thread(run_clients, address, images, clients, per_client)
                result["clients"][str(clients)] = row
                say(f"stack, {clients} clients: {row['images_per_second']:.1f} photos/s, p50 {row['p50_ms']:.0f} ms, "
                    f"p99 {row['p99_ms']:.0f} ms")
                report()
            memory = gpu_memory_by_pid()  # after the load: what each holds at its peak batch sizes
            result["gpu_memory_mib_after_load"] = {s.name: memory.get(s.process.pid)
                                                   for s in stack.services if s.process}
            result["gpu_memory_card_after_load"] = gpu_memory_total()
        finally:
            await stack.stop()

    asyncio.run(run())


# -- report ---------------------------------------------------------------------------------------
def print_table(result: dict) -> None:
    mode = "DRY RUN (CPU, tiny models)" if result["dry_run"] else "fp16"
    print(f"\nGPU check on {result['device']} ({result.get('gpu', '?')}), {mode}")
    print(f"{'model':16} {'batch':>5} {'beams':>5} {'images/s':>10}")
    for label, model in result.get("models", {}).items():
        for row in model.get("runs", []):
            print(f"{label:16} {row['batch']:5d} {row.get('beams', ''):>5} {row['images_per_second']:10.1f}")
    jpeg = result.get("siglip_jpeg")
    if jpeg:
        for way in ("cpu_decode", "device_decode"):
            for row in jpeg[way]:
                print(f"{'siglip jpeg ' + way.split('_')[0]:16} {row['batch']:5d} {'':>5} "
                      f"{row['images_per_second']:10.1f}")
    if "siglip_parity" in result:
        parity = result["siglip_parity"]
        print(f"siglip served tower vs ONNX fp32: min cosine {parity['min_cosine']:.5f}, view types equal "
              f"{parity['view_types_equal']}/{parity['of']}")
    decode = result.get("decode")
    if decode:
        print(f"\ndecode {decode['size'][0]}×{decode['size'][1]} JPEG: CPU {decode['cpu_images_per_second']:.1f} "
              "images/s" + "".join(f", {k.removesuffix('_images_per_second')} {v:.1f} images/s"
                                   for k, v in decode.items() if k.startswith("torch_")))
    stack = result.get("stack")
    if stack:
        for clients, row in stack.get("clients", {}).items():
            print(f"stack, {clients} clients: {row['images_per_second']:.1f} photos/s, p50 {row['p50_ms']:.0f} ms, "
                  f"p95 {row['p95_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms")
        print("GPU memory (MiB) with all three on one card: "
              + ", ".join(f"{name} {mib if mib is not None else 'n/a'}"
                          for name, mib in stack.get("gpu_memory_mib", {}).items())
              + (f"; card {stack['gpu_memory_card']}" if stack.get("gpu_memory_card") else ""))
    for failure in result.get("failures", []):
        print(f"FAILED {failure['stage']}: {failure['error']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, smoke-sized models, small batches (CI)")
    parser.add_argument("--workdir", type=Path, help="where models are built (kept and reused); default: a temporary one")
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per figure")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gpu_check.json")
    parser.add_argument("--append", action="store_true", help="keep what --out already holds (gpu_check.sh's stages)")
    args = parser.parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        say("no CUDA device here (torch.cuda.is_available() is False); use --dry-run on a CPU")
        return 2
    dry = args.dry_run
    device = "cpu" if dry else "cuda"
    seconds = 0.2 if dry else args.seconds
    batches = DRY_BATCHES if dry else BATCHES
    tokens, beams, client_counts = (DRY_TOKENS, DRY_BEAMS, DRY_CLIENTS) if dry else (TOKENS, BEAMS, CLIENTS)
    if dry:  # the code paths, not the cost: short captions (the settings' env vars reach `up`'s services too)
        os.environ.update(ARCHIVETAG_FLORENCE_MAX_NEW_TOKENS=str(tokens), ARCHIVETAG_FLORENCE_NUM_BEAMS="1")
    else:
        os.environ.update(ARCHIVETAG_FLORENCE_MAX_NEW_TOKENS=str(tokens))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    started = time.perf_counter()

    result: dict = json.loads(args.out.read_text()) if args.append and args.out.exists() else {}
    result.update({"dry_run": dry, "device": device, "machine": platform.platform(),
                   "gpu": torch.cuda.get_device_name() if device == "cuda" else "none", "torch": torch.__version__,
                   "cpus": os.cpu_count(), "models": {}, "failures": []})

    def report() -> None:
        """The JSON as it stands: rewritten after every stage, so a run cut short still reports."""
        result["seconds"] = time.perf_counter() - started
        args.out.parent.mkdir(parents=True, exist_ok=True)
        clean = dict(result)
        clean["models"] = {label: {k: v for k, v in m.items() if not k.startswith("_")}
                           for label, m in result["models"].items()}
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(clean, indent=2, default=str) + "\n")
        tmp.replace(args.out)

    def stage(name: str, fn):
        """Run one stage; a failure is recorded and the check goes on to the next."""
        stage_started = time.perf_counter()
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 - a failed stage must not cost the others' numbers
            traceback.print_exc()
            result["failures"].append({"stage": name, "error": f"{type(exc).__name__}: {exc}"})
            say(f"{name}: FAILED ({type(exc).__name__}: {exc})")
            value = None
        result.setdefault("stage_seconds", {})[name] = time.perf_counter() - stage_started
        report()
        return value

    temporary = tempfile.TemporaryDirectory() if args.workdir is None else None
    workdir = args.workdir or Path(temporary.name)
    try:
        folders = stage("build_models", lambda: build_models(workdir, dry, device, tokens))
        if folders is None:
            return 1
        siglip_args = ("--siglip-runtime", "torch")  # on CUDA: the box's onnxruntime has no CUDA provider
        siglip = stage("siglip", lambda: model_speed("siglip", folders["siglip"], device, batches["siglip"], seconds,
                                                     sync, *siglip_args))
        if siglip is not None:
            result["models"]["siglip"] = siglip
            backend = siglip["_backend"]
            stage("siglip_jpeg", lambda: result.__setitem__("siglip_jpeg", siglip_from_jpeg(
                backend, photo_jpegs(max(batches["siglip"])), batches["siglip"], device, seconds, sync)))
            if not dry:
                stage("siglip_parity", lambda: result.__setitem__("siglip_parity", siglip_parity(backend,
                                                                                               folders["siglip"])))
            siglip.pop("_backend")
            del backend
        rampp = stage("rampp", lambda: model_speed("rampp", folders["rampp"], device, batches["rampp"], seconds, sync))
        if rampp is not None:
            rampp.pop("_backend")
            result["models"]["rampp"] = rampp
        for label in ("florence-base", "florence-large"):
            if device == "cuda":
                torch.cuda.empty_cache()
            florence = stage(label, lambda label=label: model_speed(
                "florence", folders[label], device, batches["florence"], seconds, sync,
                "--florence-max-new-tokens", str(tokens), beams=beams, label=label))
            if florence is not None:
                florence.pop("_backend")
                florence["tokens"] = tokens
                result["models"][label] = florence
        if device == "cuda":
            torch.cuda.empty_cache()
        stage("decode", lambda: result.__setitem__("decode", decode_speed(camera_jpeg(1.0 if dry else 24.0), device,
                                                                          seconds)))
        per_client = 4 if dry else 8
        result["stack"] = {}
        stage("stack", lambda: stack_under_load(folders["siglip"], device, client_counts, per_client, workdir,
                                                result["stack"], report))
    finally:
        print_table(result)
        report()
        print(f"wrote {args.out} ({result['seconds']:.0f} s)")
        if temporary is not None:
            temporary.cleanup()
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
