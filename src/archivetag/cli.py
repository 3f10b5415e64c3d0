"""The `archivetag` command.

    archivetag serve {florence,rampp,siglip,orchestrator}   one server
    archivetag up                                           the whole stack on this machine
    archivetag tag PATH...                                  tag photos into SQLite
    archivetag similar PHOTO                                the closest photos already tagged
    archivetag duplicates                                   groups of near-duplicate photos
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
from typing import Any, Iterator

from archivetag.runtime.options import MODEL_SERVICE_OPTIONS, server_options
from archivetag.runtime.registry import SERVERS, server
from archivetag.runtime.settings import OptionGroup, add_option_groups, settings_from

# Commands beside `serve`: each module has a docstring, OPTION_GROUPS, add_arguments(parser), run(args).
COMMAND_MODULES = {
    "up": "archivetag.stack",
    "tag": "archivetag.bulk",
    "similar": "archivetag.similar",
    "duplicates": "archivetag.duplicates",
    "status": "archivetag.status",
    "demo": "archivetag.demo",
    "probe": "archivetag.probe",
    "models": "archivetag.models",
}


def serve_option_groups(name: str) -> list[OptionGroup]:
    """Every option of `archivetag serve <name>`, in the order --help shows them."""
    spec = server(name)
    own = spec.module("options").OPTION_GROUPS
    shared = [MODEL_SERVICE_OPTIONS] if spec.is_model else []
    return [server_options(spec), *shared, *own]


def serve_settings(name: str, args: Any) -> Any:
    """The typed settings of one server, from parsed arguments."""
    return settings_from(args, serve_option_groups(name), f"{name.capitalize()}Settings")


def parse_serve_settings(name: str, *argv: str) -> Any:
    """`archivetag serve <name> ARGV...` parsed into its typed settings (tests, benchmarks)."""
    return serve_settings(name, build_parser().parse_args(["serve", name, *argv]))


def all_option_groups() -> Iterator[tuple[str, list[OptionGroup]]]:
    """Every command's settings, for docs/configuration.md."""
    for spec in SERVERS:
        yield f"serve {spec.name}", serve_option_groups(spec.name)
    for command, module_name in COMMAND_MODULES.items():
        groups = list(getattr(importlib.import_module(module_name), "OPTION_GROUPS", []))
        if groups:
            yield command, groups
    from archivetag.pull import OPTION_GROUPS as PULL_OPTION_GROUPS

    yield "models pull", PULL_OPTION_GROUPS


def run_server(args: argparse.Namespace) -> int:
    from archivetag.runtime.logs import configure_logging
    from archivetag.runtime.server import run

    spec = server(args.server)
    settings = serve_settings(spec.name, args)
    configure_logging(settings.log_level, settings.log_format)
    if not spec.is_model:
        return run(spec.module("app").create_app(settings), settings)
    from archivetag.runtime.model_service import ModelServiceApp

    return run(ModelServiceApp(spec.module("backend").create_backend(settings), settings), settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="archivetag", description="Tag archive photographs with Florence-2, RAM++ and SigLIP over gRPC."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run one server")
    servers = serve.add_subparsers(dest="server", required=True, metavar="SERVER")
    for spec in SERVERS:
        sub = servers.add_parser(spec.name, help=f"the {spec.title} server",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        add_option_groups(sub, serve_option_groups(spec.name))
        sub.set_defaults(func=run_server)

    for command, module_name in COMMAND_MODULES.items():
        module = importlib.import_module(module_name)
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
