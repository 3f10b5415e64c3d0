"""Write the tags where archives keep them: XMP sidecars, the photos' own metadata, CSV, JSON lines.

    archivetag export --xmp [PATH...]          a sidecar per photo (photo.jpg.xmp; --sidecar-name photo.xmp)
    archivetag export --embed [PATH...]        into the photo files themselves (JPEG, TIFF, PNG, WebP, HEIC, GIF)
    archivetag export --csv FILE | --jsonl FILE   for spreadsheets and catalogue imports ('-': stdout)

Over the whole results database, or the photos at or under the paths given. Keywords go to dc:subject
and lr:hierarchicalSubject (ROOT|tags|staircase, ROOT|view type|interior), the caption to IPTC's alt
text (and to dc:description only while that is empty), the text read in the photo to IPTC's extended
description; every machine tag keeps its model, revision and confidence in the archivetag XMP
namespace. A person's keywords, descriptions, ratings, labels and everything else stay; a keyword a
person removed stays removed. Resumable and idempotent: a file that already holds this export is not
written again. Details: docs/metadata.md.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from archivetag.bulk import DB_OPTION, shown
from archivetag.export.records import PhotoRecord, Selection, select
from archivetag.results import ResultStore, StoreError, default_db_path
from archivetag.runtime.settings import Option, OptionGroup, parse_bool

SIDECAR_NAMES = ("photo.jpg.xmp", "photo.xmp")
EXPORT_OPTIONS = OptionGroup("export", (
    DB_OPTION,
    Option("min_confidence", 0.0, "Leave out tags (and the view type) whose confidence is below this (0 to 1).",
           float),
    Option("sidecar_name", "photo.jpg.xmp", "How a sidecar is named: 'photo.jpg.xmp' (the photo's name + .xmp: "
           "digiKam, darktable) or 'photo.xmp' (the extension replaced: Lightroom, Bridge, Capture One); Immich "
           "reads both. Which tool reads which: docs/metadata.md.", choices=SIDECAR_NAMES),
    Option("hierarchy_root", "archivetag", "The first level of the hierarchical keywords (lr:hierarchicalSubject): "
           "ROOT|tags|staircase, ROOT|view type|interior; empty: no root level.", str),
    Option("description", "fill-empty", "Whether the caption may go to dc:description (the description most "
           "tools show) while that is empty: 'fill-empty', or 'never'. A person's description is never replaced.",
           choices=("fill-empty", "never")),
    Option("include_smoke", False, "Also export results of smoke models (random weights, meaningless tags); "
           "left out by default so they never reach a catalogue.", parse_bool),
))
OPTION_GROUPS = [EXPORT_OPTIONS]
# exiftool writes XMP into these (`exiftool -listwf`); BMP has no place for it: use --xmp.
# Photos whose files are read in one exiftool call (each then written on its own).
BATCH = 32
EMBEDDABLE = {".jpg", ".jpeg", ".jpe", ".tif", ".tiff", ".png", ".webp", ".heic", ".heif", ".gif"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                        help="photos and folders to export (default: every photo in the database)")
    parser.add_argument("--xmp", action="store_true", help="write an XMP sidecar beside each photo")
    parser.add_argument("--embed", action="store_true", help="write into the photo files themselves")
    parser.add_argument("--csv", metavar="FILE", help="write one CSV row per photo ('-': stdout)")
    parser.add_argument("--jsonl", metavar="FILE", help="write one JSON object per line and photo ('-': stdout)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


class CannotExport(Exception):
    """The export cannot start; the message says why (exit code 2)."""


@dataclass
class Tally:
    written: int = 0
    unchanged: int = 0

    def __str__(self) -> str:
        return f"{self.written} written, {self.unchanged} unchanged"


@dataclass
class Summary:
    photos: int = 0
    sidecars: Tally = field(default_factory=Tally)
    embedded: Tally = field(default_factory=Tally)
    read_only: int = 0
    missing: int = 0
    failed: int = 0

    @property
    def problems(self) -> int:
        return self.read_only + self.missing + self.failed


def sidecar_path(photo: Path, naming: str) -> Path:
    return photo.with_name(photo.name + ".xmp") if naming == "photo.jpg.xmp" else photo.with_suffix(".xmp")


def sidecar_clash(photo: Path, sidecar: Path) -> str:
    """For photo.xmp naming: another file with the photo's stem owns that sidecar too (photo.CR2 beside
    photo.jpg: Lightroom's photo.xmp belongs to the raw). '' when there is none."""
    try:
        others = [p.name for p in photo.parent.glob(glob_escape(photo.stem) + ".*")
                  if p.name != photo.name and p.suffix.lower() != ".xmp" and not p.name.startswith(".")]
    except OSError:
        return ""
    if not others:
        return ""
    return (f"{sidecar.name} would also be the sidecar of {', '.join(sorted(others))}: not written "
            "(--sidecar-name photo.jpg.xmp gives each file its own)")


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def open_store(db: Path | None) -> ResultStore:
    path = Path(db or default_db_path())
    if not path.exists():
        raise CannotExport(f"no results database at {path}: tag photos first (`archivetag tag PATH --db {path}`)")
    try:
        return ResultStore(path)
    except StoreError as exc:
        raise CannotExport(str(exc)) from None


@dataclass
class Job:
    kind: str                   # "sidecar" or "embedded"
    target: Path
    seed: Path | None           # for a sidecar: the photo, whose XMP a new sidecar starts from
    record: PhotoRecord


def jobs_for(record: PhotoRecord, args: argparse.Namespace, summary: Summary, say) -> list[Job]:
    """The writes one photo needs; what cannot be written is said and counted here."""
    from archivetag.export import xmp

    photo = record.path
    if not photo.is_file():
        summary.missing += 1
        say(f"{shown(photo)}: no longer there (moved or deleted since it was tagged): skipped")
        return []
    if b"\n" in bytes(photo):
        summary.failed += 1
        say(f"{shown(photo)}: a file name with a line break cannot be handed to exiftool: skipped")
        return []
    jobs: list[Job] = []
    if args.xmp:
        sidecar = sidecar_path(photo, args.sidecar_name)
        clash = sidecar_clash(photo, sidecar) if args.sidecar_name == "photo.xmp" else ""
        if clash:
            summary.failed += 1
            say(f"{shown(photo)}: {clash}")
        else:
            jobs.append(Job("sidecar", sidecar, photo, record))
    if args.embed:
        if photo.suffix.lower() in EMBEDDABLE:
            jobs.append(Job("embedded", photo, None, record))
        else:
            summary.failed += 1
            say(f"{shown(photo)}: {photo.suffix or 'this format'} files cannot hold XMP: not embedded (--xmp writes "
                "a sidecar)")
    writable = []
    for job in jobs:
        reason = xmp.read_only_reason(job.target, must_exist=job.kind == "embedded")
        if reason:
            summary.read_only += 1
            say(f"{shown(job.target)}: {reason}: skipped, nothing written")
        else:
            writable.append(job)
    return writable


def run_jobs(tool, jobs: list[Job], conventions, summary: Summary, say) -> None:
    """Write a batch of jobs: what their files hold read in one exiftool call, then each merged and written."""
    from archivetag.export import xmp

    sources = [xmp.source_of(job.target, job.seed) for job in jobs]
    to_read = [source for source in sources if source is not None]
    read = dict(zip(to_read, tool.read_many(to_read)))
    for job, source in zip(jobs, sources):
        current = read.get(source, {}) if source is not None else {}
        tally = summary.sidecars if job.kind == "sidecar" else summary.embedded
        try:
            if isinstance(current, xmp.ExportError):
                raise current
            changed = xmp.write(tool, job.target, job.record, conventions, seed_from=job.seed, current=current)
        except xmp.ExportError as exc:
            summary.failed += 1
            say(f"{shown(job.target)}: {exc}")
            continue
        if changed:
            tally.written += 1
        else:
            tally.unchanged += 1


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except CannotExport as exc:
        print(f"archivetag export: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from archivetag.export import tables, xmp

    if not (args.xmp or args.embed or args.csv or args.jsonl):
        raise CannotExport("say what to write: --xmp (sidecars), --embed (into the photos), --csv FILE, --jsonl FILE")
    if not 0.0 <= args.min_confidence <= 1.0:
        raise CannotExport(f"--min-confidence must be between 0 and 1, not {args.min_confidence}")
    if args.csv == "-" and args.jsonl == "-":
        raise CannotExport("--csv and --jsonl cannot both go to stdout")
    conventions = xmp.Conventions(args.min_confidence, args.hierarchy_root.strip(), args.description)
    store = open_store(args.db)
    try:
        selection: Selection = select(store.db, args.paths or None, args.include_smoke)
    finally:
        store.close()
    for path in selection.not_in_store:
        print(f"archivetag export: {shown(path)}: no photo at or under it is in {store.path}", file=sys.stderr)
    if selection.smoke:
        print(f"archivetag export: {selection.smoke} results of smoke models (random weights) left out "
              "(--include-smoke exports them)", file=sys.stderr)
    records = selection.records
    if not records:
        raise CannotExport(f"nothing to export from {store.path}"
                           + (f" ({selection.not_ok} photos have no good result)" if selection.not_ok else ""))
    status = 1 if selection.not_in_store else 0
    for destination, render in ((args.csv, tables.render_csv), (args.jsonl, tables.render_jsonl)):
        if not destination:
            continue
        try:
            wrote = tables.write_text(destination, render(records, conventions))
        except OSError as exc:
            raise CannotExport(f"cannot write {destination}: {exc.strerror or exc}") from None
        if destination != "-":
            print(f"{destination}: {len(records)} photos" + ("" if wrote else " (unchanged)"), file=sys.stderr)
    if not (args.xmp or args.embed):
        return status
    summary = Summary(photos=len(records))
    try:
        tool = xmp.ExifTool()
    except xmp.ExifToolMissing as exc:
        raise CannotExport(str(exc)) from None
    progress = tqdm(total=len(records), unit="photo", desc="exporting", disable=args.no_progress, file=sys.stderr,
                    dynamic_ncols=True)

    def say(message: str) -> None:
        progress.write(f"archivetag export: {message}", file=sys.stderr)

    try:
        for first in range(0, len(records), BATCH):
            batch = records[first:first + BATCH]
            run_jobs(tool, [job for record in batch for job in jobs_for(record, args, summary, say)], conventions,
                     summary, say)
            progress.update(len(batch))
    except KeyboardInterrupt:
        progress.close()
        print("interrupted: every file is either as before or completely written; run the same command again "
              "to finish", file=sys.stderr)
        return 130
    except xmp.ExifToolStopped as exc:
        progress.close()
        print(f"archivetag export: {exc}: every file is either as before or completely written; run the same "
              "command again to finish", file=sys.stderr)
        return 2
    finally:
        progress.close()
        tool.close()
    parts = [f"{summary.photos} photos"]
    if args.xmp:
        parts.append(f"sidecars {summary.sidecars}")
    if args.embed:
        parts.append(f"embedded {summary.embedded}")
    parts.append(f"{summary.read_only} read-only, {summary.missing} missing, {summary.failed} failed")
    if selection.not_ok:
        parts.append(f"{selection.not_ok} without a good result left out")
    print("; ".join(parts) + f" (exiftool {tool.version})", file=sys.stderr)
    return 1 if summary.problems else status
