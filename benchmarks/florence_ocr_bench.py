"""What a request's OCR option costs: seconds per image through the Florence-2 backend (prepare + infer_batch,
the service's own path) for the caption alone, the caption + <OCR>, and the caption + <OCR_WITH_REGION>.

    python benchmarks/florence_ocr_bench.py [--quick] [--tokens 20] [--repeats 3] [--models DIR]

Two models: the smoke Florence-2 (tiny: the pipeline's own overhead) and the full-size base architecture
with random weights swapped into the same backend (no download). Random weights do not stop at an
end token, so every pass generates its whole --tokens budget (caption and OCR alike): the numbers are
for a fixed number of tokens per pass. A real OCR answer is as long as the text (plus 8 location tokens
per region with regions). Prints a table; writes benchmarks/results/florence_ocr.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from florence_bench import full_config  # benchmarks/florence_bench.py, beside this script
from timing import median_seconds, models_or_smoke, write_results

RESULTS = Path(__file__).resolve().parent / "results" / "florence_ocr.json"
MODES = {"caption": 0, "caption + <OCR>": 1, "caption + <OCR_WITH_REGION>": 2}


def backend_for(models: Path, tokens: int, beams: int, size: str):
    from archivetag.cli import parse_serve_settings
    from archivetag_florence.backend import create_backend

    settings = parse_serve_settings("florence", "--models", str(models), "--florence-max-new-tokens", str(tokens),
                                    "--florence-ocr-max-new-tokens", str(tokens), "--florence-num-beams", str(beams),
                                    "--florence-min-confidence", "0")
    backend = create_backend(settings)
    backend.load()
    if size == "base":
        from transformers import Florence2ForConditionalGeneration

        torch.manual_seed(0)
        model = Florence2ForConditionalGeneration(full_config("base")).eval()
        model.generation_config = backend.model.generation_config
        backend.model = model
    return backend


def bench(models: Path, size: str, beams: int, tokens: int, repeats: int) -> list[dict]:
    from archivetag.v1 import tagger_pb2
    from PIL import Image, ImageDraw, ImageFont

    backend = backend_for(models, tokens, beams, size)
    photo = Image.new("RGB", (1024, 768), (225, 215, 195))
    ImageDraw.Draw(photo).text((80, 300), "ST MARY'S HOSPITAL 1911", fill=(30, 25, 20), font=ImageFont.load_default(size=64))
    rows = []
    for name, mode in MODES.items():
        item = backend.prepare(photo, tagger_pb2.TagRequest(ocr=mode))
        seconds = median_seconds(lambda: backend.infer_batch([item], lambda: False), repeats)
        rows.append(dict(model=size, beams=beams, mode=name, seconds_per_image=seconds))
        print(f"  {size} beams {beams} {name}: {seconds:.3f} s", file=sys.stderr)
    base = rows[0]["seconds_per_image"]
    for row in rows:
        row["relative_to_caption"] = row["seconds_per_image"] / base
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="beams 1 only, 1 repeat")
    parser.add_argument("--tokens", type=int, default=20, help="tokens per generate pass (caption and OCR)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", type=Path, default=None, help="a models folder with florence/ (default: smoke)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    beams_list = [1] if args.quick else [1, 3]
    repeats = 1 if args.quick else args.repeats
    with tempfile.TemporaryDirectory() as scratch:
        models = models_or_smoke(args.models, Path(scratch))
        rows = [row for size in ("smoke", "base") for beams in beams_list
                for row in bench(models, size, beams, args.tokens, repeats)]

    print(f"\nFlorence-2 backend, random weights, cpu float32, {args.tokens} tokens per pass, batch 1, "
          f"{torch.get_num_threads()} threads, median of {repeats}\n")
    print("| model | beams | asked | s/image | × caption alone |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['beams']} | {row['mode']} | {row['seconds_per_image']:.2f} | "
              f"{row['relative_to_caption']:.2f} |")
    write_results(args.output, dict(tokens=args.tokens, repeats=repeats, threads=torch.get_num_threads(),
                                    torch=torch.__version__, rows=rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
