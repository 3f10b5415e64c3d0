"""Data files shipped inside the package (found through importlib.resources, from any install).

- the RAM++ tag list and per-class thresholds (recognize-anything, Apache-2.0: data/rampp/NOTICE.md),
  the default vocabulary of both taggers;
- a small word list of our own for smoke models (real architectures, tiny, random weights).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def data_file(*parts: str) -> Path:
    return Path(str(resources.files("archivetag").joinpath("data", *parts)))


RAMPP_TAG_LIST = data_file("rampp", "ram_tag_list.txt")
RAMPP_THRESHOLDS = data_file("rampp", "ram_tag_list_threshold.txt")


def smoke_vocabulary() -> list[str]:
    """Real English words about buildings (our own list), for smoke models."""
    text = data_file("smoke_vocabulary.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]
