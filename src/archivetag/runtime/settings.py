"""One settings layer for every server and command: flags and environment variables.

Each option is declared once (name, default, help). Its flag is `--name-with-dashes`
and its environment variable `ARCHIVETAG_NAME`. Precedence: flag, then environment,
then default. `--help` of every command lists the variable beside each flag, and
docs/configuration.md is generated from the same declarations
(`python -m archivetag.configdoc > docs/configuration.md`). A server gets its settings as a
typed, frozen object holding exactly its declared options (`settings_from`), not the parser's
Namespace: a misspelt setting is an AttributeError at once, not a silent getattr default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "ARCHIVETAG_"


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def parse_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_path(text: str) -> Path:
    return Path(text).expanduser()


@dataclass(frozen=True)
class Option:
    """A setting: one flag, one environment variable, one default."""

    name: str
    default: Any
    help: str
    parse: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None
    metavar: str | None = None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def env_value(self, environ: dict[str, str]) -> Any:
        raw = environ.get(self.env)
        if raw is None:
            return self.default
        try:
            value = self.parse(raw)
        except ValueError as exc:
            raise SettingsError(f"{self.env}={raw!r} is not valid: {exc}") from None
        if self.choices and value not in self.choices:
            raise SettingsError(f"{self.env}={raw!r} must be one of {', '.join(self.choices)}")
        return value


class SettingsError(ValueError):
    """A setting has a value that cannot be used."""


@dataclass(frozen=True)
class OptionGroup:
    title: str
    options: tuple[Option, ...] = field(default_factory=tuple)

    def with_defaults(self, **defaults: Any) -> OptionGroup:
        """The same options with other defaults (e.g. each service's own port)."""
        unknown = set(defaults) - {o.name for o in self.options}
        if unknown:
            raise KeyError(f"unknown options: {sorted(unknown)}")
        return OptionGroup(
            self.title,
            tuple(
                Option(o.name, defaults.get(o.name, o.default), o.help, o.parse, o.choices, o.metavar)
                for o in self.options
            ),
        )


def add_option_groups(
    parser: argparse.ArgumentParser, groups: Iterable[OptionGroup], environ: dict[str, str] | None = None
) -> None:
    """Add each group's options to the parser, defaults taken from the environment."""
    environ = dict(os.environ) if environ is None else environ
    for group in groups:
        arg_group = parser.add_argument_group(group.title)
        for option in group.options:
            try:
                default = option.env_value(environ)
            except SettingsError as exc:
                parser.error(str(exc))
            shown = ",".join(map(str, option.default)) if isinstance(option.default, list) else option.default
            # argparse expands %-formats in help: a literal % ("a 3% crop") is written %%.
            help_text = f"{option.help} [env {option.env}; default: {shown!s}]".replace("%", "%%")
            if option.parse is parse_bool:
                arg_group.add_argument(
                    option.flag, dest=option.name, default=default,
                    action=argparse.BooleanOptionalAction, help=help_text,
                )
            else:
                arg_group.add_argument(
                    option.flag, dest=option.name, default=default, type=option.parse,
                    choices=option.choices, metavar=option.metavar, help=help_text,
                )


def markdown(groups: Iterable[OptionGroup]) -> str:
    """A Markdown table per group, for docs/configuration.md."""
    lines: list[str] = []
    for group in groups:
        lines += [f"## {group.title}", "", "| flag | environment | default | meaning |", "|---|---|---|---|"]
        for o in group.options:
            default = ",".join(map(str, o.default)) if isinstance(o.default, list) else o.default
            default_text = f"`{default}`" if default not in ("", None, []) else "(none)"
            lines.append(f"| `{o.flag}` | `{o.env}` | {default_text} | {o.help} |")
        lines.append("")
    return "\n".join(lines)


def _python_type(option: Option) -> Any:
    if option.parse is parse_bool:
        return bool
    if option.parse is parse_list:
        return list[str]
    if option.parse is parse_path:
        return Path | None
    return option.parse if isinstance(option.parse, type) else Any


_SETTINGS_TYPES: dict[tuple[str, tuple[str, ...]], type] = {}


def settings_type(name: str, groups: Iterable[OptionGroup]) -> type:
    """A frozen dataclass with one typed field per declared option of the groups (made once per name)."""
    options = [o for group in groups for o in group.options]
    key = (name, tuple(o.name for o in options))
    if key not in _SETTINGS_TYPES:
        _SETTINGS_TYPES[key] = dataclasses.make_dataclass(
            name, [(o.name, _python_type(o)) for o in options], frozen=True)
    return _SETTINGS_TYPES[key]


def settings_from(values: Any, groups: Iterable[OptionGroup], name: str = "Settings") -> Any:
    """The typed settings of the groups, taken from a parsed Namespace (or any object with the fields)."""
    cls = settings_type(name, groups)
    return cls(**{f.name: getattr(values, f.name) for f in dataclasses.fields(cls)})
