"""`archivetag models`: models in and out (smoke, pull, and each service's export/convert commands)."""

from __future__ import annotations

import argparse
import importlib

SERVICE_COMMAND_MODULES = (
    "archivetag.services.florence.commands",
    "archivetag.services.rampp.commands",
    "archivetag.services.siglip.commands",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="models_command", required=True, metavar="MODELS_COMMAND")
    for module_name in SERVICE_COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        module.add_commands(commands)
