"""SigLIP's text side served without torch equals transformers, on full-size random-weight checkpoints of
SigLIP (google/siglip-base-patch16-224's architecture, SentencePiece tokenizer) and SigLIP 2 FixRes
(google/siglip2-base-patch16-224's: Gemma tokenizer, 256000-token vocabulary), built offline:

- token ids identical to transformers' tokenizer for strings with case, punctuation, whitespace,
  non-ASCII, special tokens and over-long input;
- EmbedText's embeddings (the service's tokenizer + ONNX text tower) vs get_text_features, normalised:
  cosine >= 0.9999;
- label probabilities (the service's Classify with a label set) vs sigmoid(logits_per_image) within 1e-4.

Each checkpoint is built and exported once per session (tests/siglip.full_size_export).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from archivetag.cli import parse_serve_settings
from archivetag.v1 import view_type_pb2
from archivetag_siglip import layout
from archivetag_siglip.backend import SiglipBackend
from archivetag_siglip.layout import read_json
from archivetag_siglip.text import TextTokenizer, TokenizerSpec
from tests.siglip import full_size_export
from tests.support.image_corpus import scene

TRICKY = [
    "a photo of a hospital.",
    "An OPERATING theatre!!",
    "an operating theatre",
    "STAIRCASE with Graffiti",
    "   spaces\t\tand\nnewlines   ",
    "punctuation: (brackets), 'quotes', \"double\"; semi-colons & ampersands... #1 @home 100%",
    "Café Müller — Zürich, Größe 1920s",
    "naïve façade, coöperate, ÉCOLE",
    "ΟΔΟΣ ΣΤΑΘΜΟΣ",
    "Ein Foto eines verlassenen Krankenhauses.",
    "une photo d'une église abandonnée",
    "病院の廊下と階段",
    "заброшенная больница",
    "emoji 🏚️ house 🏥",
    "tab\tseparated\u00a0non-breaking\u2003em-space",
    "</s> an eos in the text",
    "x <unk> y",
    "<pad>",
    "▁leading▁underscores▁",
    "!!!",
    "!!! x",
    "a</s>b",
    "ﬁnance ½ ①",
    "ＦＵＬＬ　ＷＩＤＴＨ",
    "İstanbul",
    "\x1c\x1dsep\x85x",
    "a",
    "a very long description of an abandoned sanatorium with peeling paint " * 13,
    "ü" * 300,
]


def reference_tokenizer(kind: str, checkpoint: Path):
    """transformers' own tokenizer for the checkpoint, loaded here, not through the exporter."""
    if kind == "siglip":
        from transformers import SiglipTokenizer

        return SiglipTokenizer.from_pretrained(str(checkpoint))
    from transformers.models.siglip2.tokenization_siglip2 import Siglip2Tokenizer

    return Siglip2Tokenizer.from_pretrained(str(checkpoint), padding_side="right")


def transformers_ids(tokenizer, texts: list[str]) -> np.ndarray:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids = tokenizer(texts, padding="max_length", max_length=64, truncation=True)["input_ids"]
    return np.asarray(ids, dtype=np.int64)


@pytest.fixture(scope="module", params=["siglip", "siglip2"])
def full(request):
    return full_size_export(request.param)


@pytest.fixture(scope="module")
def model(full):
    import torch
    from transformers import SiglipModel

    return SiglipModel.from_pretrained(str(full.checkpoint), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def backend(full, tmp_path_factory):
    models = tmp_path_factory.mktemp("siglip-full-models")  # pytest removes it, unlike mkdtemp
    (models / "siglip").symlink_to(full.export.resolve(), target_is_directory=True)
    served = SiglipBackend(parse_serve_settings("siglip", "--models", str(models), "--device", "cpu"))
    served.load()
    return served


def test_the_served_tokenizer_gives_transformers_token_ids_for_tricky_strings(full):
    manifest = read_json(full.export / layout.MANIFEST)
    spec = TokenizerSpec.from_dict(manifest["text_tower"]["tokenizer"])
    assert spec.max_length == 64
    assert spec.scheme == ("siglip-sentencepiece" if full.kind == "siglip" else "tokenizers")
    served = TextTokenizer(full.export, spec)(TRICKY)
    expected = transformers_ids(reference_tokenizer(full.kind, full.checkpoint), TRICKY)
    for text, ours, theirs in zip(TRICKY, served, expected):
        assert ours.tolist() == theirs.tolist(), text
    # Both lower-case; SigLIP also drops punctuation, SigLIP 2 keeps it. Padding fills all 64 places.
    if full.kind == "siglip":
        assert served[1].tolist() == served[2].tolist()
    else:
        assert served[1][:3].tolist() == served[2][:3].tolist() and served[1].tolist() != served[2].tolist()
    assert served.shape == (len(TRICKY), 64)


def test_embed_text_equals_get_text_features_normalised(full, model, backend):
    import torch

    item = backend.prepare_text(TRICKY)
    result = backend.infer_batch([item], lambda: False)[0]
    ids = transformers_ids(reference_tokenizer(full.kind, full.checkpoint), TRICKY)
    with torch.no_grad():
        expected = model.get_text_features(input_ids=torch.from_numpy(ids)).pooler_output.double().numpy()
    expected /= np.linalg.norm(expected, axis=-1, keepdims=True)
    cosines = np.sum(expected * result.embeddings.astype(np.float64), axis=-1)
    assert cosines.min() >= 0.9999, dict(zip(TRICKY, cosines.round(6)))
    assert result.logit_scale == pytest.approx(float(model.logit_scale.detach()), abs=1e-6)
    assert result.logit_bias == pytest.approx(float(model.logit_bias.detach()), abs=1e-6)


def test_label_probabilities_equal_sigmoid_of_logits_per_image(full, model, backend):
    import torch
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    prompts = ["a photo of a hospital.", "a photo of a church.", "Ein Foto einer Fabrik.", "an aerial view"]
    names = ["hospital", "church", "factory", "aerial"]
    label_set = view_type_pb2.LabelSet(labels=[view_type_pb2.Label(name=n, prompts=[p])
                                               for n, p in zip(names, prompts)])
    images = [scene(seed) for seed in (1, 2, 3)]
    items = [backend.prepare(image, view_type_pb2.ClassifyRequest(labels=label_set)) for image in images]
    results = backend.infer_batch(items, lambda: False)
    pixels = SiglipImageProcessorPil.from_pretrained(str(full.checkpoint))(images=images,
                                                                          return_tensors="pt")["pixel_values"]
    ids = torch.from_numpy(transformers_ids(reference_tokenizer(full.kind, full.checkpoint), prompts))
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=pixels).logits_per_image.double()
    expected = torch.sigmoid(logits).numpy()
    for row, logit_row, result in zip(expected, logits.numpy(), results):
        got = {name: (probability, logit) for name, probability, logit in result.labels}
        for name, probability, logit in zip(names, row, logit_row):
            assert got[name][0] == pytest.approx(probability, abs=1e-4), name
            # Random weights put most probabilities near 0; the logits show the agreement at any scale.
            assert got[name][1] == pytest.approx(logit, abs=2e-3), name
    # A label with several prompts is the mean of their normalised embeddings, and is cached (bounded).
    assert len(backend.label_cache) == len(prompts)
