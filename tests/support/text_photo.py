"""A photo with text on it, rendered by Pillow: what a building's sign looks like to the OCR path."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFont

SIGN_LINES = ("ST MARY'S HOSPITAL", "FOUNDED 1911")


def text_photo(width: int = 480, height: int = 200, lines: tuple[str, ...] = SIGN_LINES) -> Image.Image:
    """Dark letters on a light wall, one line under the other."""
    image = Image.new("RGB", (width, height), (225, 215, 195))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(12, height // (2 * len(lines) + 1)))
    for row, line in enumerate(lines):
        draw.text((width // 12, height * (2 * row + 1) // (2 * len(lines) + 1)), line, fill=(30, 25, 20), font=font)
    return image


def text_photo_jpeg(width: int = 480, height: int = 200) -> bytes:
    buffer = io.BytesIO()
    text_photo(width, height).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()
