"""Control-plane cost before and after it stopped importing torch: `archivetag probe` wall time
(the container HEALTHCHECK) and the idle RSS of a SERVING orchestrator and SigLIP service.

"before" is a git revision (default 6a8f824, the last one that imported torch through the CLI
parser) made importable from a scratch folder; "after" is this checkout. Both serve the same
smoke models, one after the other, in one run.

    python benchmarks/control_plane_bench.py [--before REV] [--repeats 7] [--out benchmarks/results/control_plane.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import median_seconds

REPO = Path(__file__).resolve().parents[1]
VIEW_TYPE = "archivetag.v1.ViewTypeService"
TAGGING = "archivetag.v1.TaggingService"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def old_checkout(rev: str, root: Path) -> Path:
    """A folder from which `import archivetag` gives revision rev (its package-dir mapping rebuilt by links)."""
    tree = root / "tree"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), rev], check=True,
                   capture_output=True)
    path = root / "path"
    package = path / "archivetag"
    package.mkdir(parents=True)
    for entry in (tree / "archivetag").iterdir():
        (package / entry.name).symlink_to(entry)
    (package / "services").symlink_to(tree / "services")
    (package / "orchestrator").symlink_to(tree / "orchestrator")
    return path


def rss_mib(pid: int) -> float:
    return int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1)) / 1024


def wait_serving(python: list[str], env: dict, address: str, service: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run([*python, "probe", "--probe-address", address, "--probe-service", service],
                              env=env, capture_output=True)
        if done.returncode == 0:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{address} {service} not SERVING")


def measure(label: str, env: dict, models: Path, repeats: int) -> dict:
    python = [sys.executable, "-P", "-m", "archivetag.cli"]
    siglip_port, orchestrator_port = free_port(), free_port()
    logs = open(Path(tempfile.mkdtemp()) / f"{label}.log", "wb")
    servers = [
        subprocess.Popen([*python, "serve", "siglip", "--models", str(models), "--port", str(siglip_port),
                          "--metrics-port", "0"], env=env, stdout=logs, stderr=subprocess.STDOUT),
        subprocess.Popen([*python, "serve", "orchestrator", "--no-auth", "--port", str(orchestrator_port),
                          "--metrics-port", "0", "--siglip-target", f"127.0.0.1:{siglip_port}",
                          "--disabled-backends", "florence,rampp"], env=env, stdout=logs, stderr=subprocess.STDOUT),
    ]
    try:
        wait_serving(python, env, f"127.0.0.1:{siglip_port}", VIEW_TYPE)
        wait_serving(python, env, f"127.0.0.1:{orchestrator_port}", TAGGING)
        time.sleep(2)  # idle: let start-up allocations settle before reading RSS
        probe = lambda: subprocess.run([*python, "probe", "--probe-address", f"127.0.0.1:{siglip_port}",
                                        "--probe-service", VIEW_TYPE], env=env, capture_output=True, check=True)
        return {
            "version": label,
            "probe_s": median_seconds(probe, repeats),
            "siglip_idle_rss_mib": rss_mib(servers[0].pid),
            "orchestrator_idle_rss_mib": rss_mib(servers[1].pid),
        }
    finally:
        for server in servers:
            server.send_signal(signal.SIGTERM)
        for server in servers:
            server.wait(60)
        logs.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="6a8f824")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "control_plane.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = root / "models"
        subprocess.run([sys.executable, "-P", "-m", "archivetag", "models", "smoke", "--models", str(models),
                        "--only", "siglip"], check=True, capture_output=True)
        try:
            before_env = {**os.environ, "PYTHONPATH": str(old_checkout(args.before, root))}
            rows = [measure(f"before ({args.before})", before_env, models, args.repeats),
                    measure("after (this checkout)", dict(os.environ), models, args.repeats)]
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(root / "tree")],
                           capture_output=True)
    header = f"{'version':28} {'probe s':>8} {'SigLIP idle RSS MiB':>20} {'orchestrator idle RSS MiB':>26}"
    print(header)
    for r in rows:
        print(f"{r['version']:28} {r['probe_s']:8.2f} {r['siglip_idle_rss_mib']:20.0f} "
              f"{r['orchestrator_idle_rss_mib']:26.0f}")
    before, after = rows
    print(f"probe {before['probe_s'] / after['probe_s']:.1f}x faster; SigLIP "
          f"{before['siglip_idle_rss_mib'] / after['siglip_idle_rss_mib']:.1f}x and orchestrator "
          f"{before['orchestrator_idle_rss_mib'] / after['orchestrator_idle_rss_mib']:.1f}x less memory")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                                    "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
