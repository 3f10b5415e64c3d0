"""RAM++ preprocessing (docs/models/rampp.md §1): PIL bilinear resize to a square, /255, ImageNet normalisation.

PIL does the resize, as the official transform does: a tensor interpolate gives other pixels.
The runtime's decoder has already applied EXIF orientation (the official code does not; a
sideways photo is what a user expects to be tagged upright).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def to_array(image: Image.Image, size: int) -> np.ndarray:
    """One RGB image → normalised float32 CHW array [3,size,size]."""
    resized = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    x = np.asarray(resized, dtype=np.float32) / 255.0
    return ((x - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def to_pixels(images: list[Image.Image], size: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([to_array(image, size) for image in images]))


def synthetic_image(size: int) -> Image.Image:
    """A fixed, deterministic colour pattern (warm-up and calibration input)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * (x + y))], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8), "RGB")
