"""The CPU precisions of the torch taggers, side by side in one run: speed and agreement with float32.

    python benchmarks/cpu_precision_bench.py [--photos 8] [--tokens 64] [--threads 2] [--only florence|rampp]

Full-size architectures with random weights (Florence-2-base speaking words as the smoke model does, RAM++
Swin-L/384), loaded through the services' own backends (`--dtype float32|bfloat16|int8`). Per precision:
- Florence-2: seconds per photo for the vision tower and for a caption of exactly --tokens new tokens, greedy
  and with 3 beams; agreement with float32 (tests/support/precision.py): vision-tower cosine, the share of the
  float32 greedy caption's next tokens it ranks first too (teacher-forced), identical greedy captions, and tags;
- RAM++: seconds per photo, tag-set Jaccard and the largest probability difference.
Prints a table; writes benchmarks/results/cpu_precision.json. docs/models/cpu.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.support.precision import (  # noqa: E402 - the one agreement measure, shared with the tests
    backend,
    florence_agreement,
    rampp_agreement,
    sample_photos,
)
from timing import median_seconds  # noqa: E402 - benchmarks/timing.py, beside this script

from archivetag.v1 import tagger_pb2  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "cpu_precision.json"
PRECISIONS = ("float32", "bfloat16", "int8")


def florence_speed(florence, photo, tokens: int, repeats: int) -> dict:
    item = florence.prepare(photo, tagger_pb2.TagRequest())
    florence.model.generation_config.min_new_tokens = tokens  # every caption exactly `tokens` long
    florence.max_new_tokens = tokens
    with torch.inference_mode():
        vision = median_seconds(lambda: florence.encode([item.pixels]), repeats)
        features = florence.encode([item.pixels])
        captions = {}
        for beams in (1, 3):
            florence.num_beams = beams
            captions[beams] = median_seconds(lambda: florence.generate([], features=features), repeats)
    florence.num_beams = 1
    florence.model.generation_config.min_new_tokens = None
    return {"vision_s": vision, "caption_greedy_s": captions[1], "caption_3_beams_s": captions[3],
            "photo_greedy_s": vision + captions[1], "photo_3_beams_s": vision + captions[3]}


def bench_florence(workdir: Path, photos, tokens: int, repeats: int, threads: str) -> list[dict]:
    from archivetag_florence.smoke import write_full_size_model

    write_full_size_model(workdir / "florence", "base")
    args = ("--florence-num-beams", "1", "--florence-max-new-tokens", str(tokens), "--torch-threads", threads)
    reference = backend("florence", workdir, "float32", *args)
    rows = []
    for precision in PRECISIONS:
        florence = reference if precision == "float32" else backend("florence", workdir, precision, *args)
        row = {"model": "florence-2-base", "precision": precision,
               **florence_speed(florence, photos[0], tokens, repeats)}
        if precision != "float32":
            florence.max_new_tokens = reference.max_new_tokens = tokens
            row["agreement"] = florence_agreement(reference, florence, photos)
            del florence
        rows.append(row)
        print(f"  florence {precision}: {json.dumps(row)}", file=sys.stderr, flush=True)
    return rows


def bench_rampp(workdir: Path, photos, repeats: int, threads: str) -> list[dict]:
    from archivetag_rampp.smoke import write_full_size_model

    write_full_size_model(workdir / "rampp")
    reference = backend("rampp", workdir, "float32", "--torch-threads", threads)
    rows = []
    for precision in PRECISIONS:
        rampp = reference if precision == "float32" else backend("rampp", workdir, precision, "--torch-threads", threads)
        item = rampp.prepare(photos[0], tagger_pb2.TagRequest())
        row = {"model": "ram++ swin-l/384", "precision": precision,
               "photo_s": median_seconds(lambda: rampp.infer_batch([item], lambda: False), repeats)}
        if precision != "float32":
            row["agreement"] = rampp_agreement(reference, rampp, photos)
            del rampp
        rows.append(row)
        print(f"  rampp {precision}: {json.dumps(row)}", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | precision | s/photo greedy | s/photo 3 beams | vision s | agreement with float32 |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        a = r.get("agreement")
        if r["model"].startswith("florence"):
            said = ("reference" if a is None else
                    f"vision cos {a['vision_cosine_min']:.4f}, next token {a['teacher_forced_top1']:.1%}, "
                    f"{a['identical_captions']}/{a['photos']} captions identical, tag Jaccard {a['tag_jaccard_mean']:.2f}")
            lines.append(f"| {r['model']} | {r['precision']} | {r['photo_greedy_s']:.2f} | {r['photo_3_beams_s']:.2f} | "
                         f"{r['vision_s']:.2f} | {said} |")
        else:
            said = ("reference" if a is None else
                    f"tag Jaccard min {a['tag_jaccard_min']:.3f} (mean {a['tag_jaccard_mean']:.3f}), "
                    f"max probability diff {a['probability_max_abs_diff']:.3f}")
            lines.append(f"| {r['model']} | {r['precision']} | {r['photo_s']:.2f} | | | {said} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=8, help="photos for the agreement (the samples, then synthetic)")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per caption (the service's default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: the library's default")
    parser.add_argument("--only", choices=("florence", "rampp"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    photos = sample_photos(args.photos)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="archivetag-cpu-precision-") as tmp:
        if args.only in (None, "florence"):
            rows += bench_florence(Path(tmp), photos, args.tokens, args.repeats, str(args.threads))
        if args.only in (None, "rampp"):
            rows += bench_rampp(Path(tmp), photos, args.repeats, str(args.threads))
    print(f"\nCPU precisions, full-size random weights, {torch.get_num_threads()} threads, "
          f"{args.tokens} new tokens per caption, agreement on {len(photos)} photos\n")
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(
        machine=platform.machine(), processor=platform.processor(), torch=torch.__version__,
        threads=torch.get_num_threads(), tokens=args.tokens, photos=len(photos), rows=rows), indent=2))
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
