"""A result store with real answers (TagImagesResponse protobufs, as the orchestrator sends them) for the
bundled sample photos copied into a temporary folder, and helpers that run `archivetag export` and read
files back with the tools archivists use (exiftool, exiv2)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from archivetag.results import ResultStore
from archivetag.v1 import common_pb2, tagging_pb2

SAMPLES = Path(__file__).resolve().parents[2] / "src" / "archivetag" / "samples"
KEY = "export-test-models"
FLORENCE = dict(family="florence", name="florence-community/Florence-2-base", revision="5ca5edf")
SIGLIP = dict(family="siglip", name="google/siglip-base-patch16-224", revision="7fd15f0")
TAGS = [("staircase", 0.912), ("hall", 0.64), ("window", 0.18)]


def need(tool: str, package: str) -> str:
    found = shutil.which(tool)
    if found is None:
        pytest.fail(f"{tool} is not installed: `apt-get install {package}` (scripts/bootstrap does it as root)")
    return found


def answer(tags=TAGS, caption: str = "A wide staircase in an entrance hall.", ocr: str = "EXIT",
           view: str = "interior", smoke: bool = False) -> tagging_pb2.TagImagesResponse:
    response = tagging_pb2.TagImagesResponse(id="1")
    r = response.result
    r.tagger = "florence"
    r.caption = caption
    for name, confidence in tags:
        r.tags.add(name=name, confidence=confidence, source_model=FLORENCE["name"])
    r.view_type.name = view
    r.view_type.confidence = 0.83
    r.models.add(**FLORENCE, smoke=smoke)
    r.models.add(**SIGLIP, smoke=smoke)
    if ocr:
        r.ocr.status = common_pb2.OCR_STATUS_READ
        r.ocr.text = ocr
    r.embedding.extend([1.0, 0.0])
    return response


def record(db: Path, photo: Path | list[Path], response: tagging_pb2.TagImagesResponse, key: str = KEY) -> None:
    """Store an answer for the photo(s) as `tag` does (another key: as tagged again by other models)."""
    store = ResultStore(db)
    try:
        store.remember_models(key, [])
        for one in photo if isinstance(photo, list) else [photo]:
            data = one.read_bytes()
            store.record(one.resolve(), hashlib.sha256(data).hexdigest(), len(data), one.stat().st_mtime, key,
                         response)
    finally:
        store.close()


@pytest.fixture
def archive(tmp_path) -> Path:
    """The sample photos (JPEG, PNG, WebP, HEIC) in a folder, each tagged into tmp_path/results.sqlite."""
    folder = tmp_path / "archive"
    folder.mkdir()
    for sample in sorted(SAMPLES.iterdir()):
        if sample.suffix != ".md":
            shutil.copyfile(sample, folder / sample.name)
    record(tmp_path / "results.sqlite", photos(folder), answer())
    return folder


def photos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() != ".xmp" and not p.name.startswith("."))


def export(db: Path, *args: str) -> subprocess.CompletedProcess:
    """`archivetag export` as a person runs it (its own process)."""
    return subprocess.run([sys.executable, "-m", "archivetag.cli", "export", "--db", str(db), "--no-progress", *args],
                          capture_output=True, text=True, timeout=120)


def exiftool_read(path: Path, *tags: str) -> dict:
    """What exiftool reads, values unformatted (-n), with no knowledge of archivetag's namespace: it reads any XMP."""
    need("exiftool", "libimage-exiftool-perl")
    out = subprocess.run(["exiftool", "-j", "-n", "-struct", "-G1", *(tags or ("-XMP:all",)), str(path)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    found = json.loads(out)[0]
    found.pop("SourceFile")
    return found


def exiv2_read(path: Path) -> dict[str, str]:
    """exiv2's XMP keys and their values (exiv2 -px)."""
    need("exiv2", "exiv2")
    out = subprocess.run(["exiv2", "-px", str(path)], capture_output=True, text=True, timeout=60).stdout
    values: dict[str, str] = {}
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) == 4 and parts[0].startswith("Xmp."):
            values[parts[0]] = parts[3]
    return values


def listed(value) -> list:
    return value if isinstance(value, list) else [value]


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and modification time."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file()}
