"""Shared facts about smoke models: small random-weight models for running the stack anywhere.

Smoke models have the real architectures at a tiny size and random weights: their tags
are meaningless, and every identity they report carries SMOKE_MARK so nobody mistakes
them for real tags. Each service writes its own (services/*/smoke.py); `archivetag
models smoke` calls them all.
"""

from __future__ import annotations

from importlib import resources

SMOKE_MARK = "smoke"


def smoke_vocabulary() -> list[str]:
    """Real English words about buildings (our own list), used where no RAM++ tag list is at hand."""
    text = resources.files("archivetag").joinpath("data/smoke_vocabulary.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]
