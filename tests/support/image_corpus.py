"""A corpus of malformed and unusual image files, each with the outcome a user should get.

Every case is built here from code (no binary fixtures). `expect` is either "ok" with the
decoded size and a check on the pixels, or "invalid" with a fragment the INVALID_ARGUMENT
message must contain.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

import pillow_heif

pillow_heif.register_heif_opener()


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    expect: str  # "ok" or "invalid"
    size: tuple[int, int] | None = None  # decoded (width, height) for "ok"
    message: str = ""  # fragment of the error message for "invalid"
    check: Callable[[Image.Image], bool] | None = None  # extra pixel check for "ok"


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_with_header(width: int, height: int, bit_depth: int = 8, colour_type: int = 2, rows: bytes = b"") -> bytes:
    """A PNG written by hand, so its header can claim anything."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(rows)) + _png_chunk(b"IEND", b"")
    )


def photo(width: int = 96, height: int = 64) -> Image.Image:
    """A deterministic colourful image (gradients), so resampling has something to do."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x + y) % 256], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def _exif_rotated_jpeg() -> bytes:
    # Stored 80×40 (landscape) with orientation 6: viewers show it 40×80 (portrait).
    image = photo(80, 40)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", exif=exif.tobytes(), quality=95)


def _animated_gif() -> bytes:
    frames = [Image.new("P", (32, 24), i) for i in range(3)]
    for i, frame in enumerate(frames):
        frame.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _animated_webp() -> bytes:
    frames = [Image.new("RGB", (32, 24), c) for c in ((250, 0, 0), (0, 250, 0))]
    return encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)


def _multipage_tiff() -> bytes:
    pages = [Image.new("RGB", (20, 10), c) for c in ((0, 0, 250), (250, 250, 0))]
    return encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])


def _palette_with_transparency() -> bytes:
    image = Image.new("P", (16, 16), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    for x in range(8):
        for y in range(16):
            image.putpixel((x, y), 1)
    return encode(image, "PNG", transparency=0)  # palette index 0 (black) is transparent


def _sixteen_bit_grey() -> bytes:
    ramp = (np.arange(64, dtype=np.uint32)[None, :].repeat(8, 0) * 1024).astype(np.uint16)
    return encode(Image.fromarray(ramp), "PNG")


def _forty_eight_bit_rgb() -> bytes:
    row = b"\x00" + np.full((4, 3), 40000, dtype=">u2").tobytes()
    return png_with_header(4, 4, bit_depth=16, colour_type=2, rows=row * 4)


def _cmyk_jpeg() -> bytes:
    return encode(Image.new("CMYK", (30, 20), (0, 255, 255, 0)), "JPEG")  # pure red in CMYK


def _truncated(data: bytes, keep: float) -> bytes:
    return data[: int(len(data) * keep)]


def _bad_crc_png() -> bytes:
    data = bytearray(encode(photo(16, 16), "PNG"))
    data[29] ^= 0xFF  # inside the IHDR CRC
    return bytes(data)


def _float_tiff() -> bytes:
    return encode(Image.fromarray(np.linspace(0, 1, 200, dtype=np.float32).reshape(10, 20), "F"), "TIFF")


def _int32_tiff() -> bytes:
    return encode(Image.fromarray((np.arange(200, dtype=np.int32).reshape(10, 20) * 300000), "I"), "TIFF")


def _mostly(colour: tuple[int, int, int], tolerance: int = 40) -> Callable[[Image.Image], bool]:
    def check(image: Image.Image) -> bool:
        mean = np.asarray(image, dtype=np.float32).reshape(-1, 3).mean(axis=0)
        return bool(np.all(np.abs(mean - np.array(colour)) <= tolerance))

    return check


def _not_flat(image: Image.Image) -> bool:
    return float(np.asarray(image).std()) > 10


def _transparent_half_white(image: Image.Image) -> bool:
    array = np.asarray(image)
    return bool((array[:, :8] == (255, 0, 0)).all() and (array[:, 8:] == (255, 255, 255)).all())


def corpus() -> list[Case]:
    jpeg = encode(photo(), "JPEG", quality=90)
    png = encode(photo(), "PNG")
    rgba = Image.new("RGBA", (10, 10), (0, 0, 255, 0))
    return [
        # Not images at all.
        Case("empty bytes", b"", "invalid", message="empty"),
        Case("random bytes", np.random.default_rng(7).bytes(4096), "invalid", message="not recognised"),
        Case("plain text", b"Dear archivist,\nthis is a letter, not a photo.\n" * 20, "invalid", message="text"),
        Case("svg drawing", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>',
             "invalid", message="SVG"),
        Case("svg without xml prolog", b'<svg xmlns="http://www.w3.org/2000/svg"><rect/></svg>', "invalid", message="SVG"),
        Case("pdf document", b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF", "invalid", message="PDF"),
        Case("zip archive", b"PK\x03\x04" + b"\x00" * 100, "invalid", message="ZIP"),
        Case("html page", b"<!doctype html><html><body>not a photo</body></html>", "invalid", message="text"),
        # Formats PIL knows but the service does not accept.
        Case("ico icon", encode(Image.new("RGB", (16, 16)), "ICO"), "invalid", message="accepted formats"),
        Case("photoshop magic", b"8BPS\x00\x01" + b"\x00" * 64, "invalid", message="Photoshop"),
        Case("ppm image", encode(photo(8, 8), "PPM"), "invalid", message="accepted formats"),
        # Broken images.
        Case("truncated jpeg", _truncated(jpeg, 0.5), "invalid", message="truncated"),
        Case("jpeg header only", jpeg[:20], "invalid", message="JPEG"),
        Case("truncated png", _truncated(png, 0.6), "invalid", message="truncated"),
        Case("png with bad header crc", _bad_crc_png(), "invalid", message="corrupt"),
        Case("gif header only", b"GIF89a\x10\x00\x10\x00", "invalid", message="corrupt"),
        # Decompression bombs: refused from the header, before any pixel is decoded.
        Case("png claiming 100000x100000", png_with_header(100_000, 100_000), "invalid", message="limit is 100 MP"),
        Case("png claiming 20000x20000 of zeros", png_with_header(20_000, 20_000, 8, 0, b""), "invalid",
             message="400 MP"),
        # Unusual but valid images.
        Case("1x1 png", encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), "ok", (1, 1)),
        Case("plain jpeg", jpeg, "ok", (96, 64), check=_not_flat),
        Case("plain png", png, "ok", (96, 64), check=_not_flat),
        Case("cmyk jpeg", _cmyk_jpeg(), "ok", (30, 20), check=_mostly((255, 0, 0))),
        Case("greyscale jpeg", encode(photo().convert("L"), "JPEG"), "ok", (96, 64), check=_not_flat),
        Case("16-bit greyscale png", _sixteen_bit_grey(), "ok", (64, 8), check=_not_flat),
        Case("48-bit rgb png", _forty_eight_bit_rgb(), "ok", (4, 4), check=_mostly((156, 156, 156), 2)),
        Case("palette png with transparency", _palette_with_transparency(), "ok", (16, 16), check=_transparent_half_white),
        Case("fully transparent rgba png", encode(rgba, "PNG"), "ok", (10, 10), check=_mostly((255, 255, 255), 0)),
        Case("greyscale with alpha png", encode(Image.new("LA", (10, 10), (0, 255)), "PNG"), "ok", (10, 10),
             check=_mostly((0, 0, 0), 0)),
        Case("1-bit png", encode(Image.new("1", (12, 12), 1), "PNG"), "ok", (12, 12), check=_mostly((255, 255, 255), 0)),
        Case("animated gif: first frame", _animated_gif(), "ok", (32, 24), check=_mostly((255, 0, 0), 0)),
        Case("animated webp: first frame", _animated_webp(), "ok", (32, 24), check=_mostly((250, 0, 0), 3)),
        Case("exif-rotated jpeg", _exif_rotated_jpeg(), "ok", (40, 80)),
        Case("webp", encode(photo(), "WEBP"), "ok", (96, 64), check=_not_flat),
        Case("tiff", encode(photo(), "TIFF"), "ok", (96, 64), check=_not_flat),
        Case("multi-page tiff: first page", _multipage_tiff(), "ok", (20, 10), check=_mostly((0, 0, 250), 0)),
        Case("float tiff", _float_tiff(), "ok", (20, 10), check=_not_flat),
        Case("32-bit integer tiff", _int32_tiff(), "ok", (20, 10), check=_not_flat),
        Case("bmp", encode(photo(), "BMP"), "ok", (96, 64), check=_not_flat),
        Case("heic", encode(photo(64, 48), "HEIF", quality=90), "ok", (64, 48), check=_not_flat),
    ]


def answers_to_every_case(call: Callable[[bytes], object]) -> list:
    """Send every corpus case through `call(data)` (a unary RPC on a real server).

    A case expected "invalid" must be INVALID_ARGUMENT with a message naming the problem; the
    others must be answered. Returns the answers, for the caller's own checks."""
    import grpc

    answers = []
    for case in corpus():
        try:
            answers.append(call(case.data))
            outcome = "ok"
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (case.name, exc.code(), exc.details())
            assert case.message.lower() in exc.details().lower(), (case.name, exc.details())
            outcome = "invalid"
        assert outcome == case.expect, case.name
    return answers
