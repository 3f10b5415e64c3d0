"""RAM++ benchmark: full-size swin_l/384 with random weights, on this machine.

Side by side in one run:
  - load time and peak memory: the official-layout .pth (torch.load, mmap) vs the converted
    model-only safetensors, each loaded in a fresh subprocess so peak RSS is its own (also
    shown above the RSS of the imports alone: the CUDA build of torch maps ~0.9 GiB on import);
  - images/s at batch 1 and batch 4 (fp32 on CPU, the service's dtype there);
  - the cost split: Swin encoder vs description re-weighting + tagging head, and the head on
    a 100-tag vocabulary subset (tags are independent queries).

    python benchmarks/rampp_bench.py [--repeats 3] [--threads 0] [--out benchmarks/results/rampp.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

from archivetag_rampp.checkpoint import convert, load_model  # noqa: E402
from archivetag_rampp.model import FULL  # noqa: E402
from archivetag_rampp.preprocess import to_pixels  # noqa: E402
from archivetag_rampp.random_checkpoint import calibration_images, random_model, write_official_checkpoint  # noqa: E402
from timing import median_seconds  # noqa: E402 - benchmarks/timing.py, beside this script

LOAD_PROBE = """
import re, sys, time
from pathlib import Path
import torch
from archivetag_rampp.checkpoint import load_model
# VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's peak (the parent holds a model).
peak = lambda: int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024
imported, baseline = time.perf_counter(), peak()
model, _, _ = load_model(Path({path!r}))
loaded = time.perf_counter()
with torch.no_grad():  # read every weight (mmap-backed tensors are paged in only when used)
    for p in model.parameters():
        p.sum()
touched = time.perf_counter()
print(loaded - imported, touched - imported, baseline, peak())
"""


def load_in_subprocess(path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", LOAD_PROBE.format(path=str(path))],
                         capture_output=True, text=True, check=True)
    load_s, ready_s, baseline_mib, peak_mib = map(float, out.stdout.split())
    return {"file": path.name, "size_mib": path.stat().st_size / 2**20, "load_s": load_s,
            "load_and_read_s": ready_s, "rss_after_imports_mib": baseline_mib, "peak_rss_mib": peak_mib,
            "peak_rss_above_imports_mib": peak_mib - baseline_mib}



@torch.inference_mode()
def speed(model, repeats: int) -> list[dict]:
    images = calibration_images(FULL.image_size)
    rows = []
    for batch in (1, 4):
        pixels = to_pixels(images[:batch], FULL.image_size)
        total = median_seconds(lambda: model(pixels), repeats)
        encoded = model.encode_image(pixels)
        encoder = median_seconds(lambda: model.encode_image(pixels), repeats)
        head = median_seconds(lambda: model.tag_logits(encoded), repeats)
        subset = torch.arange(0, FULL.num_tags, FULL.num_tags // 100)[:100]
        head_100 = median_seconds(lambda: model.tag_logits(encoded, subset), repeats)
        rows.append({
            "batch": batch, "seconds_per_batch": total, "images_per_s": batch / total,
            "encoder_s": encoder, "head_s": head, "head_share": head / (encoder + head), "head_100_tags_s": head_100,
        })
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: default")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "rampp.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        pth, converted = Path(tmp) / "ram_plus_swin_large_14m.pth", Path(tmp) / "model.safetensors"
        print("writing a full-size random checkpoint (official layout) ...", file=sys.stderr)
        write_official_checkpoint(random_model(FULL), pth, extra_entries=True)
        started = time.perf_counter()
        convert(pth, converted)
        convert_s = time.perf_counter() - started
        loads = [load_in_subprocess(pth), load_in_subprocess(converted)]
        model, _, _ = load_model(converted)
        rows = speed(model, args.repeats)

    params = sum(p.numel() for p in model.parameters())
    result = {"machine": platform.platform(), "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
              "parameters": params, "convert_s": convert_s, "loads": loads, "speed": rows}
    print(f"\nRAM++ swin_l/384, random weights, {params / 1e6:.1f} M parameters, CPU fp32, "
          f"{torch.get_num_threads()} threads; convert .pth → safetensors {convert_s:.1f} s\n")
    print(f"{'file':<34}{'MiB':>8}{'load s':>9}{'+read s':>9}{'peak RSS MiB':>14}{'above imports':>15}")
    for row in loads:
        print(f"{row['file']:<34}{row['size_mib']:>8.0f}{row['load_s']:>9.2f}{row['load_and_read_s']:>9.2f}"
              f"{row['peak_rss_mib']:>14.0f}{row['peak_rss_above_imports_mib']:>15.0f}")
    print(f"\n{'batch':>5}{'s/batch':>9}{'img/s':>8}{'encoder s':>11}{'head s':>8}{'head %':>8}{'head@100 tags s':>17}")
    for row in rows:
        print(f"{row['batch']:>5}{row['seconds_per_batch']:>9.2f}{row['images_per_s']:>8.2f}{row['encoder_s']:>11.2f}"
              f"{row['head_s']:>8.2f}{100 * row['head_share']:>7.0f}%{row['head_100_tags_s']:>17.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
