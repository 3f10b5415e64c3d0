"""What a user installs: the built wheel in a fresh venv (no editable install, no checkout on the
path), run from the repository root (where a source folder could shadow the package) and from an
empty folder: smoke models, `up`, one photo tagged through the orchestrator, the stack stopped.

The venv's third-party dependencies (torch alone is 5 GB) come from the test's own environment
through a .pth file; archivetag itself is only the wheel, and the test checks that it is the
wheel's copy that runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from archivetag.runtime.registry import TAGGER_NAMES
from tests.support.servers import free_port
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "src" / "archivetag" / "samples" / "coffee-table.jpg"
SERVERS = ("florence", "rampp", "siglip", "orchestrator")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding the wheel built from this checkout; returns its bin/ folder."""
    root = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"),
         str(REPO)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    (wheel,) = (root / "dist").glob("archivetag-*.whl")
    venv.create(root / "venv", with_pip=False)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(root / "venv"), "platbase": str(root / "venv")}))
    (site / "_archivetag_test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    python = root / "venv" / "bin" / "python"
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                           "-q", str(wheel)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return python.parent


def archivetag(bin_dir: Path, *args: str, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir / "archivetag"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, **kwargs)


def test_the_wheel_not_the_checkout_is_what_runs(installed, tmp_path):
    where = subprocess.run([str(installed / "python"), "-c", "import archivetag.services.rampp as m; print(m.__file__)"],
                           cwd=REPO, capture_output=True, text=True)
    assert where.returncode == 0, where.stderr
    assert str(installed.parent) in where.stdout
    data = subprocess.run([str(installed / "python"), "-c",
                           "from archivetag.bundled import RAMPP_TAG_LIST as p; print(len(p.read_text().splitlines()))"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert data.stdout.strip() == "4585"  # the RAM++ tag list ships inside the wheel


@pytest.mark.parametrize("where", ["repository root", "empty folder"])
def test_installed_wheel_tags_a_photo_through_the_whole_stack(installed, where, tmp_path):
    cwd = REPO if where == "repository root" else tmp_path / "empty"
    cwd.mkdir(exist_ok=True)
    models, logs = tmp_path / "models", tmp_path / "logs"
    smoke = archivetag(installed, "models", "smoke", "--models", str(models), cwd=cwd)
    assert smoke.returncode == 0, smoke.stderr
    ports = {name: free_port() for name in SERVERS}
    out = tmp_path / "up.out"
    with open(out, "w") as output:
        up = subprocess.Popen([str(installed / "archivetag"), "up", "--models", str(models), "--log-dir", str(logs),
                               "--no-metrics", *[a for n, p in ports.items() for a in (f"--{n}-port", str(p))]],
                              cwd=cwd, stdout=output, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_for(out.read_text, lambda text: "services are SERVING" in text or up.poll() is not None, timeout=600,
                 describe="`up` to say the services serve (its output)")
        assert up.poll() is None, out.read_text() + "".join(p.read_text()[-2000:] for p in logs.glob("*.log"))
        tagged = archivetag(installed, "tag", str(SAMPLE), "--target", f"127.0.0.1:{ports['orchestrator']}",
                            "--db", str(tmp_path / "results.sqlite"), "--json", cwd=cwd)
        assert tagged.returncode == 0, tagged.stderr
        (answer,) = [json.loads(line) for line in tagged.stdout.splitlines() if line.strip()]
        assert answer["path"].endswith("coffee-table.jpg")
        # Florence-2 answers, or RAM++ when Florence missed its deadline on a busy machine (failover is the design).
        assert answer["result"]["tagger"] in TAGGER_NAMES, answer["result"]
        assert answer["result"]["viewType"]["name"]
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(120)
    assert code == 0, out.read_text()
    assert "stopped" in out.read_text()
