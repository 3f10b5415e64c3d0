"""Randomly initialised RAM++ checkpoints in the official layout, for tests, benchmarks and smoke models.

Random weights check arithmetic, not semantics. A freshly initialised head gives nearly the
same probability for every tag (docs/models/rampp.md §11), so tag selection would go untested; `calibrate`
reshapes the random head so that the logits spread out and roughly `target_share` of the tags
pass a 0.65 threshold on photographs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from archivetag_rampp.checkpoint import official_state_dict
from archivetag_rampp.model import RamPlus, RamPlusConfig, TaggingLayer
from archivetag_rampp.preprocess import synthetic_image, to_pixels


def random_model(config: RamPlusConfig, seed: int = 0, target_share: float = 0.05) -> RamPlus:
    """A RAM++ model with random weights whose probabilities spread over (0, 1)."""
    torch.manual_seed(seed)
    model = RamPlus(config).eval()
    with torch.no_grad():
        # Like the real label_embed: unit-norm text embeddings, several per tag.
        model.label_embed.copy_(F.normalize(torch.randn_like(model.label_embed), dim=-1))
        calibrate(model, target_share)
    return model


def calibration_images(size: int) -> list[Image.Image]:
    """Varied synthetic inputs: patterns, noise and blotches (fixed seed)."""
    rng = np.random.default_rng(0)
    base = synthetic_image(size)
    images = [base, base.rotate(90), Image.fromarray(255 - np.asarray(base))]
    for _ in range(2):
        images.append(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))
        blotches = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
        images.append(Image.fromarray(blotches).resize((size, size), Image.Resampling.BILINEAR))
    return images


@torch.no_grad()
def calibrate(model: RamPlus, target_share: float, spread: float = 2.0) -> None:
    """Make the logits differ between tags more than between images, then set their spread and level.

    At random init the tag queries barely differ and the head's output is dominated by an
    image-dependent component shared by all tags, so an image gets all tags or none. Larger
    query projections, damped image values, and an `fc` orthogonal to the shared component
    fix that; then `fc` is scaled to std `spread` and shifted so ~target_share pass 0.65."""
    model.wordvec_proj.weight.mul_(30.0)
    for layer in cast("Iterable[TaggingLayer]", model.tagging_head.encoder.layer):
        layer.crossattention.self.value.weight.mul_(0.1)
    pixels = to_pixels(calibration_images(model.config.image_size), model.config.image_size)
    captured: dict[str, torch.Tensor] = {}
    hook = model.fc.register_forward_hook(lambda module, inputs, output: captured.update(h=inputs[0]))
    model(pixels)
    hook.remove()
    shared, _ = torch.linalg.qr(captured["h"].mean(1).T)  # [width, images]: per-image common directions
    weight = model.fc.weight[0]
    weight -= shared @ (shared.T @ weight)
    logits = model(pixels[:1])[0]
    model.fc.weight.mul_(spread / logits.std().clamp_min(1e-6))
    logits = model(pixels[:1])[0]
    model.fc.bias.add_(math.log(0.65 / 0.35) - torch.quantile(logits, 1 - target_share) + 0.05)


def write_official_checkpoint(model: RamPlus, path: Path, extra_entries: bool = False) -> None:
    """`{'model': state_dict}` exactly as the released file is laid out (buffers included).

    extra_entries: also write the training entries the released file probably carries
    (optimizer-like state, config, epoch), which a loader must ignore."""
    checkpoint: dict = {"model": official_state_dict(model)}
    if extra_entries:
        checkpoint["optimizer"] = {"state": {0: {"exp_avg": torch.zeros(4)}}, "param_groups": [{"lr": 1e-5}]}
        checkpoint["config"] = {"image_size": model.config.image_size, "vit": "swin_l"}
        checkpoint["epoch"] = 4
    torch.save(checkpoint, path)
