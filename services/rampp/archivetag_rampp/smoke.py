"""The smoke RAM++: the real architecture at a tiny size, random weights, calibrated so that
some tags pass their thresholds (tags are meaningless; the identity says `smoke`)."""

from __future__ import annotations

import shutil
from pathlib import Path

from archivetag.bundled import smoke_vocabulary
from archivetag.runtime.model_card import ModelCard
from archivetag_rampp.checkpoint import save_safetensors
from archivetag_rampp.layout import CONVERTED, TAG_LIST_FILE, THRESHOLD_FILE
from archivetag_rampp.model import tiny_config
from archivetag_rampp.random_checkpoint import random_model


def write_smoke_model(target: Path, tag_list: Path | None = None, thresholds: Path | None = None) -> None:
    target.mkdir(parents=True, exist_ok=True)
    if tag_list is not None:
        names = [line.strip() for line in tag_list.read_text(encoding="utf-8").splitlines()]
        shutil.copyfile(tag_list, target / TAG_LIST_FILE)
    else:
        names = smoke_vocabulary()
        (target / TAG_LIST_FILE).write_text("\n".join(names), encoding="utf-8")
    if thresholds is not None:
        shutil.copyfile(thresholds, target / THRESHOLD_FILE)
    else:
        (target / THRESHOLD_FILE).write_text("\n".join("0.65" for _ in names), encoding="utf-8")
    model = random_model(tiny_config(len(names)), target_share=0.08)
    save_safetensors(model, target / CONVERTED)
    ModelCard.for_smoke("rampp").write(target)


def write_full_size_model(target: Path) -> None:
    """RAM++ at full size (Swin-L/384, the official 4,585 tags and thresholds shipped with archivetag), random
    weights spread as random_model does: for checks that need the real cost (speed, memory, precisions)."""
    from archivetag.bundled import RAMPP_TAG_LIST, RAMPP_THRESHOLDS
    from archivetag_rampp.model import FULL

    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(RAMPP_TAG_LIST, target / TAG_LIST_FILE)
    shutil.copyfile(RAMPP_THRESHOLDS, target / THRESHOLD_FILE)
    save_safetensors(random_model(FULL), target / CONVERTED)
    ModelCard(family="rampp", name="ram-plus-swin-large-architecture-random", smoke=True,
              source="archivetag_rampp.smoke").write(target)
