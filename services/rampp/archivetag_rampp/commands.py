"""`archivetag models convert-rampp` and `random-rampp`: RAM++ checkpoints in and out."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from archivetag.runtime.model_files import make_readable
from archivetag_rampp.layout import CONVERTED


def convert_checkpoint_file(pth: Path, folder: Path) -> Path:
    """The official .pth → <folder>/model.safetensors, strictly checked. Used by `models pull` too."""
    from archivetag.runtime.model_card import ModelCard
    from archivetag_rampp.checkpoint import convert
    from archivetag_rampp.layout import OFFICIAL_NAME

    out = Path(folder) / CONVERTED
    started = time.monotonic()
    ignored = convert(Path(pth), out)
    ModelCard(family="rampp", name=OFFICIAL_NAME, source=f"converted from {pth}").write(folder)
    make_readable(Path(folder))
    print(f"converted {pth} → {out} in {time.monotonic() - started:.1f}s"
          + (f"; ignored {len(ignored)} unused key(s)" if ignored else ""), file=sys.stderr)
    return out


def _run_convert(args: argparse.Namespace) -> int:
    from archivetag.runtime.errors import ModelLoadError

    try:
        convert_checkpoint_file(args.pth, args.out)
    except ModelLoadError as exc:
        print(f"convert-rampp: {exc}", file=sys.stderr)
        return 1
    return 0


def _run_random(args: argparse.Namespace) -> int:
    from archivetag_rampp.model import FULL, tiny_config
    from archivetag_rampp.random_checkpoint import random_model, write_official_checkpoint

    config = FULL if args.size == "full" else tiny_config(args.tags)
    write_official_checkpoint(random_model(config, seed=args.seed), args.out, extra_entries=args.extra_entries)
    print(f"wrote a random {args.size} RAM++ checkpoint (official layout) to {args.out}", file=sys.stderr)
    return 0


def add_commands(subparsers) -> None:
    convert = subparsers.add_parser(
        "convert-rampp", help="convert the official RAM++ .pth once to a model-only safetensors file that loads fast")
    convert.add_argument("pth", type=Path, help="ram_plus_swin_large_14m.pth (official layout)")
    convert.add_argument("out", type=Path, help="folder to write model.safetensors into (e.g. <models>/rampp)")
    convert.set_defaults(func=_run_convert)

    random = subparsers.add_parser(
        "random-rampp", help="write a randomly initialised RAM++ checkpoint in the official layout (tests, benchmarks)")
    random.add_argument("out", type=Path, help="the .pth file to write")
    random.add_argument("--size", choices=("full", "tiny"), default="full")
    random.add_argument("--tags", type=int, default=4585, help="tags of a tiny model")
    random.add_argument("--seed", type=int, default=0)
    random.add_argument("--extra-entries", action="store_true",
                        help="also write training entries (optimizer, config, epoch) that loaders must ignore")
    random.set_defaults(func=_run_random)


def build_pulled(plan, build: Path, tag_data: Path) -> None:
    """`models pull`: the downloaded official checkpoint converted, with the tag list and thresholds."""
    from archivetag.pull import copy_tag_data

    convert_checkpoint_file(plan.folder / plan.files[0].name, build)
    copy_tag_data(tag_data, build)
