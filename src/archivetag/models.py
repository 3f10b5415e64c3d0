"""`archivetag models`: models in and out.

    archivetag models smoke     small random models of the real architectures, offline
    archivetag models pull      the real weights (needs network)
    + each service's own commands (export-siglip, convert-florence, convert-rampp, ...)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from archivetag.pull import OPTION_GROUPS as PULL_OPTION_GROUPS, SIGLIP_REPO
from archivetag.runtime.options import MODELS_OPTION
from archivetag.runtime.registry import MODEL_NAMES, MODELS, server
from archivetag.runtime.settings import OptionGroup, add_option_groups

SERVICES = MODEL_NAMES


def write_smoke_models(models: Path, which: tuple[str, ...] = SERVICES, tag_list: Path | None = None,
                       thresholds: Path | None = None, overwrite: bool = False) -> list[str]:
    """Write each missing smoke model into <models>/<name>; returns the names written."""
    written = []
    for name in which:
        target = models / name
        if target.exists() and any(target.iterdir()) and not overwrite:
            continue
        smoke = server(name).module("smoke")
        target.mkdir(parents=True, exist_ok=True)
        print(f"smoke model: {name} → {target}", file=sys.stderr)
        smoke.write_smoke_model(target, tag_list=tag_list, thresholds=thresholds)
        written.append(name)
    return written


def _run_smoke(args: argparse.Namespace) -> int:
    written = write_smoke_models(args.models, tuple(args.only or SERVICES), args.tag_list, args.thresholds, args.force)
    skipped = [n for n in (args.only or SERVICES) if n not in written]
    if skipped:
        print(f"kept existing models: {', '.join(skipped)} (--force replaces them)", file=sys.stderr)
    print(f"smoke models ready in {args.models}: random weights, meaningless tags; every answer says 'smoke'",
          file=sys.stderr)
    return 0


def _run_pull(args: argparse.Namespace) -> int:
    from archivetag.pull import pull

    return pull(args.models, list(args.only or SERVICES), args.florence_variant, args.siglip_model,
                args.revision, args.rampp_tag_list_url, args.keep_free_mb)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="models_command", required=True, metavar="MODELS_COMMAND")
    models_group = [OptionGroup("models", (MODELS_OPTION,))]

    smoke = commands.add_parser("smoke", help="build small random-weight models of the real architectures (offline)")
    add_option_groups(smoke, models_group)
    smoke.add_argument("--only", nargs="+", choices=SERVICES, help="only these models")
    smoke.add_argument("--tag-list", type=Path, help="tag vocabulary (one tag per line; default: a built-in word list)")
    smoke.add_argument("--thresholds", type=Path, help="per-tag thresholds for --tag-list (RAM++ format)")
    smoke.add_argument("--force", action="store_true", help="replace existing models")
    smoke.set_defaults(func=_run_smoke)

    pull = commands.add_parser(
        "pull", help="download the real weights into the models directory (needs network; HF_ENDPOINT for a mirror)")
    add_option_groups(pull, PULL_OPTION_GROUPS)
    pull.add_argument("--only", nargs="+", choices=SERVICES, help="only these models")
    pull.add_argument("--florence-variant", choices=("base", "large"), default="base", help="Florence-2 size")
    pull.add_argument("--siglip-model", default=SIGLIP_REPO, help="SigLIP checkpoint to export")
    pull.set_defaults(func=_run_pull)

    # Each model's own commands (convert-florence, convert-rampp, export-siglip, ...): their modules
    # import nothing heavy until a command runs.
    for spec in MODELS:
        spec.module("commands").add_commands(commands)
