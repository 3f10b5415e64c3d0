"""`archivetag export` speed: photos/s writing XMP sidecars and embedding into the photos themselves.

The bundled sample photos (JPEG, PNG, WebP, HEIC; 19-97 KB) are copied --copies times each into a
temporary folder and recorded in a fresh result store through the real store code (ResultStore.record,
as `archivetag tag` stores an answer: 20 tags, a caption, read text, the view type, two models). Then
the command itself runs (archivetag.cli.main, in this process) four times:

  sidecars       export --xmp: every sidecar new
  sidecars again export --xmp once more: nothing to write (each sidecar read and compared)
  embed          export --embed: every photo rewritten with its XMP (copy, exiftool edits, rename)
  embed again    export --embed once more: nothing to write

    python benchmarks/export_bench.py [--copies 50] [--out benchmarks/results/export.json]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from timing import write_results

from archivetag.cli import main
from archivetag.results import ResultStore
from archivetag.v1 import common_pb2, tagging_pb2

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "archivetag" / "samples"
WORDS = ("staircase", "hall", "window", "door", "ceiling", "column", "arch", "floor", "tile", "lamp", "bench",
         "wall", "brick", "roof", "facade", "balcony", "railing", "stairs", "corridor", "chair")


def answer(i: int) -> tagging_pb2.TagImagesResponse:
    response = tagging_pb2.TagImagesResponse(id=str(i))
    r = response.result
    r.tagger = "florence"
    r.caption = "A wide staircase in the entrance hall of a public building."
    for k, word in enumerate(WORDS):
        r.tags.add(name=word, confidence=0.95 - 0.04 * k, source_model="florence-community/Florence-2-base")
    r.view_type.name = "interior"
    r.view_type.confidence = 0.83
    r.models.add(family="florence", name="florence-community/Florence-2-base", revision="5ca5edf")
    r.models.add(family="siglip", name="google/siglip-base-patch16-224", revision="7fd15f0")
    r.ocr.status = common_pb2.OCR_STATUS_READ
    r.ocr.text = "ENTRANCE\nOpen 9-17"
    r.embedding.extend([1.0, 0.0])
    return response


def build(folder: Path, db: Path, copies: int) -> int:
    samples = sorted(p for p in SAMPLES.iterdir() if p.suffix != ".md")
    store = ResultStore(db)
    store.remember_models("bench", [])
    count = 0
    for c in range(copies):
        for sample in samples:
            photo = folder / f"{sample.stem}-{c:04}{sample.suffix}"
            shutil.copyfile(sample, photo)  # copies share a result (same content), each has its own files
            data = photo.read_bytes()
            store.record(photo, hashlib.sha256(data).hexdigest(), len(data), photo.stat().st_mtime, "bench",
                         answer(count))
            count += 1
    store.close()
    return count


def timed_export(db: Path, *args: str) -> tuple[float, str]:
    err = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stderr(err):
        code = main(["export", "--db", str(db), "--no-progress", *args])
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"export {' '.join(args)} failed ({code}): {err.getvalue()}")
    return seconds, err.getvalue().strip().splitlines()[-1]


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=50, help="copies of each of the 6 sample photos")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "export.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
        folder, db = Path(tmp) / "archive", Path(tmp) / "results.sqlite"
        folder.mkdir()
        photos = build(folder, db, args.copies)
        megabytes = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
        rows = []
        for label, flag in (("sidecars", "--xmp"), ("sidecars again", "--xmp"), ("embed", "--embed"),
                            ("embed again", "--embed")):
            seconds, summary = timed_export(db, flag)
            rows.append({"run": label, "photos": photos, "seconds": round(seconds, 2),
                         "photos_per_s": round(photos / seconds, 1), "summary": summary})
    exiftool = subprocess.run(["exiftool", "-ver"], capture_output=True, text=True).stdout.strip()
    print(f"{photos} photos ({megabytes:.1f} MB), exiftool {exiftool}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| run | photos | seconds | photos/s |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['run']} | {row['photos']} | {row['seconds']} | {row['photos_per_s']} |")
    write_results(args.out, {"photos": photos, "megabytes": round(megabytes, 1), "exiftool": exiftool,
                             "machine": {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 1),
                                         "platform": platform.platform()},
                             "runs": rows})


if __name__ == "__main__":
    main_bench()
