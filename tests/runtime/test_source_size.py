"""A decoded image remembers the photo's own upright size, also when it was decoded at a reduced scale:
models that answer in pixel coordinates (Florence-2's OCR regions) answer in the photo's pixels."""

from __future__ import annotations

import asyncio
import io

from PIL import Image

from archivetag.runtime.images import ImageDecoder, ImageLimits, source_size
from archivetag.v1 import common_pb2


def jpeg(width: int, height: int, orientation: int | None = None) -> bytes:
    image = Image.new("RGB", (width, height), (200, 120, 40))
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def decoded(data: bytes, min_edge: int = 768) -> Image.Image:
    decoder = ImageDecoder(ImageLimits(), min_edge=min_edge)
    try:
        return asyncio.run(decoder.decode(common_pb2.Image(data=data)))
    finally:
        decoder.close()


def test_a_large_jpeg_decoded_at_half_scale_keeps_its_stored_size():
    image = decoded(jpeg(3200, 1600))
    assert image.size == (1600, 800)
    assert source_size(image) == (3200, 1600)


def test_a_sideways_photo_gives_its_upright_size():
    image = decoded(jpeg(3200, 1600, orientation=6))
    assert image.size == (800, 1600)
    assert source_size(image) == (1600, 3200)


def test_a_small_photo_is_its_own_size_and_an_image_from_elsewhere_too():
    assert source_size(decoded(jpeg(320, 200))) == (320, 200)
    assert source_size(Image.new("RGB", (50, 40))) == (50, 40)
