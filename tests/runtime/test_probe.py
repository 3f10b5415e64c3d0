"""`archivetag probe` as the images' HEALTHCHECK runs it: the server that ARCHIVETAG_SERVER
names, on the port that server listens on and with its own health name, over TLS when the
server serves TLS."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from archivetag import probe
from archivetag.runtime import registry
from archivetag.runtime.settings import add_option_groups
from tests.conftest import model_service
from tests.support.waiting import wait_for

SIGLIP = registry.server("siglip")


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "server.pem", folder / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=archivetag-test",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def container_env(**env: str) -> dict[str, str]:
    """This process's environment without any ARCHIVETAG_ setting, plus env."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("ARCHIVETAG_")}, **env}


def probe_once(env: dict[str, str]) -> int:
    parser = argparse.ArgumentParser()
    add_option_groups(parser, probe.OPTION_GROUPS, environ=env)
    args = parser.parse_args([])
    return probe.run_target(probe.target_of(args, environ=env), args)


def probe_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archivetag.cli", "probe", *args], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def tls_siglip(smoke_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    cert, key = self_signed_certificate(folder)
    with model_service("siglip", smoke_models, folder, "--tls-cert", str(cert), "--tls-key", str(key)) as server:
        env = container_env(ARCHIVETAG_SERVER="siglip", ARCHIVETAG_PORT=str(server.port),
                            ARCHIVETAG_TLS_CERT=str(cert), ARCHIVETAG_TLS_KEY=str(key))
        def probe_while_running():
            assert server.proc.poll() is None, server.log_tail()
            return probe_once(env)

        wait_for(probe_while_running, until=lambda code: code == 0, timeout=180, interval=0.5,
                 describe="the probe to pass once the model has loaded and warmed up")
        yield server, env


def test_the_health_check_of_a_tls_server_uses_its_port_health_name_and_certificate(tls_siglip):
    server, env = tls_siglip
    result = probe_command(env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"127.0.0.1:{server.port} {SIGLIP.health_service}: SERVING"


def test_a_plaintext_probe_of_a_tls_server_fails(tls_siglip):
    server, env = tls_siglip
    plaintext = {k: v for k, v in env.items() if not k.startswith("ARCHIVETAG_TLS_")}
    result = probe_command(plaintext)
    assert result.returncode == 1
    assert result.stderr.startswith(f"127.0.0.1:{server.port}: UNREACHABLE: UNAVAILABLE")


def test_the_health_check_of_another_server_on_that_port_fails_on_the_health_name(tls_siglip):
    server, env = tls_siglip
    result = probe_command({**env, "ARCHIVETAG_SERVER": "orchestrator"})  # TaggingService: not served there
    assert result.returncode == 1
    assert result.stderr.startswith(f"127.0.0.1:{server.port}: SERVICE_UNKNOWN")


def test_a_named_server_is_probed_on_its_default_port_unless_the_server_is_told_another():
    parser = argparse.ArgumentParser()
    add_option_groups(parser, probe.OPTION_GROUPS, environ={})
    for spec in registry.SERVERS:
        target = probe.target_of(parser.parse_args(["--server", spec.name]), environ={})
        assert (target.address, target.service, target.tls_ca) == (f"127.0.0.1:{spec.port}", spec.health_service, None)
    moved = probe.target_of(parser.parse_args(["--server", "rampp"]), environ={"ARCHIVETAG_PORT": "6000"})
    assert moved.address == "127.0.0.1:6000"
