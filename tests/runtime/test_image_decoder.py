"""The one image decoder, on a corpus of malformed and unusual files (see support/image_corpus.py)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from archivetag.runtime.errors import InvalidInput
from archivetag.runtime.images import ImageLimits, decode_image, read_image_source
from archivetag.v1 import common_pb2
from tests.support.image_corpus import corpus, encode, photo

CASES = corpus()


def test_corpus_is_large_enough_to_mean_something():
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_each_file_gives_its_expected_outcome(case):
    if case.expect == "invalid":
        with pytest.raises(InvalidInput) as info:
            decode_image(case.data)
        assert case.message.lower() in str(info.value).lower(), str(info.value)
        return
    image = decode_image(case.data)
    assert image.mode == "RGB"
    assert image.size == case.size
    if case.check:
        assert case.check(image), f"pixels of {case.name} are wrong: mean {np.asarray(image).reshape(-1, 3).mean(0)}"


def test_a_decompression_bomb_is_refused_without_decoding_it():
    bomb = next(c for c in CASES if c.name == "png claiming 100000x100000")
    started = time.perf_counter()
    with pytest.raises(InvalidInput, match="ARCHIVETAG_MAX_IMAGE_PIXELS"):
        decode_image(bomb.data)
    assert time.perf_counter() - started < 1.0  # header check only; decoding would take minutes


def test_byte_limit_names_its_setting():
    data = encode(photo(), "PNG")
    with pytest.raises(InvalidInput, match="ARCHIVETAG_MAX_IMAGE_BYTES"):
        decode_image(data, ImageLimits(max_bytes=len(data) - 1))


def test_exif_orientation_turns_the_photo_upright():
    # Left half red, right half blue, stored with orientation 6 (rotate 90° clockwise to view).
    stored = Image.new("RGB", (80, 40), (255, 0, 0))
    stored.paste((0, 0, 255), (40, 0, 80, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    upright = decode_image(encode(stored, "JPEG", exif=exif.tobytes(), quality=95))
    assert upright.size == (40, 80)
    top, bottom = np.asarray(upright)[5, 20], np.asarray(upright)[75, 20]
    assert top[0] > 200 and top[2] < 60  # stored left (red) is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_large_jpeg_is_decoded_at_reduced_scale_but_never_below_the_model_input():
    big = encode(photo(3000, 2000), "JPEG", quality=85)
    reduced = decode_image(big, min_edge=384)
    assert reduced.size == (750, 500)  # 1/4 scale: the smallest DCT scale keeping both sides ≥ 384
    assert min(reduced.size) >= 384
    undrafted = decode_image(big, ImageLimits(jpeg_draft=False), min_edge=384)
    assert undrafted.size == (600, 400)  # decoded in full, then shrunk by the integer factor 5 at once
    assert decode_image(big).size == (3000, 2000)  # no model edge: nothing is shrunk


def test_small_jpeg_is_not_reduced():
    small = encode(photo(600, 500), "JPEG")
    assert decode_image(small, min_edge=384).size == (600, 500)


def test_paths_are_refused_unless_the_server_allows_a_root(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(encode(photo(), "PNG"))
    image = common_pb2.Image(uri=str(path))
    with pytest.raises(InvalidInput, match="ALLOWED_ROOTS"):
        read_image_source(image, [])
    assert read_image_source(image, [tmp_path]) == path.read_bytes()
    assert read_image_source(common_pb2.Image(uri=f"file://{path}"), [tmp_path]) == path.read_bytes()


def test_paths_outside_the_allowed_roots_are_refused(tmp_path):
    inside = tmp_path / "photos"
    inside.mkdir()
    secret = tmp_path / "secret.png"
    secret.write_bytes(encode(photo(), "PNG"))
    (inside / "link.png").symlink_to(secret)
    for uri in (str(secret), str(inside / ".." / "secret.png"), str(inside / "link.png")):
        with pytest.raises(InvalidInput, match="outside the allowed roots"):
            read_image_source(common_pb2.Image(uri=uri), [inside])


def test_a_request_without_an_image_says_what_to_send():
    with pytest.raises(InvalidInput, match="image.data"):
        read_image_source(common_pb2.Image(), [])
