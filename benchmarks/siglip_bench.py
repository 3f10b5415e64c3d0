"""SigLIP view-type benchmark: full-size siglip-base-patch16-224 architecture, random weights.

Side by side, in one run, on the same images:
  1. in-process, batch 1 and 8: torch eager, ONNX Runtime fp32, ONNX Runtime int8 (dynamic
     quantisation, QInt8), with int8's embedding cosine to fp32 and view-type agreement;
     with the CUDA provider at batch 1, 8 and 32 when ONNX Runtime has it;
  2. through `archivetag serve siglip` (real gRPC server), 1 and 16 concurrent clients,
     batching on (max batch 8) and off (max batch 1): images/s, p50/p99 latency, and the
     service's throughput as a share of the same backend's in-process throughput.

    python benchmarks/siglip_bench.py [--quick] [--workdir DIR] [--out benchmarks/results/siglip.json]

The exported model is kept in --workdir and reused by later runs.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from archivetag_siglip import layout  # noqa: E402
from archivetag_siglip.layout import Preprocessor, read_json  # noqa: E402
from archivetag_siglip.scoring import logits_for, normalize  # noqa: E402
from archivetag.v1 import common_pb2, view_type_pb2, view_type_pb2_grpc  # noqa: E402
from tests.support.servers import ServerProcess, python_module  # noqa: E402

VIEW_TYPE_SERVICE = "archivetag.v1.ViewTypeService"


# -- the model ----------------------------------------------------------------------------------
def full_size_export(workdir: Path) -> Path:
    """<workdir>/models/siglip: siglip-base-patch16-224's architecture, random weights, int8 too."""
    models = workdir / "models"
    target = models / "siglip"
    if (target / layout.MANIFEST).exists() and (target / layout.VISION_INT8_ONNX).exists():
        return models
    from archivetag_siglip.export import export_folder
    from archivetag_siglip.smoke import write_random_checkpoint

    checkpoint = write_random_checkpoint(workdir / "checkpoint", image_size=224, full_size=True)
    print("exporting the full-size model (ONNX fp32 + int8) ...", file=sys.stderr)
    export_folder(str(checkpoint), target, model_id="siglip-base-patch16-224-architecture-random", int8=True)
    return models


def photos(count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        base = rng.integers(0, 255, size=(3,))
        gradient = np.linspace(0, 1, 640)[None, :, None] * rng.integers(0, 255, size=(1, 1, 3))
        pixels = np.clip(base + gradient + rng.normal(0, 20, size=(480, 640, 3)), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(pixels))
    return images


def jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


# -- in-process ---------------------------------------------------------------------------------
def time_calls(call, batches: list[np.ndarray], repeats: int) -> dict[str, float]:
    call(batches[0])  # warm-up
    latencies = []
    images = 0
    started = time.perf_counter()
    for i in range(repeats):
        batch = batches[i % len(batches)]
        t = time.perf_counter()
        call(batch)
        latencies.append(time.perf_counter() - t)
        images += len(batch)
    wall = time.perf_counter() - started
    return summary(latencies, images, wall)


def summary(latencies: list[float], images: int, wall: float) -> dict[str, float]:
    ms = np.array(latencies) * 1000
    return {"images_per_s": images / wall, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "calls": len(latencies), "images": images}


def ort_session(path: Path, providers: list[str]):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=providers)


def in_process(models: Path, pixels: np.ndarray, quick: bool) -> tuple[list[dict], dict]:
    import onnxruntime as ort
    import torch
    from transformers import SiglipVisionModel

    folder = models / "siglip"
    rows = []
    repeats = {1: 4 if quick else 10, 8: 2 if quick else 4, 32: 3 if quick else 5}

    def batches(size):
        return [pixels[i:i + size] for i in range(0, len(pixels) - size + 1, size)] or [pixels[:size]]

    vision = SiglipVisionModel.from_pretrained(str(models.parent / "checkpoint")).eval()

    def torch_call(batch):
        with torch.inference_mode():
            return vision(pixel_values=torch.from_numpy(batch)).pooler_output

    sessions = {"onnxruntime fp32": ort_session(folder / layout.VISION_ONNX, ["CPUExecutionProvider"]),
                "onnxruntime int8": ort_session(folder / layout.VISION_INT8_ONNX, ["CPUExecutionProvider"])}
    backends = {"torch eager": torch_call}
    for name, session in sessions.items():
        backends[name] = lambda batch, s=session: s.run(None, {"pixel_values": batch})[0]
    for name, call in backends.items():
        for size in (1, 8):
            result = time_calls(call, batches(size), repeats[size])
            rows.append({"backend": name, "device": "cpu", "batch": size, **result})
            print(f"  {name:18} batch {size}: {result['images_per_s']:.2f} images/s", file=sys.stderr)
    if "CUDAExecutionProvider" in ort.get_available_providers():
        cuda = ort_session(folder / layout.VISION_ONNX, ["CUDAExecutionProvider", "CPUExecutionProvider"])
        many = np.concatenate([pixels] * (32 // len(pixels) + 1))[:32]
        for size in (1, 8, 32):
            call = lambda batch: cuda.run(None, {"pixel_values": batch})[0]  # noqa: E731
            result = time_calls(call, [many[:size]], repeats[size] * 5)
            rows.append({"backend": "onnxruntime fp32 CUDA", "device": "cuda", "batch": size, **result})

    # int8 against fp32 on the same images: embedding cosine and the view type chosen.
    fp32 = normalize(sessions["onnxruntime fp32"].run(None, {"pixel_values": pixels})[0])
    int8 = normalize(sessions["onnxruntime int8"].run(None, {"pixel_values": pixels})[0])
    text = read_json(folder / layout.TEXT_EMBEDDINGS)
    embeddings = np.asarray(text["embeddings"], np.float32)
    view = lambda e: logits_for(e, embeddings, text["logit_scale"], text["logit_bias"]).argmax(1)  # noqa: E731
    cosines = (fp32 * int8).sum(1)
    quality = {"images": len(pixels), "cosine_min": float(cosines.min()), "cosine_mean": float(cosines.mean()),
               "view_type_agreement": float((view(fp32) == view(int8)).mean())}
    return rows, quality


# -- through the service ------------------------------------------------------------------------
def through_service(models: Path, images: list[bytes], clients: tuple[int, ...], max_batch: int,
                    requests_per_client: int, log_dir: Path) -> list[dict]:
    argv = python_module("archivetag.cli", "serve", "siglip", "--models", str(models),
                         "--max-batch-size", str(max_batch), "--max-queue-size", "256")
    rows = []
    with ServerProcess(argv, log_path=log_dir / f"siglip-batch{max_batch}.log") as server:
        server.wait_status(VIEW_TYPE_SERVICE, "SERVING", timeout=300)
        channel = grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 32 << 20)])
        stub = view_type_pb2_grpc.ViewTypeServiceStub(channel)

        def one(data: bytes) -> float:
            t = time.perf_counter()
            stub.Classify(view_type_pb2.ClassifyRequest(image=common_pb2.Image(data=data)), timeout=300)
            return time.perf_counter() - t

        one(images[0])  # warm
        for count in clients:
            work = [images[i % len(images)] for i in range(count * requests_per_client)]
            started = time.perf_counter()
            with ThreadPoolExecutor(count) as pool:
                latencies = list(pool.map(one, work))
            wall = time.perf_counter() - started
            result = summary(latencies, len(work), wall)
            rows.append({"backend": "service (onnxruntime fp32)", "clients": count, "max_batch_size": max_batch,
                         "batching": "on" if max_batch > 1 else "off", **result})
            print(f"  service batching {'on' if max_batch > 1 else 'off'}, {count:2} clients: "
                  f"{result['images_per_s']:.2f} images/s", file=sys.stderr)
        channel.close()
    return rows


# -- report -------------------------------------------------------------------------------------
def table(in_rows: list[dict], quality: dict, service_rows: list[dict], ratios: dict) -> str:
    lines = ["SigLIP vision tower, siglip-base-patch16-224 architecture (random weights), "
             f"{os.cpu_count()} CPU cores", "",
             f"{'backend':24} {'device':6} {'batch':>5} {'images/s':>9} {'p50 ms/call':>12} {'p99 ms/call':>12}"]
    for r in in_rows:
        lines.append(f"{r['backend']:24} {r['device']:6} {r['batch']:>5} {r['images_per_s']:>9.2f} "
                     f"{r['p50_ms']:>12.1f} {r['p99_ms']:>12.1f}")
    lines += ["", f"int8 vs fp32 on {quality['images']} images: embedding cosine min {quality['cosine_min']:.5f} "
                  f"mean {quality['cosine_mean']:.5f}, view type agreement {quality['view_type_agreement']:.0%}", "",
              f"{'through the service':28} {'clients':>7} {'images/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs in-process':>14}"]
    for r in service_rows:
        key = f"batching {r['batching']}, {r['clients']} clients"
        lines.append(f"{'batching ' + r['batching'] + ' (max ' + str(r['max_batch_size']) + ')':28} {r['clients']:>7} "
                     f"{r['images_per_s']:>9.2f} {r['p50_ms']:>8.0f} {r['p99_ms']:>8.0f} {ratios.get(key, 0):>13.0%}")
    lines.append("(vs in-process: the service's images/s over onnxruntime fp32 in-process at the batch it can form: "
                 "8 for 16 clients with batching on, else 1; JPEG 640x480 requests, decoding included)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and requests")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "archivetag-siglip-bench")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "siglip.json")
    args = parser.parse_args(argv)

    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # load reports about the unused text tower
    transformers_logging.disable_progress_bar()
    started = time.monotonic()
    args.workdir.mkdir(parents=True, exist_ok=True)
    models = full_size_export(args.workdir)
    manifest = read_json(models / "siglip" / layout.MANIFEST)
    preprocess = Preprocessor(manifest["image"])
    images = photos(16)
    pixels = np.stack([preprocess(image) for image in images])

    print("in-process ...", file=sys.stderr)
    in_rows, quality = in_process(models, pixels, args.quick)
    print("through the service ...", file=sys.stderr)
    encoded = [jpeg(image) for image in images]
    per_client = 2 if args.quick else 4
    service_rows = []
    for max_batch in (8, 1):
        service_rows += through_service(models, encoded, (1, 16), max_batch, per_client, args.workdir)

    in_process_ips = {(r["backend"], r["batch"]): r["images_per_s"] for r in in_rows}
    ratios = {}
    for r in service_rows:
        # The same backend in-process at the batch the server can form: min(clients, max batch size).
        reference = in_process_ips[("onnxruntime fp32", 8 if r["batching"] == "on" and r["clients"] > 1 else 1)]
        ratios[f"batching {r['batching']}, {r['clients']} clients"] = r["images_per_s"] / reference
    report = table(in_rows, quality, service_rows, ratios)
    print(report)
    import onnxruntime
    import torch

    result = {
        "model": "siglip-base-patch16-224 architecture, random weights",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "onnxruntime": onnxruntime.__version__, "torch_threads": torch.get_num_threads()},
        "quick": args.quick,
        "in_process": in_rows,
        "int8_vs_fp32": quality,
        "service": service_rows,
        "service_share_of_in_process": ratios,
        "seconds": time.monotonic() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten {args.out} ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
