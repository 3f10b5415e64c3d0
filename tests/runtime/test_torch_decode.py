"""The torch JPEG path of the one decoder (images.finish_decode_with_torch): nvJPEG on CUDA.

On CPU, torchvision's own JPEG decoder stands in for nvJPEG, so the path's orientation, colour,
size and pixel agreement with Pillow's decode are checked on every machine; the same checks
on a CUDA device are marked cuda.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from PIL import Image

from archivetag.runtime.images import (
    ImageDecoder, ImageLimits, decodes_on_device, finish_decode, finish_decode_with_torch, open_image,
)
from archivetag.v1 import common_pb2
from tests.support.image_corpus import encode, photo

MIN_EDGE = 128


def exif_rotated(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(photo(160, 80), "JPEG", exif=exif.tobytes(), quality=95)


CASES = {
    "small colour": encode(photo(96, 64), "JPEG", quality=95),
    "grey": encode(photo(96, 64).convert("L"), "JPEG", quality=95),
    "exif orientation 6": exif_rotated(6),
    "exif orientation 3": exif_rotated(3),
    "large, DCT draft scale": encode(photo(1024, 768), "JPEG", quality=90),
}


def both(data: bytes, device: str) -> tuple[np.ndarray, np.ndarray]:
    image, plan = open_image(data, ImageLimits(), MIN_EDGE)
    on_cpu = np.asarray(finish_decode(image, plan), dtype=np.int16)
    image, plan = open_image(data, ImageLimits(), MIN_EDGE)
    with_torch = np.asarray(finish_decode_with_torch(data, image, plan, device), dtype=np.int16)
    return on_cpu, with_torch


def assert_equivalent(on_cpu: np.ndarray, with_torch: np.ndarray) -> None:
    assert with_torch.shape == on_cpu.shape  # same size and orientation, 3 channels
    difference = np.abs(with_torch - on_cpu)
    assert difference.mean() < 1.0, f"mean difference {difference.mean():.2f}"
    assert np.percentile(difference, 99) < 12, f"99th percentile difference {np.percentile(difference, 99)}"


@pytest.mark.parametrize("name", CASES)
def test_torchvision_decodes_jpegs_as_pillow_does_on_cpu(name):
    assert_equivalent(*both(CASES[name], "cpu"))


def test_orientation_is_applied_the_same_way():
    on_cpu, with_torch = both(exif_rotated(6), "cpu")
    assert on_cpu.shape[:2] == (160, 80)  # stored 160×80 landscape, shown portrait
    assert with_torch.shape[:2] == (160, 80)
    corner = (slice(0, 8), slice(0, 8))
    assert np.abs(on_cpu[corner].mean(axis=(0, 1)) - with_torch[corner].mean(axis=(0, 1))).max() < 8


def test_only_jpegs_in_rgb_or_grey_go_to_a_cuda_device():
    jpeg = open_image(CASES["small colour"])[1]
    cmyk = open_image(encode(photo(32, 32).convert("CMYK"), "JPEG"))[1]
    png = open_image(encode(photo(32, 32), "PNG"))[1]
    assert decodes_on_device(jpeg, "cuda")
    assert decodes_on_device(jpeg, "cuda:1")
    assert not decodes_on_device(jpeg, "cpu")
    assert not decodes_on_device(cmyk, "cuda")  # Adobe CMYK stays with Pillow
    assert not decodes_on_device(png, "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("name", CASES)
def test_nvjpeg_on_cuda_decodes_jpegs_as_pillow_does(name):
    assert_equivalent(*both(CASES[name], "cuda"))


@pytest.mark.cuda
def test_the_decoder_of_a_cuda_model_decodes_jpegs_on_the_device_and_other_formats_on_cpu():
    decoder = ImageDecoder(ImageLimits(), min_edge=MIN_EDGE, device="cuda")
    try:
        for data in (CASES["exif orientation 6"], encode(photo(96, 64), "PNG")):
            decoded = asyncio.run(decoder.decode(common_pb2.Image(data=data)))
            image, plan = open_image(data, ImageLimits(), MIN_EDGE)
            assert decoded.size == finish_decode(image, plan).size
    finally:
        decoder.close()
