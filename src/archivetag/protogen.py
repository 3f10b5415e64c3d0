"""Generate the Python code for protos/ (the one command for it).

    python -m archivetag.protogen          # regenerate src/archivetag/v1/*_pb2*.py
    python -m archivetag.protogen --check  # exit 1 if the committed code is stale

The generated modules live in src/archivetag/v1/, matching the proto package
archivetag.v1, so their own imports (`from archivetag.v1 import common_pb2`) resolve.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "protos"
OUT_DIR = REPO / "src" / "archivetag" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "archivetag" / "v1").glob("*.proto"))


def generate(out_root: Path) -> Path:
    """Run protoc into out_root; return the folder holding the archivetag/v1 modules."""
    import grpc_tools
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    well_known = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *[str(p.relative_to(PROTO_ROOT)) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return out_root / "archivetag" / "v1"


def generated_names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name.endswith(GENERATED_SUFFIXES)}


def stale_files() -> list[str]:
    """Names of generated files that differ from what protoc makes now."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        names = generated_names(fresh) | generated_names(OUT_DIR)
        return sorted(
            n
            for n in names
            if not (fresh / n).exists()
            or not (OUT_DIR / n).exists()
            or not filecmp.cmp(fresh / n, OUT_DIR / n, shallow=False)
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report stale generated files")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print("stale generated code: " + ", ".join(stale) + "; run: python -m archivetag.protogen")
            return 1
        print("generated code is up to date")
        return 0
    for name in generated_names(OUT_DIR):
        (OUT_DIR / name).unlink()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        for name in sorted(generated_names(fresh)):
            (OUT_DIR / name).write_bytes((fresh / name).read_bytes())
            print(f"wrote src/archivetag/v1/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
