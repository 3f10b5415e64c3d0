"""One settings layer: flags beat environment variables beat defaults; bad values are clear errors."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from archivetag.stack import archivetag_command
from archivetag.cli import build_parser, serve_option_groups
from archivetag.runtime.registry import SERVER_NAMES as SERVERS
from archivetag.runtime.settings import Option, OptionGroup, add_option_groups, parse_bool, parse_list

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
    assert "--max-batch-size" in result.stdout and "ARCHIVETAG_MAX_BATCH_SIZE" in result.stdout
    assert "default: 50053" in result.stdout


def test_the_cli_has_the_documented_commands():
    parser = build_parser()
    for argv in (["serve", "florence"], ["serve", "orchestrator"], ["status"], ["up"]):
        assert parser.parse_args(argv).func


def test_the_configuration_reference_is_generated_from_the_options():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-m", "archivetag.configdoc"], capture_output=True, text=True, cwd=repo)
    assert result.returncode == 0, result.stderr
    assert (repo / "docs" / "configuration.md").read_text() == result.stdout, (
        "docs/configuration.md is stale: python -m archivetag.configdoc > docs/configuration.md"
    )
