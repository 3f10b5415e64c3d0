"""Florence-2 cost on this machine: full-size base/large architectures, random weights, no download.

    python benchmarks/florence_bench.py [--quick] [--tokens 20] [--repeats 3] [--device cpu]

For each size: parameter count, time to load the saved checkpoint through the service's
loader, seconds per image for a fixed number of generated tokens (no early stop) at batch
1 and 4 with beams 1 and 3, and the vision tower's share. On a GPU (--device cuda) the same
in fp16 at batch 1, 8 and 16. Prints a table; writes benchmarks/results/florence.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from timing import median_seconds  # benchmarks/timing.py, beside this script

RESULTS = Path(__file__).resolve().parent / "results" / "florence.json"

# The full-size configs live with the smoke model writer (one declaration); re-exported for the other benchmarks.
from archivetag_florence.smoke import full_size_config as full_config  # noqa: E402


def bench_size(size: str, device: torch.device, dtype: torch.dtype, batches, beams_list, tokens: int, repeats: int) -> dict:
    from transformers import Florence2ForConditionalGeneration

    from archivetag_florence.loading import load_florence
    from archivetag_florence.smoke import build_tokenizer, smoke_processor

    from archivetag.bundled import smoke_vocabulary

    torch.manual_seed(0)
    model = Florence2ForConditionalGeneration(full_config(size)).eval()
    params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "florence"
        model.save_pretrained(folder)
        smoke_processor(build_tokenizer(sorted({w for t in smoke_vocabulary() for w in t.split()}))).save_pretrained(folder)
        del model
        started = time.perf_counter()
        loaded = load_florence(folder, device, dtype)
        load_seconds = time.perf_counter() - started
    model, processor = loaded.model, loaded.processor
    rows = []
    g = torch.Generator().manual_seed(1)
    from PIL import Image

    for batch in batches:
        images = [Image.fromarray((torch.rand(480, 640, 3, generator=g) * 255).to(torch.uint8).numpy()) for _ in range(batch)]
        inputs = processor(text=["<MORE_DETAILED_CAPTION>"] * batch, images=images, return_tensors="pt")
        inputs = {k: v.to(device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        with torch.inference_mode():
            vision = median_seconds(lambda: model.get_image_features(pixel_values=inputs["pixel_values"]), repeats)
            for beams in beams_list:
                def run():
                    model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, num_beams=beams,
                                   do_sample=False, output_scores=True, return_dict_in_generate=True)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                total = median_seconds(run, repeats)
                rows.append(dict(batch=batch, beams=beams, seconds_per_image=total / batch,
                                 vision_seconds_per_image=vision / batch, vision_share=vision / total))
                print(f"  {size} batch {batch} beams {beams}: {total / batch:.3f} s/image", file=sys.stderr)
    return dict(size=size, parameters=params, load_seconds=load_seconds, runs=rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="base only, batch 1, beams 1 and 3")
    parser.add_argument("--tokens", type=int, default=20, help="generated tokens per caption (fixed)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    sizes = ["base"] if args.quick else ["base", "large"]
    if device.type == "cuda":
        batches = [1, 8] if args.quick else [1, 8, 16]
    else:
        batches = [1] if args.quick else [1, 4]
    repeats = 1 if args.quick else args.repeats
    results = [bench_size(s, device, dtype, batches, [1, 3], args.tokens, repeats) for s in sizes]

    print(f"\nFlorence-2, random weights, {device.type} {str(dtype).removeprefix('torch.')}, "
          f"{args.tokens} new tokens, {torch.get_num_threads()} threads\n")
    print("| model | params | load s | batch | beams | s/image | vision s/image | vision share |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        for run in r["runs"]:
            print(f"| {r['size']} | {r['parameters'] / 1e6:.1f} M | {r['load_seconds']:.1f} | {run['batch']} | {run['beams']} | "
                  f"{run['seconds_per_image']:.2f} | {run['vision_seconds_per_image']:.2f} | {run['vision_share']:.0%} |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(dict(
        device=args.device, dtype=str(dtype), tokens=args.tokens, threads=torch.get_num_threads(),
        machine=platform.machine(), torch=torch.__version__, quick=args.quick, results=results,
    ), indent=2))
    print(f"\nwritten {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
