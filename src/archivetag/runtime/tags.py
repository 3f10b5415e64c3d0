"""Tag vocabularies and the one rule that turns confidences into a request's tags (both taggers).

The rule: without a request threshold, a tag is kept when its confidence is strictly over its
own threshold (RAM++'s per-class thresholds, upstream's rule; Florence-2's minimum confidence);
a request threshold replaces every tag's own one, and a request threshold of 0 keeps every
candidate. Most confident first, ties in vocabulary order; at most max_tags (0: no cap).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from archivetag.runtime.errors import InvalidInput, ModelLoadError


@dataclass
class TagVocabulary:
    """Tag names in model order (line t of the file is tag t) and, where the model has them, per-tag thresholds."""

    names: list[str]
    thresholds: np.ndarray  # float32 [T]: each tag's own threshold
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self):
        self.index = {name: i for i, name in enumerate(self.names)}

    @classmethod
    def read(cls, tag_list: Path, thresholds: Path | None = None, default_threshold: float = 0.0,
             what: str = "tag list") -> TagVocabulary:
        """Read a tag list (and a thresholds file beside it, one number per tag); ModelLoadError saying why not."""
        try:
            text = Path(tag_list).read_text(encoding="utf-8")
        except OSError as exc:
            raise ModelLoadError(f"{what} {tag_list} cannot be read: {exc}") from None
        # splitlines as upstream: line t is tag t; the last line has no newline.
        names = [line.strip() for line in text.splitlines()]
        if not any(names):
            raise ModelLoadError(f"{what} {tag_list} is empty")
        if thresholds is None or not Path(thresholds).is_file():
            values = np.full(len(names), default_threshold, dtype=np.float32)
        else:
            try:
                values = np.array([float(v) for v in Path(thresholds).read_text().split()], dtype=np.float32)
            except ValueError as exc:
                raise ModelLoadError(f"{thresholds}: not a list of numbers ({exc})") from None
            if len(values) != len(names):
                raise ModelLoadError(f"{thresholds} has {len(values)} thresholds for {len(names)} tags in {tag_list}")
        return cls(names, values)

    def subset(self, names: Sequence[str], model: str) -> list[int]:
        """Indices (sorted) of the tags a request asks for; unknown names are the request's fault."""
        unknown = [n for n in names if n not in self.index]
        if unknown:
            shown = ", ".join(repr(n) for n in unknown[:5])
            raise InvalidInput(f"{len(unknown)} requested tag(s) are not in the {model} vocabulary: {shown}",
                               reason="FIELD_INVALID", field="vocabulary")
        return sorted({self.index[n] for n in names})


def select_tags(names: Sequence[str], confidences: np.ndarray, own_thresholds: np.ndarray | float,
                threshold: float | None = None, max_tags: int = 0) -> list[tuple[str, float]]:
    """The request's tags among candidates (names[i] with confidences[i], given in vocabulary order)."""
    confidences = np.asarray(confidences, dtype=np.float32)
    if threshold is None:
        chosen = np.nonzero(confidences > own_thresholds)[0]
    elif threshold <= 0:
        chosen = np.arange(len(confidences))
    else:
        chosen = np.nonzero(confidences > threshold)[0]
    order = chosen[np.argsort(-confidences[chosen], kind="stable")]  # stable: ties keep vocabulary order
    if max_tags:
        order = order[:max_tags]
    return [(names[i], float(confidences[i])) for i in order]
