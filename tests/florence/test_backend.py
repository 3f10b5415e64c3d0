"""The backend in process: its captions are transformers' own, batches equal single calls, options behave."""

from __future__ import annotations


import pytest
import torch
from PIL import Image

from archivetag.runtime.errors import InvalidInput, ModelLoadError
from archivetag_florence.backend import create_backend
from archivetag.v1 import tagger_pb2
from tests.florence import settings, tiny_models_dir


@pytest.fixture(scope="module")
def backend():
    backend = create_backend(settings(tiny_models_dir(), "--florence-max-new-tokens", "8", "--florence-num-beams", "1"))
    backend.load()
    return backend


def images(n: int) -> list[Image.Image]:
    g = torch.Generator().manual_seed(7)
    out = []
    for i in range(n):
        pixels = (torch.rand(40 + 8 * i, 56, 3, generator=g) * 255).to(torch.uint8).numpy()
        out.append(Image.fromarray(pixels))
    out[-1] = Image.new("RGB", (30, 50), (10, 10, 240))
    return out


def tag(backend, image, **fields):
    return backend.infer_batch([backend.prepare(image, tagger_pb2.TagRequest(**fields))], lambda: False)[0]


def test_caption_equals_transformers_generate_and_post_process(backend):
    model, processor = backend.model, backend.processor
    for image in images(3):
        inputs = processor(text=["<MORE_DETAILED_CAPTION>"], images=[image], return_tensors="pt")
        ids = model.generate(**inputs, max_new_tokens=8, num_beams=1, do_sample=False)
        text = processor.batch_decode(ids, skip_special_tokens=False)[0]
        expected = processor.post_process_generation(text, task="<MORE_DETAILED_CAPTION>", image_size=image.size)
        result = tag(backend, image)
        assert result.caption == expected["<MORE_DETAILED_CAPTION>"]
        assert result.caption
        assert all(word.isalpha() for word in result.caption.split())


def test_tags_come_from_the_caption_with_confidences_in_0_1(backend):
    result = tag(backend, images(1)[0])
    assert result.tags, result.caption
    assert all(name in result.caption or name + "s" in result.caption for name, _ in result.tags)
    assert all(0 < c <= 1 for _, c in result.tags)
    assert [c for _, c in result.tags] == sorted((c for _, c in result.tags), reverse=True)


def test_a_batch_of_n_equals_n_single_calls(backend):
    batch = images(4)
    together = backend.infer_batch([backend.prepare(i, tagger_pb2.TagRequest()) for i in batch], lambda: False)
    for image, result in zip(batch, together):
        alone = tag(backend, image)
        assert result.caption == alone.caption
        assert [n for n, _ in result.tags] == [n for n, _ in alone.tags]
        assert [c for _, c in result.tags] == pytest.approx([c for _, c in alone.tags], abs=1e-4)


def test_beam_search_gives_tags_with_confidences_too():
    backend = create_backend(settings(tiny_models_dir(), "--florence-max-new-tokens", "8", "--florence-num-beams", "3",
                                      "--florence-task", "<CAPTION>"))
    backend.load()
    result = tag(backend, images(1)[0])
    assert result.caption
    assert result.tags
    assert all(0 < c <= 1 for _, c in result.tags)


def test_beams_left_to_the_device_are_greedy_on_a_cpu_and_reported():
    chosen = create_backend(settings(tiny_models_dir(), "--florence-max-new-tokens", "8", "--device", "cpu"))
    chosen.load()
    assert chosen.describe()["num_beams"] == "1"  # GetModelInfo's settings, and so the result cache's key
    greedy = create_backend(settings(tiny_models_dir(), "--florence-max-new-tokens", "8", "--florence-num-beams", "1"))
    greedy.load()
    image = images(1)[0]
    assert tag(chosen, image).caption == tag(greedy, image).caption
    negative = create_backend(settings(tiny_models_dir(), "--florence-num-beams", "-1"))
    with pytest.raises(ModelLoadError, match="--florence-num-beams at least 0"):
        negative.load()


def test_threshold_max_tags_and_vocabulary_restrict_the_answer(backend):
    image = images(1)[0]
    every = tag(backend, image).tags
    assert len(every) >= 2
    assert tag(backend, image, max_tags=1).tags == every[:1]
    cut = every[0][1] - 1e-6
    assert [n for n, _ in tag(backend, image, threshold=cut).tags] == [every[0][0]]
    only = every[-1][0]
    assert [n for n, _ in tag(backend, image, vocabulary=[only]).tags] == [only]


def test_unknown_vocabulary_names_and_bad_thresholds_are_invalid_input(backend):
    with pytest.raises(InvalidInput, match="not in the Florence-2 vocabulary: 'zeppelin-hangar'"):
        backend.prepare(images(1)[0], tagger_pb2.TagRequest(vocabulary=["zeppelin-hangar"]))
    with pytest.raises(InvalidInput, match="threshold"):
        backend.prepare(images(1)[0], tagger_pb2.TagRequest(threshold=1.5))


def test_an_abandoned_batch_stops_generating_after_one_token(backend):
    pixels = [backend.prepare(image, tagger_pb2.TagRequest()).pixels for image in images(2)]
    sequences, _ = backend.generate(pixels, abandoned=lambda: True)
    assert sequences.shape[1] <= 3  # decoder start + one token, not max_new_tokens


def test_identity_says_smoke_with_the_weights_checksum(backend):
    identity = backend.identity()
    assert identity.family == "florence"
    assert identity.smoke
    assert "smoke" in identity.name
    assert len(identity.weights_sha256) == 64
    assert identity.device == "cpu"
    assert identity.dtype == "float32"
    assert backend.input_edge == 768
    assert len(backend.vocabulary()) > 100
