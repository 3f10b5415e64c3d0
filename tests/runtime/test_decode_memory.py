"""The decoder's memory estimate against what a decode really takes, per format, and a decode that stops
when its caller leaves (issue 30, item 1): the shared decode budget is only as good as both."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from archivetag.runtime.images import ImageDecoder, ImageLimits
from archivetag.runtime.metrics import DECODES_STOPPED
from archivetag.v1 import common_pb2
from tests.support.image_corpus import as_mpo
from tests.support.waiting import wait_for_async

REPO = Path(__file__).resolve().parents[2]


def smooth(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A photo-like image (smooth noise), not a flat one that codecs shortcut."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.BILINEAR).convert(mode)


def encoded(image: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def rotated_jpeg(image: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # turned: one more full copy while it is made upright
    return encoded(image, "JPEG", quality=90, exif=exif.tobytes())


CASES = {
    "baseline JPEG": lambda: encoded(smooth(4000, 3000), "JPEG", quality=90),
    "progressive JPEG": lambda: encoded(smooth(4000, 3000), "JPEG", quality=90, progressive=True),
    "progressive MPO": lambda: as_mpo(encoded(smooth(4000, 3000), "JPEG", quality=90, progressive=True)),
    "EXIF-turned JPEG": lambda: rotated_jpeg(smooth(4000, 3000)),
    "RGBA PNG": lambda: encoded(smooth(4000, 3000, "RGBA"), "PNG", compress_level=1),
    "grey PNG": lambda: encoded(smooth(4000, 3000, "L"), "PNG", compress_level=1),
    "WebP": lambda: encoded(smooth(3000, 2000), "WEBP", quality=80),
    "TIFF": lambda: encoded(smooth(3000, 2000), "TIFF"),
}


@pytest.mark.parametrize("min_edge", [None, 384])
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_decode_memory_estimate_covers_the_measured_peak(case, min_edge, tmp_path):
    """Each decode in its own process: its peak resident memory (VmHWM, reset just before) never exceeds the
    estimate that the decode budget admits it by."""
    path = tmp_path / "image"
    path.write_bytes(CASES[case]())
    argv = [sys.executable, "-m", "tests.support.decode_peak", str(path), *([str(min_edge)] if min_edge else [])]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    peak = json.loads(result.stdout)
    assert peak["measured_mib"] <= peak["estimate_mib"], peak


def test_a_decode_whose_caller_leaves_stops_at_its_next_read_and_holds_its_memory_until_then():
    """A 27 MB PNG (hundreds of reads): the caller is cancelled once its decode holds the budget; the decode
    ends at its next read instead of running to the end, and the budget is free once it has."""
    data = encoded(smooth(3000, 3000, seed=3), "PNG", compress_level=0)
    decoder = ImageDecoder(ImageLimits(), threads=1)
    image = common_pb2.Image(data=data)
    stopped_before = DECODES_STOPPED._value.get()

    async def scenario() -> None:
        decode = asyncio.ensure_future(decoder.decode(image))
        await wait_for_async(lambda: decoder.memory.used, lambda used: used > 0, timeout=60,
                             describe="the decode to hold its memory (its pixel step started)")
        decode.cancel()
        with pytest.raises(asyncio.CancelledError):
            await decode
        assert decoder.memory.used == 0
        assert decoder.longest_step_seconds() == 0.0  # the thread has let go, not just the caller

    try:
        asyncio.run(scenario())
    finally:
        decoder.close()
    assert DECODES_STOPPED._value.get() == stopped_before + 1
