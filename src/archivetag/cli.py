"""The `archivetag` command.

    archivetag serve {florence,rampp,siglip,orchestrator}   one server
    archivetag up                                           the whole stack on this machine
    archivetag tag PATH...                                  tag photos into SQLite
    archivetag status                                       the backends, from the orchestrator
    archivetag demo                                         the main job: stack + sample photos
    archivetag probe                                        health check (for containers)
    archivetag models {smoke,pull,...}                      models in and out

Heavy modules (torch, transformers) are imported only by the commands that need them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Iterator

from archivetag.runtime.options import MODEL_SERVICE_OPTIONS, server_options
from archivetag.runtime.settings import OptionGroup, add_option_groups

MODEL_SERVICES = ("florence", "rampp", "siglip")
SERVERS = (*MODEL_SERVICES, "orchestrator")

# Commands outside `serve`: name → (module with OPTION_GROUPS, add_arguments(parser), run(args)).
COMMAND_MODULES = {
    "up": "archivetag.stack",
    "tag": "archivetag.bulk",
    "status": "archivetag.status",
    "demo": "archivetag.demo",
    "probe": "archivetag.probe",
}
MODELS_MODULE = "archivetag.models"


def serve_option_groups(server: str) -> list[OptionGroup]:
    if server == "orchestrator":
        from archivetag.orchestrator.options import OPTION_GROUPS

        return [server_options(server), *OPTION_GROUPS]
    options = importlib.import_module(f"archivetag.services.{server}.options")
    return [server_options(server), MODEL_SERVICE_OPTIONS, options.OPTIONS]


def all_option_groups() -> Iterator[tuple[str, list[OptionGroup]]]:
    """Every command's settings, for docs/configuration.md."""
    for server in SERVERS:
        yield f"serve {server}", serve_option_groups(server)
    for command, module_name in COMMAND_MODULES.items():
        module = _optional_module(module_name)
        if module is not None:
            yield command, list(getattr(module, "OPTION_GROUPS", []))
    from archivetag.pull import OPTION_GROUPS as PULL_OPTION_GROUPS

    yield "models pull", PULL_OPTION_GROUPS


def _optional_module(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise


def run_server(args: argparse.Namespace) -> int:
    from archivetag.runtime.logs import configure_logging
    from archivetag.runtime.server import run

    configure_logging(args.log_level, args.log_format)
    if args.server == "orchestrator":
        from archivetag.orchestrator.app import create_app

        return run(create_app(args), args)
    from archivetag.runtime.model_service import ModelServiceApp

    backend_module = importlib.import_module(f"archivetag.services.{args.server}.backend")
    return run(ModelServiceApp(backend_module.create_backend(args), args), args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="archivetag", description="Tag archive photographs with Florence-2, RAM++ and SigLIP over gRPC."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run one server")
    servers = serve.add_subparsers(dest="server", required=True, metavar="SERVER")
    for server in SERVERS:
        sub = servers.add_parser(server, help=f"the {server} server", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        add_option_groups(sub, serve_option_groups(server))
        sub.set_defaults(func=run_server)

    for command, module_name in COMMAND_MODULES.items():
        module = _optional_module(module_name)
        sub = commands.add_parser(command, help=module.__doc__.strip().splitlines()[0] if module else "(not built yet)")
        if module is not None:
            add_option_groups(sub, getattr(module, "OPTION_GROUPS", []))
            module.add_arguments(sub)
            sub.set_defaults(func=module.run)
        else:
            sub.set_defaults(func=_not_built(command))

    models = _optional_module(MODELS_MODULE)
    sub = commands.add_parser("models", help="models in and out: smoke, pull, export and convert")
    if models is not None:
        models.add_arguments(sub)
    else:
        sub.set_defaults(func=_not_built("models"))
    return parser


def _not_built(command: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        print(f"archivetag {command}: not available in this build", file=sys.stderr)
        return 2

    return run


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
