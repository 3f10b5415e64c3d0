"""CSV and JSON lines for `archivetag export`: one row (line) per photo, for spreadsheets and catalogue imports."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path

from archivetag.export.records import PhotoRecord
from archivetag.export.xmp import Conventions, temporary_name, wanted_keywords

CSV_COLUMNS = ("path", "sha256", "keywords", "hierarchical_keywords", "view_type", "view_confidence", "caption",
               "ocr_text", "tagger", "models", "tagged_at")
# A name that is not valid UTF-8 keeps its odd bytes as \udcXX escapes (os.fsencode(path) gives them back).
ENCODING_ERRORS = "backslashreplace"


def _models(record: PhotoRecord) -> list[dict]:
    return [{"family": m.family, "name": m.name, "revision": m.revision, "weights_sha256": m.weights_sha256,
             "smoke": m.smoke} for m in record.models]


def as_json(record: PhotoRecord, conventions: Conventions) -> dict:
    flat, tree = wanted_keywords(record, conventions)
    tags = record.machine_tags(conventions.min_confidence)
    view = next((t for t in tags if t.kind == "view type"), None)
    return {
        "path": str(record.path),
        "sha256": record.sha256,
        "keywords": flat,
        "hierarchical_keywords": tree,
        "tags": [{"name": t.name, "confidence": t.confidence, "model": t.model, "revision": t.revision}
                 for t in tags if t.kind == "tag"],
        "view_type": ({"name": view.name, "confidence": view.confidence, "model": view.model,
                       "revision": view.revision} if view else None),
        "caption": record.caption,
        "ocr_text": record.ocr_text,
        "tagger": record.tagger,
        "fallback_reason": record.fallback_reason,
        "models": _models(record),
        "tagged_at": record.tagged_at,
    }


def render_jsonl(records: list[PhotoRecord], conventions: Conventions) -> str:
    return "".join(json.dumps(as_json(r, conventions), ensure_ascii=False) + "\n" for r in records)


def render_csv(records: list[PhotoRecord], conventions: Conventions) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180, as spreadsheets expect
    writer.writerow(CSV_COLUMNS)
    for record in records:
        row = as_json(record, conventions)
        view = row["view_type"]
        writer.writerow([
            row["path"], row["sha256"], "; ".join(row["keywords"]), "; ".join(row["hierarchical_keywords"]),
            view["name"] if view else "", view["confidence"] if view else "", row["caption"], row["ocr_text"],
            row["tagger"], "; ".join(f"{m['name']}@{m['revision'] or '?'}" for m in row["models"]), row["tagged_at"],
        ])
    return out.getvalue()


def write_text(destination: str, text: str) -> bool:
    """Write to a file (atomically; untouched when it already holds exactly this) or to stdout ("-").
    True when something was written."""
    data = text.encode("utf-8", ENCODING_ERRORS)
    if destination == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return True
    target = Path(destination).expanduser()
    try:
        if target.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    temp = temporary_name(target, "")
    try:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if target.exists():
            os.chmod(temp, target.stat().st_mode & 0o7777)
        os.replace(temp, target)
    finally:
        if temp.exists():
            temp.unlink()
    return True
