"""A 64-bit perceptual hash of a photo: what `duplicates` uses to tell "the same photo" from "similar".

The DCT hash (pHash): the photo, decoded by the project's one decoder (archivetag.runtime.images:
its limits, first frame only, EXIF orientation applied, a large JPEG decoded at a reduced DCT scale),
is turned grey, shrunk to 32×32, and the 8×8 lowest frequencies of its 2-D DCT compared with their
median: one bit each. Re-encodes, resizes, format changes and small crops of one photo move few
bits (a handful of 64); another shot of the same scene, even from a step aside, moves many (about
half, as unrelated photos do). `archivetag tag` computes it from the bytes it reads anyway (docs/similar.md).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from archivetag.runtime.errors import InvalidInput, QueueFull
from archivetag.runtime.images import ImageLimits, decode_image

SIDE = 32  # the grey thumbnail the DCT is taken of
LOW = 8  # the LOW×LOW lowest frequencies make the 64 bits
# The decode is asked for at least this edge: a large JPEG is decoded at 1/8 scale, which is fast.
DECODE_EDGE = 64
BITS = LOW * LOW


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)
    matrix = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n))
    matrix[0] /= np.sqrt(2.0)
    return matrix


_DCT = _dct_matrix(SIDE)


def hash_image(image: Image.Image) -> int:
    """The 64-bit DCT hash of a decoded image (unsigned)."""
    grey = np.asarray(image.convert("L").resize((SIDE, SIDE), Image.Resampling.BOX), dtype=np.float64)
    low = (_DCT @ grey @ _DCT.T)[:LOW, :LOW].ravel()
    bits = low > np.median(low[1:])  # the DC term (overall brightness) left out of the median
    return int(np.packbits(bits).view(">u8")[0])


def photo_hash(data: bytes) -> int | None:
    """The hash of an encoded photo; None when the decoder cannot read it (the tagger will say why)."""
    try:
        image = decode_image(data, ImageLimits(max_bytes=max(1, len(data))), min_edge=DECODE_EDGE)
    except (InvalidInput, QueueFull):
        return None
    return hash_image(image)


def distance(a: int, b: int) -> int:
    """How many of the 64 bits differ."""
    return (a ^ b).bit_count()
