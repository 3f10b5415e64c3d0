"""`archivetag models`: models in and out.

    archivetag models smoke     small random models of the real architectures, offline
    archivetag models pull      the real weights (needs network)
    + each service's own commands (export-siglip, convert-florence, convert-rampp, ...)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from archivetag.pull import pull_option_groups
from archivetag.runtime import registry
from archivetag.runtime.model_files import make_readable
from archivetag.runtime.options import MODELS_OPTION
from archivetag.runtime.settings import OptionGroup, add_option_groups
from archivetag.runtime.specs import load


def write_smoke_models(models: Path, which: tuple[str, ...] | None = None, tag_list: Path | None = None,
                       thresholds: Path | None = None, overwrite: bool = False) -> list[str]:
    """Write each missing smoke model (default: of every installed model) into <models>/<name>;
    returns the names written."""
    written = []
    for name in which or registry.MODEL_NAMES:
        target = models / name
        if target.exists() and any(target.iterdir()) and not overwrite:
            continue
        spec = registry.server(name)
        if spec.smoke is None:
            raise SystemExit(f"{name} declares no smoke model")
        target.mkdir(parents=True, exist_ok=True)
        print(f"smoke model: {name} → {target}", file=sys.stderr)
        load(spec.smoke)(target, tag_list=tag_list, thresholds=thresholds)
        make_readable(target)  # the services run as another user (uid 10001 in the images)
        written.append(name)
    return written


def _run_smoke(args: argparse.Namespace) -> int:
    which = tuple(args.only or registry.MODEL_NAMES)
    written = write_smoke_models(args.models, which, args.tag_list, args.thresholds, args.force)
    skipped = [n for n in which if n not in written]
    if skipped:
        print(f"kept existing models: {', '.join(skipped)} (--force replaces them)", file=sys.stderr)
    print(f"smoke models ready in {args.models}: random weights, meaningless tags; every answer says 'smoke'",
          file=sys.stderr)
    return 0


def _run_pull(args: argparse.Namespace) -> int:
    from archivetag.pull import pull

    return pull(args.models, list(args.only or registry.MODEL_NAMES), args, args.revision, args.rampp_tag_list_url,
                args.keep_free_mb)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="models_command", required=True, metavar="MODELS_COMMAND")
    models_group = [OptionGroup("models", (MODELS_OPTION,))]

    smoke = commands.add_parser("smoke", help="build small random-weight models of the real architectures (offline)")
    add_option_groups(smoke, models_group)
    smoke.add_argument("--only", nargs="+", choices=registry.MODEL_NAMES, help="only these models")
    smoke.add_argument("--tag-list", type=Path, help="tag vocabulary (one tag per line; default: a built-in word list)")
    smoke.add_argument("--thresholds", type=Path, help="per-tag thresholds for --tag-list (RAM++ format)")
    smoke.add_argument("--force", action="store_true", help="replace existing models")
    smoke.set_defaults(func=_run_smoke)

    pull = commands.add_parser(
        "pull", help="download the real weights into the models directory (needs network; HF_ENDPOINT for a mirror)")
    add_option_groups(pull, pull_option_groups())
    pulled = [s.name for s in registry.models() if s.pull is not None]
    pull.add_argument("--only", nargs="+", choices=pulled, help="only these models")
    pull.set_defaults(func=_run_pull)

    # Each model's own commands (convert-florence, convert-rampp, export-siglip, ...): their modules
    # import nothing heavy until a command runs.
    for spec in registry.models():
        if spec.commands:
            load(spec.commands)(commands)
