"""The exported SigLIP folder: file names, the manifest, the probe image and preprocessing.

Shared by the exporter (which writes the folder with torch) and the service (which reads it
with ONNX Runtime only), so both agree on every byte. No torch or transformers here.

    <models>/siglip/
        manifest.json          identity, image processing, hashes, classes and prompts, probe
        vision.onnx            vision tower: pixel_values -> image embedding (get_image_features)
        vision-int8.onnx       optional: the same, int8 dynamic quantisation (--int8)
        vision_torch/          the same vision tower's weights for torch (--siglip-runtime torch: a CUDA box
                               whose onnxruntime has no CUDA provider): config.json + model.safetensors of
                               transformers' SiglipVisionModel, as exported from the same checkpoint
        text_embeddings.json   class embeddings (prompt ensembles), logit_scale, logit_bias, stamped
        text.onnx              text tower: input_ids (padded to max_length) -> text embedding
        tokenizer.json         the tokenizer as a `tokenizers` file (how to use it: manifest "text_tower")
        probe.png              fixed synthetic image; its embedding is in the manifest
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

FORMAT = "archivetag-siglip/1"
MANIFEST = "manifest.json"
VISION_ONNX = "vision.onnx"
VISION_INT8_ONNX = "vision-int8.onnx"
VISION_TORCH = "vision_torch"  # a folder: SiglipVisionModel.save_pretrained
TEXT_EMBEDDINGS = "text_embeddings.json"
TEXT_ONNX = "text.onnx"
TOKENIZER = "tokenizer.json"
PROBE_IMAGE = "probe.png"
EXPORT_COMMAND = "archivetag models export-siglip --model google/siglip-base-patch16-224 --out <models>/siglip"
PULL_COMMAND = "archivetag models pull --only siglip"

# The old app's files: scored wrongly and not stamped with their model, so never served.
OLD_APP_FILES = (
    "siglip-base-patch16-224.onnx",
    "siglip-base-patch16-224-text-embeddings.json",
    "siglip-base-patch16-224-info.json",
)

RESAMPLE_NAMES = {
    0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming",
}
_PIL_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS,
    "bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING,
}



def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def probe_image() -> Image.Image:
    """A fixed synthetic photo-like image, generated from code (no file needed to rebuild it).

    Not square and not the model's size, so the probe also checks resizing.
    """
    height, width = 149, 211
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    red = 127.5 + 127.5 * np.sin(x / 17.0) * np.cos(y / 23.0)
    green = 255.0 * (x + y) / (width + height)
    blue = np.where(((x // 24) + (y // 24)) % 2 == 0, 40.0, 215.0)
    rgb = np.stack([red, green, blue], axis=-1).round().clip(0, 255).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


class Preprocessor:
    """SiglipImageProcessor in PIL + numpy: resize to the square size, rescale, normalise.

    Equal (to float rounding) to transformers' PIL backend (SiglipImageProcessorPil); the
    torchvision backend differs by at most a grey level here and there.
    """

    def __init__(self, image: dict[str, Any]):
        self.height, self.width = (int(v) for v in image["size"])
        self.resample = _PIL_RESAMPLE[image["resample"]]
        self.do_resize = bool(image.get("do_resize", True))
        self.do_rescale = bool(image.get("do_rescale", True))
        self.rescale_factor = np.float32(image.get("rescale_factor", 1 / 255))
        self.do_normalize = bool(image.get("do_normalize", True))
        self.mean = np.asarray(image["mean"], dtype=np.float32)
        self.std = np.asarray(image["std"], dtype=np.float32)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """One RGB image -> float32 (3, H, W)."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        if self.do_resize and image.size != (self.width, self.height):
            image = image.resize((self.width, self.height), self.resample)
        pixels = np.asarray(image, dtype=np.float32)
        if self.do_rescale:
            pixels = pixels * self.rescale_factor
        if self.do_normalize:
            pixels = (pixels - self.mean) / self.std
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))
