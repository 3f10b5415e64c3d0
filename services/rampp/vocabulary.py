"""RAM++ tag names, per-class thresholds, and the rule that turns probabilities into tags (spec §7)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from archivetag.runtime.errors import InvalidInput, ModelLoadError

TAG_LIST_FILE = "ram_tag_list.txt"
THRESHOLD_FILE = "ram_tag_list_threshold.txt"
DEFAULT_THRESHOLD = 0.68  # upstream's default, used only where a threshold file is absent


@dataclass
class Vocabulary:
    names: list[str]
    thresholds: np.ndarray  # float32 [T]

    def __post_init__(self):
        self.index = {name: i for i, name in enumerate(self.names)}

    @classmethod
    def read(cls, tag_list: Path, thresholds: Path | None) -> "Vocabulary":
        if not tag_list.is_file():
            raise ModelLoadError(f"RAM++ tag list {tag_list} is missing; `archivetag models pull --only rampp` fetches it")
        # splitlines as upstream: line t is tag t; the last line has no newline.
        names = [line.strip() for line in tag_list.read_text(encoding="utf-8").splitlines()]
        if thresholds is None or not thresholds.is_file():
            values = np.full(len(names), DEFAULT_THRESHOLD, dtype=np.float32)
        else:
            try:
                values = np.array([float(v) for v in thresholds.read_text().split()], dtype=np.float32)
            except ValueError as exc:
                raise ModelLoadError(f"{thresholds}: not a list of numbers ({exc})") from None
            if len(values) != len(names):
                raise ModelLoadError(f"{thresholds} has {len(values)} thresholds for {len(names)} tags in {tag_list}")
        return cls(names, values)

    def subset(self, names: list[str]) -> list[int]:
        """Indices of the requested tags; unknown names are the request's fault."""
        unknown = [n for n in names if n not in self.index]
        if unknown:
            shown = ", ".join(repr(n) for n in unknown[:5])
            raise InvalidInput(f"{len(unknown)} requested tag(s) are not in the RAM++ vocabulary: {shown}",
                               reason="FIELD_INVALID", field="vocabulary")
        return sorted({self.index[n] for n in names})


def select_tags(probabilities: np.ndarray, thresholds: np.ndarray, names: list[str],
                threshold: float | None = None, max_tags: int = 0) -> list[tuple[str, float]]:
    """Tags whose probability is strictly over their threshold (upstream's rule), most probable first.

    threshold: one value for every tag instead of the per-class ones; 0 returns every tag."""
    if threshold is None:
        chosen = np.nonzero(probabilities > thresholds)[0]
    elif threshold <= 0:
        chosen = np.arange(len(probabilities))
    else:
        chosen = np.nonzero(probabilities > threshold)[0]
    # Stable sort: equal probabilities keep the vocabulary order.
    order = chosen[np.argsort(-probabilities[chosen], kind="stable")]
    if max_tags:
        order = order[:max_tags]
    return [(names[i], float(probabilities[i])) for i in order]
