"""What a user installs: the built wheels (the core, each model service, the orchestrator) in a fresh
venv (no editable install, no checkout on the path), run from the repository root (where a source
folder could shadow the package) and from an empty folder: smoke models, `up`, one photo tagged
through the orchestrator, the stack stopped. And what each role's install pulls: the client and
CLI, the orchestrator and the SigLIP service without torch.

The venv's third-party dependencies (torch alone is 5 GB) come from the test's own environment
through a .pth file; archivetag itself is only the wheels, and the test checks that it is the
wheels' copy that runs."""

from __future__ import annotations

import json
import os
import shutil
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
# Each distribution's folder; the core at the root.
DISTRIBUTIONS = {"archivetag": REPO, "archivetag-florence": REPO / "services" / "florence",
                 "archivetag-rampp": REPO / "services" / "rampp", "archivetag-siglip": REPO / "services" / "siglip",
                 "archivetag-orchestrator": REPO / "orchestrator"}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    """Every distribution's wheel, built from this checkout, by distribution name."""
    root = tmp_path_factory.mktemp("wheels")
    # Built from copies: an in-tree build would leave build/ and *.egg-info folders in the checkout.
    sources = []
    for name, folder in DISTRIBUTIONS.items():
        copy = root / "src" / name
        if folder == REPO:
            copy.mkdir(parents=True)
            shutil.copy(REPO / "pyproject.toml", copy)
            shutil.copy(REPO / "README.md", copy)
            shutil.copytree(REPO / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
        sources.append(str(copy))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"),
         *sources], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    found = {path.name.split("-")[0].replace("_", "-"): path for path in (root / "dist").glob("archivetag*.whl")}
    assert set(found) == set(DISTRIBUTIONS), found
    return found


def fresh_venv(root: Path, wheels: list[Path]) -> Path:
    """A venv holding these wheels; the third-party packages borrowed from the test's environment (without
    its own archivetag installs, so only these wheels' servers are registered). Returns its bin/ folder."""
    borrowed = root / "borrowed"
    borrowed.mkdir()
    for entry in Path(sysconfig.get_path("purelib")).iterdir():
        if not entry.name.lower().startswith(("archivetag", "__editable__")) and entry.suffix != ".pth":
            (borrowed / entry.name).symlink_to(entry)
    venv.create(root / "venv", with_pip=False)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(root / "venv"), "platbase": str(root / "venv")}))
    (site / "_archivetag_test_dependencies.pth").write_text(f"{borrowed}\n")
    python = root / "venv" / "bin" / "python"
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                           "-q", *map(str, wheels)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return python.parent


@pytest.fixture(scope="module")
def installed(wheels, tmp_path_factory) -> Path:
    """A fresh venv holding every wheel built from this checkout; returns its bin/ folder."""
    return fresh_venv(tmp_path_factory.mktemp("everything"), list(wheels.values()))


def test_an_install_of_siglip_alone_serves_siglip_and_names_what_is_missing(wheels, tmp_path):
    bin_dir = fresh_venv(tmp_path, [wheels["archivetag"], wheels["archivetag-siglip"]])
    listed = archivetag(bin_dir, "serve", "--help", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "siglip" in listed.stdout and "florence" not in listed.stdout
    assert archivetag(bin_dir, "serve", "siglip", "--help", cwd=tmp_path).returncode == 0
    assert archivetag(bin_dir, "probe", "--help", cwd=tmp_path).returncode == 0
    up = archivetag(bin_dir, "up", "--models", str(tmp_path / "models"), cwd=tmp_path)
    assert up.returncode == 2
    assert "orchestrator is not installed" in up.stderr


def archivetag(bin_dir: Path, *args: str, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir / "archivetag"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, **kwargs)


def test_the_wheels_not_the_checkout_are_what_runs(installed, tmp_path):
    for module in ("archivetag", "archivetag_rampp", "archivetag_orchestrator"):
        where = subprocess.run([str(installed / "python"), "-c", f"import {module} as m; print(m.__file__)"],
                               cwd=REPO, capture_output=True, text=True)
        assert where.returncode == 0, where.stderr
        assert str(installed.parent) in where.stdout, (module, where.stdout)
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


# Run in the wheels' venv, so each role's requirements are read from its wheel's own metadata (and their
# dependencies' from the environment the venv borrows).
REQUIREMENTS_WALK = """
import json, re, sys
from importlib.metadata import distribution

def requirements(name, extras):
    found, todo = set(), [(name, frozenset(extras))]
    while todo:
        current, wanted = todo.pop()
        key = re.sub(r"[-_.]+", "-", current).lower()
        if key in found:
            continue
        found.add(key)
        for requirement in distribution(current).requires or []:
            spec, _, marker = requirement.partition(";")
            extra = re.search(r"extra\\s*==\\s*[\\"']([^\\"']+)", marker)
            if (extra and extra.group(1) not in wanted) or (marker.strip() and not extra):
                continue  # another extra's, or a platform marker (none of ours pulls torch)
            todo.append((re.split(r"[\\s\\[<>=!~(]", spec.strip(), maxsplit=1)[0], frozenset()))
    return sorted(found)

print(json.dumps(requirements(sys.argv[1], sys.argv[2:])))
"""


def requirements(bin_dir: Path, name: str, *extras: str) -> set[str]:
    """Every distribution an install of `name` (with extras) pulls."""
    done = subprocess.run([str(bin_dir / "python"), "-c", REQUIREMENTS_WALK, name, *extras], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout))


@pytest.mark.parametrize("role", ["archivetag", "archivetag-orchestrator", "archivetag-siglip"])
def test_the_client_the_orchestrator_and_siglip_install_without_torch(installed, role):
    pulled = requirements(installed, role)
    assert "torch" not in pulled and "transformers" not in pulled, sorted(pulled)
    assert "grpcio" in pulled  # the walk does see dependencies


def test_the_torch_services_and_the_siglip_exporter_do_pull_torch(installed):
    for role, extras in (("archivetag-florence", ()), ("archivetag-rampp", ()), ("archivetag-siglip", ("export",))):
        assert "torch" in requirements(installed, role, *extras), role
