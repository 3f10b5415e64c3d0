"""Florence-2's OCR tasks in the backend, on the real architecture with random weights: the text and the
regions are transformers' own generate + post-processing, in the photo's pixels. Random weights cannot
read, so the words are not asserted; the path, the fields and the parity are."""

from __future__ import annotations

import asyncio

import pytest

from archivetag.runtime.errors import InvalidInput
from archivetag.runtime.images import ImageDecoder, ImageLimits, source_size
from archivetag_florence.backend import create_backend
from archivetag_florence.smoke import bias_towards, word_token_ids
from archivetag.v1 import common_pb2, tagger_pb2
from tests.florence import settings, tiny_models_dir
from tests.support.text_photo import text_photo, text_photo_jpeg

OCR_TOKENS = 24
TEXT, REGIONS = common_pb2.OCR_MODE_TEXT, common_pb2.OCR_MODE_TEXT_WITH_REGIONS


def load_backend():
    backend = create_backend(settings(tiny_models_dir(), "--florence-max-new-tokens", "8", "--florence-num-beams", "1",
                                      "--florence-ocr-max-new-tokens", str(OCR_TOKENS)))
    backend.load()
    return backend


@pytest.fixture(scope="module")
def backend():
    return load_backend()


@pytest.fixture(scope="module")
def locating_backend():
    """The random model nudged towards location tokens (and a few words), so that its OCR answers have regions:
    text followed by eight locations is what <OCR_WITH_REGION> parses."""
    backend = load_backend()
    tokenizer = backend.processor.tokenizer
    locations = [tokenizer.convert_tokens_to_ids(f"<loc_{i}>") for i in range(1000)]
    bias_towards(backend.model, locations + word_token_ids(tokenizer, ["door", "hall", "street"]))
    return backend


def answer(backend, image, ocr):
    return backend.infer_batch([backend.prepare(image, tagger_pb2.TagRequest(ocr=ocr))], lambda: False)[0]


def transformers_reference(backend, task, image):
    """What transformers itself answers for the task: processor, generate, decode, post_process_generation."""
    model, processor = backend.model, backend.processor
    inputs = processor(text=[task], images=[image], return_tensors="pt")
    ids = model.generate(**inputs, max_new_tokens=OCR_TOKENS, num_beams=1, do_sample=False)
    text = processor.batch_decode(ids, skip_special_tokens=False)[0]
    return processor.post_process_generation(text, task=task, image_size=image.size)[task]


def test_text_equals_transformers_ocr_generate_and_post_process(backend):
    image = text_photo()
    result = answer(backend, image, TEXT)
    expected = transformers_reference(backend, "<OCR>", image)
    assert isinstance(expected, str)
    assert result.ocr.text == expected
    assert result.ocr.text  # the random model writes words: the field is filled, not asserted to be right
    assert result.ocr.regions == []


def test_regions_equal_transformers_ocr_with_region_in_image_pixels(locating_backend):
    image = text_photo(640, 240)
    result = answer(locating_backend, image, REGIONS)
    expected = transformers_reference(locating_backend, "<OCR_WITH_REGION>", image)
    assert expected["quad_boxes"], "the nudged model should give at least one region"
    assert [text for text, _ in result.ocr.regions] == expected["labels"]
    assert [quad for _, quad in result.ocr.regions] == [[float(v) for v in q] for q in expected["quad_boxes"]]
    assert result.ocr.text == "\n".join(expected["labels"])
    for _, quad in result.ocr.regions:
        assert len(quad) == 8
        assert all(0 <= x <= image.width for x in quad[0::2])
        assert all(0 <= y <= image.height for y in quad[1::2])


def test_without_ocr_nothing_is_read_and_the_caption_is_unchanged(backend):
    image = text_photo()
    plain = answer(backend, image, common_pb2.OCR_MODE_UNSPECIFIED)
    assert plain.ocr is None
    assert answer(backend, image, TEXT).caption == plain.caption


def test_a_mixed_batch_equals_single_calls(locating_backend):
    images = [text_photo(), text_photo(300, 300), text_photo(640, 160)]
    modes = [TEXT, common_pb2.OCR_MODE_UNSPECIFIED, REGIONS]
    items = [locating_backend.prepare(i, tagger_pb2.TagRequest(ocr=m)) for i, m in zip(images, modes)]
    together = locating_backend.infer_batch(items, lambda: False)
    for image, mode, result in zip(images, modes, together):
        alone = answer(locating_backend, image, mode)
        assert result.caption == alone.caption
        assert result.ocr == alone.ocr


def test_regions_are_in_the_photos_pixels_when_it_was_decoded_at_a_reduced_scale(locating_backend):
    """A large JPEG is decoded at a fraction of its size; the regions still fit the photo as stored."""
    data = text_photo_jpeg(3200, 1600)
    decoder = ImageDecoder(ImageLimits(), min_edge=locating_backend.input_edge)
    try:
        image = asyncio.run(decoder.decode(common_pb2.Image(data=data)))
    finally:
        decoder.close()
    assert image.size[0] < 3200  # drafted
    assert source_size(image) == (3200, 1600)
    result = answer(locating_backend, image, REGIONS)
    xs = [x for _, quad in result.ocr.regions for x in quad[0::2]]
    assert xs
    assert max(xs) > image.size[0]  # scaled to the stored width, not the decoded one
    assert max(xs) <= 3200


def test_an_ocr_value_outside_the_enum_is_invalid_input_naming_the_field(backend):
    with pytest.raises(InvalidInput, match="ocr 7 is not an OcrMode") as caught:
        backend.prepare(text_photo(), tagger_pb2.TagRequest(ocr=7))
    assert caught.value.field == "ocr"
    assert caught.value.reason == "FIELD_INVALID"


def test_an_abandoned_batch_stops_the_ocr_pass_too(backend):
    items = [backend.prepare(text_photo(), tagger_pb2.TagRequest(ocr=TEXT))]
    read = backend.read_text(items, abandoned=lambda: True)
    assert set(read) == {0}
    assert len(backend.processor.tokenizer(read[0].text, add_special_tokens=False)["input_ids"]) <= 2

