"""`archivetag models convert-florence SRC DST`: original-layout checkpoint → native layout, offline."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from archivetag.runtime.model_files import make_readable


def _run_convert(args: argparse.Namespace) -> int:
    from archivetag_florence.convert import ConversionError, convert

    if args.dst.exists() and any(args.dst.iterdir()) and not args.force:
        print(f"{args.dst} is not empty; --force writes into it anyway", file=sys.stderr)
        return 2
    try:
        convert(args.src, args.dst)
        make_readable(args.dst)
    except ConversionError as exc:
        print(f"convert-florence: {exc}", file=sys.stderr)
        return 1
    print(f"native Florence-2 written to {args.dst}; serve it from <models>/florence", file=sys.stderr)
    return 0


def add_commands(subparsers) -> None:
    convert = subparsers.add_parser(
        "convert-florence",
        help="convert an original-layout Florence-2 (microsoft/Florence-2-*) to the native layout, offline",
    )
    convert.add_argument("src", type=Path, metavar="SRC", help="folder of the original checkpoint")
    convert.add_argument("dst", type=Path, metavar="DST", help="folder to write the native checkpoint into")
    convert.add_argument("--force", action="store_true", help="write into a non-empty DST")
    convert.set_defaults(func=_run_convert)


def build_pulled(plan, build: Path, tag_data: Path) -> None:
    """`models pull`: the downloaded native checkpoint as it is (linked, not copied), and the RAM++ tag list
    as its tag vocabulary, so both taggers speak the same tags."""
    from archivetag.pull import TAG_LIST, link_or_copy
    from archivetag_florence.layout import VOCABULARY_FILE

    for file in plan.files:
        (build / file.name).parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(plan.folder / file.name, build / file.name)
    shutil.copyfile(tag_data / TAG_LIST, build / VOCABULARY_FILE)
