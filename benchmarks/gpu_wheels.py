"""The wheels an air-gapped GPU box lacks: download exactly benchmarks/gpu_wheels.txt, and check the 64 MiB.

    python benchmarks/gpu_wheels.py [--python-version 3.12] [--dest .gpu-wheels] [--check]

Downloads (where PyPI is reachable) each `name==version` of the list, for CPython of --python-version on
manylinux x86_64 (`pip download --no-deps --only-binary :all:`), into --dest: a folder that ignores itself
(its own .gitignore), so it travels to a lent GPU machine only when named in the device tool's `carry`.
Wheels already there are not downloaded again (a run without network succeeds when all are present), and
wheels of other versions are removed (two versions of one package stop `pip install --no-index`).

Then prints the size of every wheel and of the working tree (what git would send: tracked files and
untracked ones it does not ignore) and exits 1 when together they exceed --limit-mib (64: what a lent
machine is sent). --check: no download, only that every wheel is there and the sizes.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIST = REPO / "benchmarks" / "gpu_wheels.txt"
# manylinux tags pip must be told one by one; the box (Ubuntu 24.04) has glibc 2.39.
PLATFORMS = ["manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64",
             *(f"manylinux_2_{minor}_x86_64" for minor in range(5, 40))]


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def requirements(path: Path) -> list[tuple[str, str]]:
    """(name, version) of every `name==version` line."""
    pins = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not version:
            raise SystemExit(f"{path}: {line!r} is not name==version")
        pins.append((name.strip(), version.strip()))
    return pins


def wheel_key(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return normalize(name), version


def present(dest: Path) -> dict[tuple[str, str], Path]:
    return {wheel_key(p): p for p in dest.glob("*.whl")}


def download(pins: list[tuple[str, str]], dest: Path, python_version: str) -> None:
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
               "--python-version", python_version, "--implementation", "cp", "--dest", str(dest)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run(command + [f"{name}=={version}" for name, version in pins], check=True)


def tree_bytes() -> int:
    """Bytes git would send of the working tree: tracked files and untracked ones it does not ignore."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, check=True).stdout
    total = 0
    for name in filter(None, out.decode().split("\0")):
        path = REPO / name
        if path.is_symlink():
            total += len(str(path.readlink()))
        elif path.is_file():
            total += path.stat().st_size
    return total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python-version", default="3.12", help="the GPU box's Python (default 3.12)")
    parser.add_argument("--dest", type=Path, default=REPO / ".gpu-wheels", help="the folder carried (default .gpu-wheels)")
    parser.add_argument("--list", type=Path, default=LIST, help="the wheels (default benchmarks/gpu_wheels.txt)")
    parser.add_argument("--limit-mib", type=float, default=64.0, help="wheels + working tree at most (default 64)")
    parser.add_argument("--check", action="store_true", help="no download: check the folder and the sizes")
    args = parser.parse_args(argv)

    pins = requirements(args.list)
    wanted = {(normalize(name), version) for name, version in pins}
    dest = args.dest
    dest.mkdir(parents=True, exist_ok=True)
    (dest / ".gitignore").write_text("*\n", encoding="utf-8")
    for key, path in present(dest).items():
        if key not in wanted:
            print(f"gpu_wheels: removing {path.name} (not on the list)", file=sys.stderr)
            path.unlink()
    missing = [(name, version) for name, version in pins if (normalize(name), version) not in present(dest)]
    if missing and not args.check:
        print(f"gpu_wheels: downloading {len(missing)} wheels for Python {args.python_version} into {dest}",
              file=sys.stderr)
        download(missing, dest, args.python_version)
    wheels = present(dest)
    missing = [f"{name}=={version}" for name, version in pins if (normalize(name), version) not in wheels]
    if missing:
        print(f"gpu_wheels: missing from {dest}: {', '.join(missing)}", file=sys.stderr)
        return 1
    tag = f"cp{args.python_version.replace('.', '')}"
    wrong = [p.name for p in wheels.values() if "-cp" in p.name and f"-{tag}-" not in p.name and "abi3" not in p.name]
    if wrong:
        print(f"gpu_wheels: not for Python {args.python_version}: {', '.join(wrong)} (remove them, run again)",
              file=sys.stderr)
        return 1

    mib = 1024 * 1024
    for path in sorted(wheels.values(), key=lambda p: -p.stat().st_size):
        print(f"{path.stat().st_size / mib:8.2f} MiB  {path.name}")
    wheel_total = sum(p.stat().st_size for p in wheels.values())
    tree = tree_bytes()
    total = wheel_total + tree
    print(f"{wheel_total / mib:8.2f} MiB  {len(wheels)} wheels in {dest}")
    print(f"{tree / mib:8.2f} MiB  the working tree (git ls-files --cached --others --exclude-standard)")
    print(f"{total / mib:8.2f} MiB  together; the limit is {args.limit_mib:g} MiB")
    if total > args.limit_mib * mib:
        print("gpu_wheels: over the limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
