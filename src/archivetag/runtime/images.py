"""The one image decoder: encoded bytes → an upright 8-bit RGB PIL image, or InvalidInput.

Every service decodes through `decode_image`, in a thread pool (see ImageDecoder), so a
slow or hostile file never blocks the event loop. Limits are checked on the header,
before any pixel is decoded.
"""

from __future__ import annotations

import asyncio
import io
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from archivetag.runtime.errors import InvalidInput

try:  # HEIC/HEIF (phone photos) through libheif
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_AVAILABLE = True
except ImportError:  # pragma: no cover - pillow-heif is a dependency; kept for slim installs
    HEIF_AVAILABLE = False

# Formats accepted. PIL could open more (EPS would run Ghostscript, PSD, ICO, ...):
# restricting `Image.open` to these keeps the attack surface and the behaviour known.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF") + (("HEIF",) if HEIF_AVAILABLE else ())
_FORMAT_NAMES = "JPEG, PNG, WebP, TIFF, BMP, GIF" + (", HEIC/HEIF" if HEIF_AVAILABLE else "")

# Our own pixel limit is checked first with a clear message; PIL's bomb guard stays as a
# backstop for formats whose size is only known while decoding.
Image.MAX_IMAGE_PIXELS = None

_SNIFF = (
    (b"%PDF", "a PDF document"),
    (b"<svg", "an SVG drawing (vector graphics are not decoded)"),
    (b"<?xml", "an XML document (SVG drawings are not decoded)"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image (not accepted)"),
    (b"8BPS", "a Photoshop document (not accepted)"),
)


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 100_000_000
    jpeg_draft: bool = True


# Signatures of accepted formats: a file that has one but will not open is a corrupt image,
# not "some other file".
_IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
)


def _describe_non_image(data: bytes) -> str:
    for magic, fmt in _IMAGE_MAGIC:
        if data.startswith(magic):
            return f"a corrupt {fmt} file (its header could not be read)"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "a corrupt WebP file (its header could not be read)"
    if data[4:8] == b"ftyp":
        return "a corrupt or unsupported HEIF/ISO-media file"
    head = data[:64].lstrip()
    for magic, what in _SNIFF:
        if head.startswith(magic) or (magic == b"<svg" and b"<svg" in data[:1024]):
            return what
    if all(32 <= b < 127 or b in (9, 10, 13) for b in data[:256]):
        return "text, not an image"
    return "not a recognised image"


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.0f} MP" if pixels >= 1e6 else f"{pixels} pixels"


def check_image_size(data: bytes, max_bytes: int) -> None:
    """InvalidInput unless 0 < len(data) <= max_bytes (the orchestrator checks this before forwarding)."""
    if not data:
        raise InvalidInput("image is empty (0 bytes)", reason="IMAGE_EMPTY", field="image.data")
    if len(data) > max_bytes:
        raise InvalidInput(
            f"image is {len(data)} bytes; the limit is {max_bytes} bytes (set ARCHIVETAG_MAX_IMAGE_BYTES)",
            reason="IMAGE_TOO_LARGE", field="image.data",
            metadata={"size_bytes": len(data), "limit_bytes": max_bytes, "setting": "ARCHIVETAG_MAX_IMAGE_BYTES"},
        )


def _open_checked(data: bytes, limits: ImageLimits) -> Image.Image:
    check_image_size(data, limits.max_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        what = _describe_non_image(data)
        raise InvalidInput(
            f"image format not recognised: {what}; accepted formats: {_FORMAT_NAMES}",
            reason="IMAGE_CORRUPT" if what.startswith("a corrupt") else "IMAGE_FORMAT_UNSUPPORTED",
        ) from None
    except Image.DecompressionBombError as exc:
        raise _too_many_pixels(exc) from None
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        raise InvalidInput(f"image header is corrupt: {exc}") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise InvalidInput(f"image has no pixels ({width}×{height})")
    pixels = width * height
    if pixels > limits.max_pixels:
        raise InvalidInput(
            f"image is {width}×{height} ({_megapixels(pixels)}); the limit is {_megapixels(limits.max_pixels)} "
            "(set ARCHIVETAG_MAX_IMAGE_PIXELS)",
            reason="IMAGE_TOO_MANY_PIXELS",
            metadata={"width": width, "height": height, "limit_pixels": limits.max_pixels,
                      "setting": "ARCHIVETAG_MAX_IMAGE_PIXELS"},
        )
    return image


def _too_many_pixels(exc: Exception) -> InvalidInput:
    return InvalidInput(f"image is too large to decode: {exc}", reason="IMAGE_TOO_MANY_PIXELS",
                        metadata={"setting": "ARCHIVETAG_MAX_IMAGE_PIXELS"})


def _high_depth_grey_to_l(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit or float grey → 8-bit grey (Pillow would clip at 255: almost all white)."""
    array = np.nan_to_num(np.asarray(image, dtype=np.float64))
    low, high = float(array.min(initial=0.0)), float(array.max(initial=0.0))
    if image.mode != "F" and low >= 0 and high <= 0xFFFF:
        scaled = array / 257.0  # 16-bit range → 8-bit range, brightness kept
    elif high > low:
        scaled = (array - low) / (high - low) * 255.0  # other ranges: stretch to full contrast
    else:
        scaled = np.zeros_like(array)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB; alpha composited onto white (how viewers show transparent areas)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _high_depth_grey_to_l(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def decode_image(data: bytes, limits: ImageLimits = ImageLimits(), min_edge: int | None = None) -> Image.Image:
    """Decode bytes to an upright RGB image, or raise InvalidInput naming the problem.

    min_edge: the model's input edge; large JPEGs are then decoded at a reduced DCT scale
    that still leaves both sides at least this long.
    """
    image = _open_checked(data, limits)
    fmt = image.format
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)  # animated GIF/WebP/PNG, multi-page TIFF: the first frame
        if fmt == "JPEG" and limits.jpeg_draft and min_edge and min(image.size) >= 2 * min_edge:
            image.draft("RGB", (min_edge, min_edge))
        image.load()
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except InvalidInput:
        raise
    except Image.DecompressionBombError as exc:
        raise _too_many_pixels(exc) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as exc:
        raise InvalidInput(f"image data is truncated or corrupt ({fmt}): {exc}") from None


class ImageDecoder:
    """Reads and decodes images in a thread pool so the event loop never waits on pixels."""

    def __init__(
        self, limits: ImageLimits, threads: int = 2, min_edge: int | None = None,
        allowed_roots: list[Path] | list[str] = (),
    ):
        self.limits = limits
        self.min_edge = min_edge
        self.allowed_roots = list(allowed_roots)
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="decode")

    def _read_and_decode(self, image_proto, then: Callable[[Image.Image], Any] | None) -> Any:
        data = read_image_source(image_proto, self.allowed_roots)
        image = decode_image(data, self.limits, self.min_edge)
        return then(image) if then else image

    async def decode(self, image_proto, then: Callable[[Image.Image], Any] | None = None) -> Any:
        """Decode an archivetag.v1.Image (bytes, or a path under an allowed root) in the pool.

        then: further per-image work (the model's preprocessing) to run in the same thread.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._read_and_decode, image_proto, then)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def read_image_source(image_proto, allowed_roots: list[Path] | list[str]) -> bytes:
    """The bytes of an archivetag.v1.Image: its data, or a file under an allowed root."""
    source = image_proto.WhichOneof("source")
    if source == "data":
        return image_proto.data
    if source != "uri":
        raise InvalidInput("request has no image: set image.data (the file's bytes) or image.uri",
                           reason="IMAGE_MISSING", field="image")
    if not allowed_roots:
        raise InvalidInput(
            "image.uri is not accepted by this server (no allowed roots; set ARCHIVETAG_ALLOWED_ROOTS) "
            "- send the file's bytes in image.data",
            reason="IMAGE_URI_REFUSED", field="image.uri",
        )
    uri = image_proto.uri
    path_text = uri[len("file://"):] if uri.startswith("file://") else uri
    if "://" in path_text:
        raise InvalidInput(f"image.uri {uri!r}: only local paths and file:// URIs are accepted",
                           reason="IMAGE_URI_REFUSED", field="image.uri")
    path = Path(path_text).resolve()
    roots = [Path(r).expanduser().resolve() for r in allowed_roots]
    if not any(path.is_relative_to(root) for root in roots):
        raise InvalidInput(f"image.uri {uri!r} is outside the allowed roots", reason="IMAGE_URI_REFUSED",
                           field="image.uri")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"image.uri {uri!r} cannot be read: {exc.strerror}", reason="IMAGE_URI_REFUSED",
                           field="image.uri") from None
