"""The `archivetag` command.

    archivetag serve SERVER                                 one installed server (florence, rampp, siglip, orchestrator)
    archivetag up                                           the whole stack on this machine
    archivetag tag PATH...                                  tag photos into SQLite
    archivetag similar PHOTO                                the closest photos already tagged
    archivetag search "TEXT"                                photos already tagged, found by words (SigLIP)
    archivetag duplicates                                   the same photo twice, then similar photos
    archivetag export --xmp|--embed|--csv|--jsonl          tags into XMP sidecars, the photos, CSV, JSON lines
    archivetag status                                       the backends, from the orchestrator
    archivetag demo                                         the main job: stack + sample photos
    archivetag probe                                        health check (for containers)
    archivetag models {smoke,pull,...}                      models in and out

The control plane never imports torch, transformers or timm: building the parser reads only
option declarations, and a model's heavy modules are imported by `serve <that model>` alone.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterator
from typing import Any

from archivetag.runtime import registry
from archivetag.runtime.options import MODEL_SERVICE_OPTIONS, server_options
from archivetag.runtime.settings import OptionGroup, add_option_groups, settings_from
from archivetag.runtime.specs import load

# Commands beside `serve`: each module has a docstring, OPTION_GROUPS, add_arguments(parser), run(args).
COMMAND_MODULES = {
    "up": "archivetag.stack",
    "tag": "archivetag.bulk",
    "similar": "archivetag.similar",
    "search": "archivetag.search",
    "duplicates": "archivetag.duplicates",
    "export": "archivetag.export",
    "status": "archivetag.status",
    "demo": "archivetag.demo",
    "probe": "archivetag.probe",
    "models": "archivetag.models",
}


def serve_option_groups(name: str) -> list[OptionGroup]:
    """Every option of `archivetag serve <name>`, in the order --help shows them."""
    spec = registry.server(name)
    shared = [MODEL_SERVICE_OPTIONS] if spec.is_model else []
    return [server_options(spec), *shared, *spec.option_groups()]


def serve_settings(name: str, args: Any) -> Any:
    """The typed settings of one server, from parsed arguments."""
    return settings_from(args, serve_option_groups(name), f"{name.capitalize()}Settings")


def parse_serve_settings(name: str, *argv: str) -> Any:
    """`archivetag serve <name> ARGV...` parsed into its typed settings (tests, benchmarks)."""
    return serve_settings(name, build_parser().parse_args(["serve", name, *argv]))


def all_option_groups() -> Iterator[tuple[str, list[OptionGroup]]]:
    """Every command's settings, for docs/configuration.md."""
    for spec in registry.servers():
        yield f"serve {spec.name}", serve_option_groups(spec.name)
    for command, module_name in COMMAND_MODULES.items():
        groups = list(getattr(importlib.import_module(module_name), "OPTION_GROUPS", []))
        if groups:
            yield command, groups
    from archivetag.pull import pull_option_groups

    yield "models pull", pull_option_groups()


def run_server(args: argparse.Namespace) -> int:
    from archivetag.runtime.logs import configure_logging
    from archivetag.runtime.server import run

    spec = registry.server(args.server)
    settings = serve_settings(spec.name, args)
    configure_logging(settings.log_level, settings.log_format)
    if not spec.is_model:
        return run(load(spec.app)(settings), settings)
    from archivetag.runtime.model_service import ModelServiceApp

    return run(ModelServiceApp(spec, load(spec.app)(settings), settings), settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="archivetag",
        description="Tag archive photographs with vision models (Florence-2, RAM++, SigLIP) over gRPC.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run one server")
    servers = serve.add_subparsers(dest="server", required=True, metavar="SERVER")
    for spec in registry.servers():
        sub = servers.add_parser(spec.name, help=f"the {spec.title} server",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        add_option_groups(sub, serve_option_groups(spec.name))
        sub.set_defaults(func=run_server)

    for command, module_name in COMMAND_MODULES.items():
        module = importlib.import_module(module_name)
        assert module.__doc__, f"{module_name} has no docstring: its first line is the command's help"
        sub = commands.add_parser(command, help=module.__doc__.strip().splitlines()[0])
        add_option_groups(sub, getattr(module, "OPTION_GROUPS", []))
        module.add_arguments(sub)
        if hasattr(module, "run"):
            sub.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
