"""Tags from a generated caption, with confidences from the tokens that spell them.

A tag is a vocabulary phrase found in the caption on word boundaries, the longest phrase
first (so "stained glass window" wins over "window"), singular and plural folded together.
Its confidence is exp(mean log-probability) of the generated tokens whose text overlaps the
phrase: the model's own probabilities, nothing invented. Pure functions, no torch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")


def fold(word: str) -> str:
    """A word's singular-ish form, so "windows"/"window" and "churches"/"church" meet."""
    w = word.lower()
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith(("ches", "shes", "sses", "xes", "zes")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def phrase_key(phrase: str) -> tuple[str, ...]:
    return tuple(fold(w) for w in _WORD.findall(phrase.lower()))


@dataclass(frozen=True)
class PhraseIndex:
    """A tag vocabulary's names, indexed by their folded word sequence, for finding them in text."""

    names: tuple[str, ...]
    by_key: dict
    longest: int

    @classmethod
    def from_names(cls, names: Iterable[str]) -> PhraseIndex:
        by_key: dict[tuple[str, ...], str] = {}
        kept = []
        for name in names:
            name = name.strip()
            key = phrase_key(name)
            if not key or key in by_key:
                continue
            by_key[key] = name
            kept.append(name)
        return cls(tuple(kept), by_key, max((len(k) for k in by_key), default=0))


@dataclass(frozen=True)
class PhraseMatch:
    name: str  # the vocabulary's name for it
    start: int  # character span in the caption
    end: int


def find_phrases(caption: str, vocabulary: PhraseIndex) -> list[PhraseMatch]:
    """Vocabulary phrases in the caption, left to right, the longest phrase at each place first."""
    words = [(m.group(0), m.start(), m.end()) for m in _WORD.finditer(caption.lower())]
    keys = [fold(w) for w, _, _ in words]
    found = []
    i = 0
    while i < len(words):
        for length in range(min(vocabulary.longest, len(words) - i), 0, -1):
            name = vocabulary.by_key.get(tuple(keys[i:i + length]))
            if name is not None:
                found.append(PhraseMatch(name, words[i][1], words[i + length - 1][2]))
                i += length
                break
        else:
            i += 1
    return found


def token_spans(pieces: Sequence[str]) -> list[tuple[int, int]]:
    """Character span of each decoded token piece in their concatenation."""
    spans, at = [], 0
    for piece in pieces:
        spans.append((at, at + len(piece)))
        at += len(piece)
    return spans


def tag_confidences(
    text: str,
    pieces: Sequence[str],
    logprobs: Sequence[float],
    vocabulary: PhraseIndex,
    scored: Sequence[bool] | None = None,
) -> list[tuple[str, float]]:
    """Tags of `text` (the concatenation of `pieces`), each with exp(mean logp) of its tokens.

    `logprobs[i]` is the log-probability of piece i; `scored[i]` False leaves a token out
    (forced tokens such as <s> and </s>, whose probability is 1 by construction). A tag seen
    several times keeps its best occurrence. Most confident first.
    """
    if len(pieces) != len(logprobs):
        raise ValueError("one log-probability per token piece")
    scored = [True] * len(pieces) if scored is None else list(scored)
    spans = token_spans(pieces)
    best: dict[str, float] = {}
    for match in find_phrases(text, vocabulary):
        values = [lp for (s, e), lp, ok in zip(spans, logprobs, scored) if ok and s < match.end and e > match.start]
        if not values:
            continue
        confidence = min(1.0, math.exp(sum(values) / len(values)))
        if confidence <= 0.0:
            continue
        if confidence > best.get(match.name, 0.0):
            best[match.name] = confidence
    return sorted(best.items(), key=lambda item: (-item[1], item[0]))
