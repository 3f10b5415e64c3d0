"""SigLIP's text side without torch: the tokenizer (the `tokenizers` library) and the text tower (ONNX Runtime).

The exporter writes the checkpoint's tokenizer as a `tokenizers` JSON file and records how transformers
tokenizes with it (docs/models/siglip.md, "Text"); this module reproduces that, token for token:

- scheme "siglip-sentencepiece" (SigLIP: transformers' SiglipTokenizer, SentencePiece): the text is split
  on the special tokens ("</s>", "<unk>") first; every other piece is canonicalised as SiglipTokenizer
  does (lower-cased, ASCII punctuation removed, runs of whitespace made one space, stripped), then cut
  into SentencePiece pieces (the first piece of the text with SentencePiece's "▁" prefix, pieces after a
  special token without it); "</s>" is appended unless the text already ends with it; truncated to
  max_length - 1 pieces plus "</s>".
- scheme "tokenizers" (SigLIP 2: a Gemma tokenizer, already a `tokenizers` pipeline in transformers):
  the file holds the whole pipeline (normalizer, lower-casing for SigLIP 2, post-processor adding
  "<eos>"); truncation and padding are set as transformers sets them.

Either way every text is padded to max_length (padding="max_length"): SigLIP's text tower pools the
last position and takes no attention mask, so the padding is part of the embedding.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SIGLIP_SCHEME = "siglip-sentencepiece"
TOKENIZERS_SCHEME = "tokenizers"
SCHEMES = (SIGLIP_SCHEME, TOKENIZERS_SCHEME)
SPIECE_UNDERLINE = "\u2581"

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_WHITESPACE = re.compile(r"\s+")


def canonicalize(text: str, lowercase: bool = True) -> str:
    """SiglipTokenizer.canonicalize_text: lower-case, drop ASCII punctuation, one space between words, stripped."""
    if lowercase:
        text = text.lower()
    text = text.translate(_PUNCTUATION)
    return _WHITESPACE.sub(" ", text).strip()


@dataclass(frozen=True)
class TokenizerSpec:
    """How the exported tokenizer is used; written by the exporter into the manifest."""

    file: str
    scheme: str
    max_length: int
    pad_id: int
    eos_id: int
    pad_token: str
    padding_side: str = "right"
    lowercase: bool = True
    special_tokens: tuple[tuple[str, int], ...] = ()  # (token, id): split out before canonicalising

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenizerSpec:
        if data.get("scheme") not in SCHEMES:
            raise ValueError(f"tokenizer scheme {data.get('scheme')!r} is not one of {', '.join(SCHEMES)}")
        if data.get("padding") != "max_length":
            raise ValueError("the text tower's tokenizer must pad to max_length (padding=\"max_length\")")
        return cls(
            file=str(data["file"]), scheme=str(data["scheme"]), max_length=int(data["max_length"]),
            pad_id=int(data["pad_id"]), eos_id=int(data["eos_id"]), pad_token=str(data["pad_token"]),
            padding_side=str(data.get("padding_side", "right")), lowercase=bool(data.get("lowercase", True)),
            special_tokens=tuple((str(t), int(i)) for t, i in data.get("special_tokens", [])),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file, "scheme": self.scheme, "padding": "max_length", "truncation": True,
            "max_length": self.max_length, "pad_id": self.pad_id, "eos_id": self.eos_id, "pad_token": self.pad_token,
            "padding_side": self.padding_side, "lowercase": self.lowercase,
            "special_tokens": [[t, i] for t, i in self.special_tokens],
        }


class TextTokenizer:
    """Texts -> (N, max_length) int64 token ids, as transformers' tokenizer of the checkpoint gives them."""

    def __init__(self, folder: Path, spec: TokenizerSpec):
        from tokenizers import Tokenizer, pre_tokenizers

        self.spec = spec
        text = (Path(folder) / spec.file).read_text(encoding="utf-8")
        self._first = Tokenizer.from_str(text)
        if spec.scheme == SIGLIP_SCHEME:
            self._first.no_padding()
            self._first.no_truncation()
            # Pieces after a special token: SiglipTokenizer encodes them without SentencePiece's "▁" prefix.
            self._rest = Tokenizer.from_str(text)
            self._rest.no_padding()
            self._rest.no_truncation()
            self._rest.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPIECE_UNDERLINE,
                                                                prepend_scheme="never", split=True)
            specials = sorted((t for t, _ in spec.special_tokens), key=len, reverse=True)
            self._special_ids = dict(spec.special_tokens)
            self._split = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None
        else:
            self._first.enable_truncation(spec.max_length)
            self._first.enable_padding(length=spec.max_length, direction=spec.padding_side, pad_id=spec.pad_id,
                                       pad_token=spec.pad_token)

    def __call__(self, texts: list[str]) -> np.ndarray:
        if self.spec.scheme == TOKENIZERS_SCHEME:
            rows = [encoding.ids for encoding in self._first.encode_batch(list(texts), add_special_tokens=True)]
        else:
            rows = [self._siglip_ids(text) for text in texts]
        return np.asarray(rows, dtype=np.int64).reshape(len(rows), self.spec.max_length)

    def _siglip_ids(self, text: str) -> list[int]:
        spec = self.spec
        pieces = self._split.split(text) if self._split else [text]
        ids: list[int] = []
        for index, piece in enumerate(pieces):
            if index % 2 == 1:  # a special token (the split's captured group)
                ids.append(self._special_ids[piece])
                continue
            canonical = canonicalize(piece.replace(SPIECE_UNDERLINE, " ") if index == 0 else piece, spec.lowercase)
            if not canonical:
                continue
            tokenizer = self._first if index == 0 else self._rest
            ids.extend(tokenizer.encode(canonical, add_special_tokens=False).ids)
        if not ids or ids[-1] != spec.eos_id:
            ids.append(spec.eos_id)
        if len(ids) > spec.max_length:
            ids = ids[:spec.max_length - 1] + [spec.eos_id]
        padding = [spec.pad_id] * (spec.max_length - len(ids))
        return ids + padding if spec.padding_side == "right" else padding + ids


class TextTower:
    """The exported text tower: token ids -> L2-normalised embeddings (what get_text_features pools)."""

    def __init__(self, session, tokenizer: TextTokenizer, max_batch: int = 64):
        self.session = session
        self.tokenizer = tokenizer
        self.max_batch = max_batch

    def embed_ids(self, ids: np.ndarray) -> np.ndarray:
        rows = []
        for start in range(0, len(ids), self.max_batch):
            chunk = np.ascontiguousarray(ids[start:start + self.max_batch], dtype=np.int64)
            rows.append(self.session.run(None, {"input_ids": chunk})[0])
        embeddings = np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)
        norms = np.linalg.norm(embeddings, axis=-1, keepdims=True)
        return embeddings / np.maximum(norms, 1e-12)

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embed_ids(self.tokenizer(texts))
