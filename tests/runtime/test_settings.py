"""One settings layer: flags beat environment variables beat defaults; bad values are clear errors."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from archivetag.stack import archivetag_command
from archivetag.cli import build_parser, serve_option_groups
from archivetag.runtime.registry import SERVER_NAMES as SERVERS
from archivetag.runtime.settings import Option, OptionGroup, add_option_groups, parse_bool, parse_list
from tests.support.servers import free_port

GROUP = OptionGroup("test", (
    Option("max_batch_size", 8, "batch", int),
    Option("jpeg_draft", True, "draft", parse_bool),
    Option("allowed_roots", [], "roots", parse_list),
))


def parse(argv, environ):
    parser = argparse.ArgumentParser()
    add_option_groups(parser, [GROUP], environ)
    return parser.parse_args(argv)


def test_defaults_then_environment_then_flags():
    assert parse([], {}).max_batch_size == 8
    assert parse([], {"ARCHIVETAG_MAX_BATCH_SIZE": "16"}).max_batch_size == 16
    assert parse(["--max-batch-size", "4"], {"ARCHIVETAG_MAX_BATCH_SIZE": "16"}).max_batch_size == 4
    assert parse([], {"ARCHIVETAG_JPEG_DRAFT": "false"}).jpeg_draft is False
    assert parse(["--no-jpeg-draft"], {}).jpeg_draft is False
    assert parse([], {"ARCHIVETAG_ALLOWED_ROOTS": "/a, /b"}).allowed_roots == ["/a", "/b"]


def test_a_bad_environment_value_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        parse([], {"ARCHIVETAG_MAX_BATCH_SIZE": "lots"})
    assert "ARCHIVETAG_MAX_BATCH_SIZE='lots' is not valid" in capsys.readouterr().err


def test_every_server_has_unique_documented_options_with_its_own_port():
    ports = set()
    for server in SERVERS:
        options = [o for group in serve_option_groups(server) for o in group.options]
        names = [o.name for o in options]
        assert len(names) == len(set(names)), server
        assert all(o.help for o in options)
        ports.add(next(o.default for o in options if o.name == "port"))
    assert ports == {50051, 50052, 50053, 50054}


def test_help_shows_each_flag_with_its_environment_variable():
    result = subprocess.run(archivetag_command("serve", "rampp", "--help"),
                            capture_output=True, text=True)
    assert result.returncode == 0
    assert "--max-batch-size" in result.stdout
    assert "ARCHIVETAG_MAX_BATCH_SIZE" in result.stdout
    assert "default: 50053" in result.stdout


def command_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every runnable command path (("serve", "rampp"), ("status",), ("models", "smoke"), ...) and its parser."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if path and not groups:
        yield path, parser
    for group in groups:
        for name, sub in group.choices.items():
            yield from command_parsers(sub, (*path, name))


COMMANDS = dict(command_parsers(build_parser()))


def archivetag(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archivetag.cli", *args], capture_output=True, text=True, timeout=300)


def test_every_command_in_the_readme_and_docs_exists():
    repo = Path(__file__).resolve().parents[2]
    text = " ".join(path.read_text() for path in [repo / "README.md", *sorted((repo / "docs").glob("*.md"))])
    # As written in code: `archivetag status`, .venv/bin/archivetag up (not prose like "archivetag puts").
    documented = set(re.findall(r"(?:`|bin/)archivetag\s+((?:serve|models)\s+[a-z][a-z-]*|[a-z][a-z-]*)(?!\w)", text))
    assert {"up", "tag", "status", "models smoke"} <= {" ".join(d.split()) for d in documented}
    for command in documented:
        words = tuple(command.split())
        assert any(path[:len(words)] == words for path in COMMANDS), f"documented but not a command: archivetag {command}"


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_each_commands_help_names_its_options(path, capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*path, "--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: archivetag {' '.join(path)}"), shown[:200]
    options = {o for a in COMMANDS[path]._actions for o in a.option_strings if o.startswith("--") and o != "--help"}
    missing = sorted(o for o in options if o not in shown)
    assert not missing, missing


def test_status_and_probe_run_and_name_an_unreachable_server():
    """The light commands, run as a user runs them (the others run in tests/stack and tests/deploy)."""
    dead = f"127.0.0.1:{free_port()}"
    status = archivetag("status", "--target", dead)
    assert status.returncode == 2
    assert f"archivetag status: {dead}: UNAVAILABLE" in status.stderr
    probe = archivetag("probe", "--probe-address", dead, "--probe-timeout-seconds", "30")
    assert probe.returncode == 1
    assert f"{dead}: UNREACHABLE" in probe.stderr


def test_the_configuration_reference_is_generated_from_the_options():
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-m", "archivetag.configdoc"], capture_output=True, text=True, cwd=repo)
    assert result.returncode == 0, result.stderr
    assert (repo / "docs" / "configuration.md").read_text() == result.stdout, (
        "docs/configuration.md is stale: python -m archivetag.configdoc > docs/configuration.md"
    )
