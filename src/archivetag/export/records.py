"""What `archivetag export` reads from the result store: one record per photo path with a good result.

Only the columns export needs are read, with its own SQL (the store may gain columns and tables;
export does not depend on them). A path whose result is an error, or that has no result, is counted
and left out; so is a result from smoke models (random weights) unless asked for.
"""

from __future__ import annotations

import os
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from archivetag.results import path_from_key

# Confidences are kept to this many decimals in every export (more would be noise, and a
# float's last digits would make two exports of the same answer differ).
DECIMALS = 3
UNKNOWN_VIEW = {"", "unknown", "VIEW_TYPE_UNSPECIFIED"}


@dataclass(frozen=True)
class Model:
    family: str
    name: str
    revision: str
    weights_sha256: str
    smoke: bool


@dataclass(frozen=True)
class MachineTag:
    """One tag as archivetag exports it: a tagger's tag (kind "tag") or the view type (kind "view type")."""

    name: str
    kind: str
    confidence: float
    model: str
    revision: str


@dataclass
class PhotoRecord:
    path: Path
    sha256: str
    tagged_at: str
    tagger: str
    fallback_reason: str
    caption: str
    ocr_text: str
    view_type: str
    view_confidence: float
    models: list[Model] = field(default_factory=list)
    tags: list[MachineTag] = field(default_factory=list)  # in the tagger's order (highest confidence first)

    @property
    def smoke(self) -> bool:
        return any(m.smoke for m in self.models)

    def machine_tags(self, floor: float) -> list[MachineTag]:
        """The tags at or above the confidence floor, the view type first (when SigLIP named one)."""
        chosen = [t for t in self.tags if t.confidence >= floor]
        if self.view_type not in UNKNOWN_VIEW and self.view_confidence >= floor:
            siglip = next((m for m in self.models if m.family == "siglip"), None)
            chosen.insert(0, MachineTag(self.view_type, "view type", round(self.view_confidence, DECIMALS),
                                        siglip.name if siglip else "", siglip.revision if siglip else ""))
        return chosen


@dataclass
class Selection:
    records: list[PhotoRecord]
    not_ok: int = 0          # paths whose result is an error (or that have none)
    smoke: int = 0           # good results from smoke models, left out
    not_in_store: list[Path] = field(default_factory=list)  # paths given that match nothing


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def select(db: sqlite3.Connection, paths: list[Path] | None, include_smoke: bool = False) -> Selection:
    """The photos to export, in path order: all in the store, or those at or under the paths given."""
    roots = [Path(os.path.realpath(p)) for p in paths] if paths else []
    rows = db.execute(
        "SELECT f.path, f.sha256, r.id, r.status, r.tagged_at, r.tagger, r.fallback_reason, r.caption, "
        "r.view_type, r.view_confidence FROM files f LEFT JOIN results r ON r.id = f.result_id"
    ).fetchall()
    chosen = []
    matched_roots: set[Path] = set()
    not_ok = 0
    for key, sha256, result_id, status, tagged_at, tagger, fallback, caption, view, view_conf in rows:
        path = path_from_key(key)
        if roots:
            hits = [root for root in roots if _inside(path, [root])]
            if not hits:
                continue
            matched_roots.update(hits)
        if status != "ok":
            not_ok += 1
            continue
        chosen.append((path, result_id, PhotoRecord(
            path=path, sha256=sha256, tagged_at=tagged_at or "", tagger=tagger or "", fallback_reason=fallback or "",
            caption=(caption or "").strip(), ocr_text="", view_type=view or "",
            view_confidence=round(view_conf or 0.0, DECIMALS))))
    chosen.sort(key=lambda item: os.fsencode(item[0]))
    ids = sorted({result_id for _, result_id, _ in chosen})
    models, tags, ocr = _details(db, ids)
    unmatched = [Path(p) for p in (paths or []) if Path(os.path.realpath(p)) not in matched_roots]
    selection = Selection([], not_ok=not_ok, not_in_store=unmatched)
    for _, result_id, record in chosen:
        record.models = models.get(result_id, [])
        record.ocr_text = ocr.get(result_id, "")
        by_name = {m.name: m for m in record.models}
        tagger_model = next((m for m in record.models if m.family == record.tagger), None)
        for name, confidence, source in tags.get(result_id, []):
            model = by_name.get(source) or tagger_model
            record.tags.append(MachineTag(name, "tag", round(confidence, DECIMALS), source,
                                          model.revision if model else ""))
        if record.smoke and not include_smoke:
            selection.smoke += 1
            continue
        selection.records.append(record)
    return selection


def _chunks(ids: list[int], size: int = 500) -> list[list[int]]:
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def _details(db: sqlite3.Connection, ids: list[int]) -> tuple[dict[int, list[Model]],
                                                             dict[int, list[tuple[str, float, str]]], dict[int, str]]:
    models: dict[int, list[Model]] = defaultdict(list)
    tags: dict[int, list[tuple[str, float, str]]] = defaultdict(list)
    ocr: dict[int, str] = {}
    for chunk in _chunks(ids):
        marks = ",".join("?" * len(chunk))
        for result_id, family, name, revision, weights, smoke in db.execute(
                "SELECT result_id, family, name, revision, weights_sha256, smoke FROM result_models "
                f"WHERE result_id IN ({marks}) ORDER BY rowid", chunk):
            models[result_id].append(Model(family or "", name or "", revision or "", weights or "", bool(smoke)))
        for result_id, name, confidence, source in db.execute(
                f"SELECT result_id, name, confidence, source_model FROM tags WHERE result_id IN ({marks}) "
                "ORDER BY rowid", chunk):
            tags[result_id].append((name, confidence, source))
        for result_id, status, text in db.execute(
                f"SELECT result_id, status, text FROM ocr_texts WHERE result_id IN ({marks})", chunk):
            if status == "read":
                ocr[result_id] = text.strip()
    return models, tags, ocr
