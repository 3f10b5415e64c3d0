"""The real stack for the client tests: `archivetag up` on smoke models, free ports, a tokens file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.servers import REPO, free_port
from tests.support.waiting import wait_for

TOKEN = "python-client-test-token"
# Small limits, so that over-limit images are cheap to make; the samples are below both.
MAX_IMAGE_BYTES = 1024 * 1024
MAX_IMAGE_PIXELS = 8_000_000
# Random weights never emit an end token: short greedy captions keep Florence-2 quick on a CPU.
FLORENCE_FAST = {"ARCHIVETAG_FLORENCE_MAX_NEW_TOKENS": "8", "ARCHIVETAG_FLORENCE_NUM_BEAMS": "1"}
SAMPLES = sorted(p for p in (REPO / "src" / "archivetag" / "samples").iterdir() if p.suffix != ".md")


@dataclass
class Stack:
    target: str
    log_dir: Path
    ports: dict[str, int]  # by server name

    def pid(self, service: str) -> int:
        return int((self.log_dir / f"{service}.pid").read_text())


@pytest.fixture(scope="session")
def stack(smoke_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("stack")
    tokens = folder / "tokens.txt"
    tokens.write_text(f"python-test:{TOKEN}\n")
    ports = {name: free_port() for name in ("orchestrator", "florence", "rampp", "siglip")}
    argv = [sys.executable, "-m", "archivetag.cli", "up", "--models", str(smoke_models), "--log-dir", str(folder / "logs"),
            "--api-tokens-file", str(tokens), "--no-metrics",
            *(arg for name, port in ports.items() for arg in (f"--{name}-port", str(port)))]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "ARCHIVETAG_MAX_IMAGE_BYTES": str(MAX_IMAGE_BYTES),
           "ARCHIVETAG_MAX_IMAGE_PIXELS": str(MAX_IMAGE_PIXELS), **FLORENCE_FAST,
           "ARCHIVETAG_CACHE_PATH": str(folder / "cache.sqlite")}  # the test's, not the user's
    log = folder / "up.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        def up_log():
            text = log.read_text(errors="replace")
            assert process.poll() is None, f"archivetag up exited: {text[-3000:]}"
            return text

        wait_for(up_log, until=lambda text: "services are SERVING" in text, timeout=900, interval=0.25,
                 describe="archivetag up to report its services SERVING")
        yield Stack(f"127.0.0.1:{ports['orchestrator']}", folder / "logs", ports)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
