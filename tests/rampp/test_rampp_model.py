"""RAM++: checkpoint layout, strict loading, numerics and tag selection, in process.

Random weights of the real architecture (docs/models/rampp.md). A tiny configuration
covers the fast checks; one full-size checkpoint checks loading and tagging at the real size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from archivetag.runtime.errors import ModelLoadError
from archivetag_rampp.checkpoint import (
    RECOMPUTED, convert, load_model, official_state_dict, required_official_shapes,
)
from archivetag_rampp.model import FULL, RamPlus, tiny_config
from archivetag_rampp.preprocess import to_array, to_pixels
from archivetag_rampp.random_checkpoint import random_model, write_official_checkpoint
from archivetag.bundled import RAMPP_TAG_LIST, RAMPP_THRESHOLDS
from archivetag.runtime.tags import TagVocabulary, select_tags

DATA = Path(__file__).resolve().parent / "data"  # the official checkpoint's state-dict manifest (docs/models/rampp.md)
MANIFEST = json.loads((DATA / "state_dict_shapes.json").read_text())
SAMPLES = Path(__file__).resolve().parents[2] / "src" / "archivetag" / "samples"


@pytest.fixture(scope="module")
def tiny_pth(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rampp") / "tiny.pth"
    write_official_checkpoint(random_model(tiny_config(40)), path)
    return path


@pytest.fixture(scope="module")
def tiny(tiny_pth) -> RamPlus:
    return load_model(tiny_pth, tiny_config(40))[0]


def photos(size: int = 64, n: int = 4) -> torch.Tensor:
    images = [Image.open(p).convert("RGB") for p in sorted(SAMPLES.glob("*.jpg"))][:n]
    while len(images) < n:
        images.append(images[0].rotate(90 * len(images)))
    return to_pixels(images, size)


# -- layout -------------------------------------------------------------------------------
def test_generated_official_layout_matches_the_manifest_key_for_key_and_shape_for_shape():
    with torch.device("meta"):
        model = RamPlus(FULL)
    written = {k: list(v.shape) for k, v in official_state_dict(model).items()}
    assert written == {k: list(v) for k, v in MANIFEST.items()}


def test_loader_requires_every_manifest_key_except_the_recomputed_buffers():
    with torch.device("meta"):
        model = RamPlus(FULL)
    required = required_official_shapes(model)
    expected = {k: tuple(v) for k, v in MANIFEST.items() if not any(b in k for b in RECOMPUTED)}
    assert required == expected
    assert len(MANIFEST) - len(required) == 35
    assert required["label_embed"] == (233835, 512)


# -- full size ------------------------------------------------------------------------------
def test_full_size_random_checkpoint_in_the_official_layout_loads_strictly_and_tags_an_image(tmp_path):
    path = tmp_path / "ram_plus_swin_large_14m.pth"
    write_official_checkpoint(random_model(FULL), path, extra_entries=True)  # optimizer etc. are ignored
    model, unexpected, _ = load_model(path)
    assert unexpected == []
    assert model.config == FULL
    vocab = TagVocabulary.read(RAMPP_TAG_LIST, RAMPP_THRESHOLDS)
    with torch.inference_mode():
        probs = torch.sigmoid(model(photos(384, 1)))[0].numpy()
    tags = select_tags(vocab.names, probs, vocab.thresholds)
    assert probs.shape == (4585,)
    assert 0 < len(tags) < 1000
    assert all(p > vocab.thresholds[vocab.index[n]] for n, p in tags)


# -- numerics -------------------------------------------------------------------------------
def test_a_batch_of_n_equals_n_single_calls(tiny):
    pixels = photos()
    with torch.inference_mode():
        batched = tiny(pixels)
        single = torch.cat([tiny(pixels[i:i + 1]) for i in range(len(pixels))])
    assert (batched - single).abs().max() <= 1e-5


def test_a_vocabulary_subset_gives_the_same_probabilities_as_the_full_run(tiny):
    pixels = photos(n=2)
    subset = torch.tensor([3, 7, 21, 39])
    with torch.inference_mode():
        full = torch.sigmoid(tiny(pixels))[:, subset]
        part = torch.sigmoid(tiny(pixels, subset))
    assert (full - part).abs().max() <= 1e-6


def test_generator_spreads_probabilities_so_some_tags_pass_and_some_do_not(tiny):
    with torch.inference_mode():
        probs = torch.sigmoid(tiny(photos()))
    passed = (probs > 0.65).float().mean()
    assert 0.0 < passed < 0.5
    assert probs.min() < 0.3


def test_the_ten_tags_whose_threshold_is_1_never_fire_even_at_probability_1():
    vocab = TagVocabulary.read(RAMPP_TAG_LIST, RAMPP_THRESHOLDS)
    model = random_model(tiny_config(len(vocab.names), descriptions_per_tag=2))
    with torch.no_grad():
        model.fc.bias.fill_(60.0)  # every sigmoid saturates to exactly 1.0 in float32
        probs = torch.sigmoid(model(photos(n=1)))[0].numpy()
    assert (probs == 1.0).all()
    tags = {name for name, _ in select_tags(vocab.names, probs, vocab.thresholds)}
    never = {vocab.names[i] for i in np.nonzero(vocab.thresholds >= 1.0)[0]}
    assert len(never) == 10
    assert not tags & never
    assert len(tags) == len(vocab.names) - 10


def test_a_tiny_checkpoint_loads_without_being_told_its_size(tiny_pth):
    """`models pull` and `convert-rampp` pass no size: the shapes say which known architecture it is."""
    model, _, _ = load_model(tiny_pth)
    assert model.config == tiny_config(40)


# -- broken checkpoints ---------------------------------------------------------------------
def _rewrite(src: Path, dst: Path, edit) -> Path:
    checkpoint = torch.load(src, weights_only=True)
    edit(checkpoint["model"])
    torch.save(checkpoint, dst)
    return dst


def test_a_checkpoint_without_label_embed_is_refused_naming_the_key(tiny_pth, tmp_path):
    path = _rewrite(tiny_pth, tmp_path / "no_label.pth", lambda sd: sd.pop("label_embed"))
    with pytest.raises(ModelLoadError, match="label_embed"):
        load_model(path, tiny_config(40))


def test_a_misshapen_weight_is_refused_naming_the_key_and_both_shapes(tiny_pth, tmp_path):
    def shrink(sd):
        sd["label_embed"] = sd["label_embed"][:-3]

    path = _rewrite(tiny_pth, tmp_path / "short.pth", shrink)
    with pytest.raises(ModelLoadError, match=r"'label_embed' has shape \[117, 32\], expected \[120, 32\]"):
        load_model(path, tiny_config(40))


def test_a_truncated_file_is_a_clear_error(tiny_pth, tmp_path):
    path = tmp_path / "truncated.pth"
    path.write_bytes(tiny_pth.read_bytes()[: tiny_pth.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="not a readable RAM\\+\\+ checkpoint"):
        load_model(path, tiny_config(40))


def test_legacy_vision_multi_names_load_and_extra_keys_are_reported_not_fatal(tiny, tiny_pth, tmp_path):
    def legacy(sd):
        for key in [k for k in sd if k.startswith("tagging_head.")]:
            sd[key.replace("tagging_head", "vision_multi")] = sd.pop(key)
        sd["text_encoder.unused.weight"] = torch.zeros(2)

    model, unexpected, _ = load_model(_rewrite(tiny_pth, tmp_path / "legacy.pth", legacy), tiny_config(40))
    assert unexpected == ["text_encoder.unused.weight"]
    with torch.inference_mode():
        assert torch.equal(model(photos(n=1)), tiny(photos(n=1)))


def test_convert_to_safetensors_gives_the_same_logits_and_records_the_config(tiny, tiny_pth, tmp_path):
    out = tmp_path / "model.safetensors"
    convert(tiny_pth, out, tiny_config(40))
    model, _, _ = load_model(out)  # no config given: the file carries it
    with torch.inference_mode():
        assert torch.equal(model(photos(n=2)), tiny(photos(n=2)))


# -- preprocessing --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["photographer-greyscale.png"])
def test_preprocessing_equals_the_official_recipe_on_png(name, tmp_path):
    image = Image.open(SAMPLES / name).convert("RGB")
    png = tmp_path / "x.png"
    Image.fromarray(np.asarray(image)[:300, :200]).save(png)  # non-square: the resize ignores aspect
    image = Image.open(png).convert("RGB")
    official = transforms.Compose([
        transforms.Resize((384, 384)), transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])
    assert np.abs(to_array(image, 384) - official(image).numpy()).max() < 1e-6
