"""The one image decoder: encoded bytes → an upright 8-bit RGB PIL image, or InvalidInput.

Every service decodes through ImageDecoder, in a thread pool of its own, so a slow or
hostile file never blocks the event loop. Decoding is planned from the header before any
pixel is decoded (`open_image`): size, pixel and JPEG scan limits, the DCT scale or
integer reduction that still leaves the model's input edge, and the peak memory the
decode will hold, which a byte budget shared by all decodes admits (DecodeMemory). Any
failure to read or decode a file is InvalidInput: the file's fault, never INTERNAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import stat
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from archivetag.runtime.errors import DeadlineExpired, InvalidInput, QueueFull
from archivetag.runtime.metrics import DECODE_SECONDS, DECODES_STOPPED, THREAD_CPU_SECONDS

try:  # HEIC/HEIF (phone photos) through libheif
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_AVAILABLE = True
except ImportError:  # pragma: no cover - pillow-heif is a dependency; kept for slim installs
    HEIF_AVAILABLE = False

# Formats accepted. PIL could open more (EPS would run Ghostscript, PSD, ICO, ...):
# restricting `Image.open` to these keeps the attack surface and the behaviour known.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF") + (("HEIF",) if HEIF_AVAILABLE else ())
# What Pillow calls a JPEG-coded stream: a JPEG with an APP2 "MPF" segment opens as MPO (a camera's
# multi-picture file), and its first frame is the same JPEG. Every JPEG guard (scan limit, reduced-scale
# draft, the progressive decoder's coefficient memory) goes by what the bytes are, not by that name.
JPEG_CODED = frozenset({"JPEG", "MPO"})
_FORMAT_NAMES = "JPEG, PNG, WebP, TIFF, BMP, GIF" + (", HEIC/HEIF" if HEIF_AVAILABLE else "")

# Pillow's own bomb guard is off: our pixel limit (ARCHIVETAG_MAX_IMAGE_PIXELS) is checked from the
# header before any decode, with a clear message, and Pillow's fixed 179 MP error would refuse images
# an operator's setting allows. Every accepted format states its size in the header.
Image.MAX_IMAGE_PIXELS = None

# The ISO-media brands of HEIF/HEIC stills (ISO/IEC 23008-12); other brands are videos or other formats.
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")

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
    # A camera's progressive JPEG has about 10 scans; each scan is a pass over every block,
    # so thousands of nearly empty scans cost minutes of CPU in a file of a few KB.
    max_jpeg_scans: int = 100
    # The most memory one decode may need at its peak (estimated from the header); also the
    # budget all of a process's decodes share (DecodeMemory).
    max_decode_bytes: int = 1024 * 1024 * 1024


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
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "an AVIF image (not accepted)"
        if brand in _HEIF_BRANDS and HEIF_AVAILABLE:
            return "a corrupt HEIF file (its header could not be read)"
        return f"an ISO media file of brand {brand.decode('latin-1')!r} (a video, or an image format not accepted)"
    head = data[:64].lstrip()
    for magic, what in _SNIFF:
        if head.startswith(magic) or (magic == b"<svg" and b"<svg" in data[:1024]):
            return what
    if all(32 <= b < 127 or b in (9, 10, 13) for b in data[:256]):
        return "text, not an image"
    return "not a recognised image"


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.0f} MP" if pixels >= 1e6 else f"{pixels} pixels"


def _jpeg_scans(data: bytes, limit: int) -> int:
    """How many scans (SOS markers) a JPEG has, counted up to limit + 1 without decoding.

    Segments are skipped by their lengths; entropy-coded data by searching for the next
    marker (0xFF not followed by a stuffed 0x00 or a restart marker).
    """
    scans, pos, end = 0, 2, len(data)
    while pos + 1 < end:
        if data[pos] != 0xFF:
            pos = data.find(b"\xff", pos)
            if pos < 0:
                break
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0x00 or 0xD0 <= marker <= 0xD7:  # stuffed byte, restart marker
            pos += 2
        elif marker == 0xD9:  # end of image
            break
        else:
            if marker == 0xDA:
                scans += 1
                if scans > limit:
                    break
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return scans


def _bytes_per_pixel(mode: str) -> int:
    """How many bytes Pillow stores per pixel of this mode (multi-band modes use 4)."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


@dataclass(frozen=True)
class DecodePlan:
    """What decoding an opened image will do and cost, known from its header alone."""

    format: str
    size: tuple[int, int]  # as the decoder will produce it (after a JPEG's DCT scaling)
    mode: str
    reduce: int  # integer factor the decoded pixels are shrunk by at once (1: kept)
    peak_bytes: int  # the most memory the decode holds at one time, estimated
    stored_size: tuple[int, int] = (0, 0)  # as stored in the file, before any reduced-scale decoding


# Images up to this size reach the model's own preprocessing as decoded (its results then
# equal the reference implementation's); larger ones are shrunk first, which bounds the
# memory and time of everything after the decode.
SHRINK_ABOVE_PIXELS = 16_000_000
# Copies of the reduced image (4 bytes a pixel) alive at once while it is turned into upright RGB: with alpha,
# the RGBA image, a white background and the result (and a turn); another mode, its RGB conversion and a turn;
# RGB, a turn or a reduction only (the decoded image is the result otherwise). Measured against peak RSS per
# format by tests/runtime/test_decode_memory.py.
_ALPHA_COPIES, _CONVERTED_COPIES, _RGB_COPIES = 4, 2, 1
# Row bands, buffers and the like, beyond the pixel arrays.
_FIXED_OVERHEAD = 16 * 1024 * 1024


def _plan(image: Image.Image, stored_size: tuple[int, int], min_edge: int | None) -> DecodePlan:
    width, height = image.size
    decoded = width * height * _bytes_per_pixel(image.mode)
    codec = 0  # memory the codec library holds beside Pillow's image
    if image.format in JPEG_CODED and image.info.get("progressive"):
        # libjpeg keeps every DCT coefficient (2 bytes) of the full-size image for a
        # progressive file, whatever the output scale.
        codec = stored_size[0] * stored_size[1] * len(image.getbands()) * 2
    elif image.format == "WEBP":
        # libwebp's animation decoder (Pillow's only WebP path) keeps two canvases, and the
        # frame reaches Pillow through a bytes copy; it cannot decode at a reduced scale.
        codec = width * height * 4 * 3
    elif image.format in ("HEIF", "TIFF"):
        codec = width * height * 4  # libheif's frame; libtiff's strip buffer or RGBA raster
    factor = max(1, min(width, height) // min_edge) if min_edge and width * height > SHRINK_ABOVE_PIXELS else 1
    premultiplied = decoded if factor > 1 and image.mode in ("LA", "RGBA") else 0  # Pillow's copy while reducing
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    copies = _ALPHA_COPIES if has_alpha else _RGB_COPIES if image.mode == "RGB" else _CONVERTED_COPIES
    output = -(-width // factor) * -(-height // factor) * 4 * copies
    assert image.format is not None  # set by Image.open, which identified the file
    return DecodePlan(image.format, (width, height), image.mode, factor,
                      decoded + codec + premultiplied + output + _FIXED_OVERHEAD, stored_size)


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


class DecodeStopped(Exception):
    """The decode's caller left: its reader stopped handing the decoder data."""


class _StoppableReader(io.BytesIO):
    """The image bytes as the decoder reads them, block by block (Pillow reads 64 KiB at a time between
    decoder calls), until `stop` is set: then the next read raises and the decode ends there."""

    def __init__(self, data: bytes, stop: threading.Event | None):
        super().__init__(data)
        self.stop = stop

    def read(self, size: int | None = -1) -> bytes:
        if self.stop is not None and self.stop.is_set():
            raise DecodeStopped("the caller left")
        return super().read(size)


def open_image(
    data: bytes, limits: ImageLimits = ImageLimits(), min_edge: int | None = None,
    stop: threading.Event | None = None,
) -> tuple[Image.Image, DecodePlan]:
    """Read the header only: check the limits and plan the decode. Raises InvalidInput.
    stop: once set, the pixel decode (finish_decode) ends at its next read with DecodeStopped."""
    check_image_size(data, limits.max_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(_StoppableReader(data, stop), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        what = _describe_non_image(data)
        raise InvalidInput(
            f"image format not recognised: {what}; accepted formats: {_FORMAT_NAMES}",
            reason="IMAGE_CORRUPT" if what.startswith("a corrupt") else "IMAGE_FORMAT_UNSUPPORTED",
        ) from None
    except MemoryError:
        raise QueueFull("not enough memory to read this image's header now; retry later") from None
    except Exception as exc:  # noqa: BLE001 - whatever a hostile header makes Pillow raise is the file's fault
        raise InvalidInput(f"image header is corrupt: {_reason(exc)}") from None
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
    if image.format in JPEG_CODED:
        scans = _jpeg_scans(data, limits.max_jpeg_scans)
        if scans > limits.max_jpeg_scans:
            raise InvalidInput(
                f"JPEG has more than {limits.max_jpeg_scans} scans (a camera's progressive JPEG has about 10); "
                "decoding it would take minutes of CPU (limit ARCHIVETAG_MAX_JPEG_SCANS)",
                reason="IMAGE_DECODE_LIMIT",
                metadata={"setting": "ARCHIVETAG_MAX_JPEG_SCANS", "limit": limits.max_jpeg_scans},
            )
        if limits.jpeg_draft and min_edge and min(image.size) >= 2 * min_edge:
            try:
                image.draft("RGB", (min_edge, min_edge))
            except Exception as exc:  # noqa: BLE001
                raise InvalidInput(f"image header is corrupt: {_reason(exc)}") from None
    plan = _plan(image, (width, height), min_edge)
    if plan.peak_bytes > limits.max_decode_bytes:
        raise InvalidInput(
            f"decoding this {width}×{height} {image.format} ({image.mode}) needs about {plan.peak_bytes >> 20} MiB; "
            f"the limit is {limits.max_decode_bytes >> 20} MiB (set ARCHIVETAG_DECODE_MEMORY_MB)",
            reason="IMAGE_DECODE_LIMIT",
            metadata={"setting": "ARCHIVETAG_DECODE_MEMORY_MB", "limit": limits.max_decode_bytes >> 20},
        )
    return image, plan


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _high_depth_grey_to_l(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit or float grey → 8-bit grey (Pillow would clip at 255: almost all white).

    16-bit ranges keep their brightness (÷257); other ranges are stretched to full contrast.
    Works in row bands of float32, so the only full-size array is the 8-bit result.
    """
    width, height = image.size
    rows = max(1, (1 << 20) // width)
    bands = [(top, min(height, top + rows)) for top in range(0, height, rows)]

    def band(top: int, bottom: int) -> np.ndarray:
        values = np.asarray(image.crop((0, top, width, bottom)), dtype=np.float32)
        return np.where(np.isfinite(values), values, np.float32(0.0))

    low, high = 0.0, 0.0
    for top, bottom in bands:
        values = band(top, bottom)
        low, high = min(low, float(values.min())), max(high, float(values.max()))
    if image.mode != "F" and low >= 0 and high <= 0xFFFF:
        low, scale = 0.0, 1 / 257.0
    else:
        scale = 255.0 / (high - low) if high > low else 0.0
    grey = np.empty((height, width), dtype=np.uint8)
    for top, bottom in bands:
        scaled = (band(top, bottom) - low) * scale
        grey[top:bottom] = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L")


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


def _shrink(image: Image.Image, factor: int) -> Image.Image:
    if factor <= 1:
        return image
    try:
        return image.reduce(factor)  # box filter in one pass; not every mode has it
    except ValueError:
        return image.resize((-(-image.width // factor), -(-image.height // factor)), Image.Resampling.BOX)


# EXIF orientation → the transpose that shows the photo upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


# Where a decoded image carries the photo's own size (source_size).
SOURCE_SIZE_KEY = "archivetag.source_size"


def source_size(image: Image.Image) -> tuple[int, int]:
    """The upright size of the photo as stored, which a decode at a reduced scale leaves behind: a model
    that answers in pixel coordinates (Florence-2's OCR regions) answers in these. The image's own size
    for an image that did not come from the decoder."""
    return tuple(image.info.get(SOURCE_SIZE_KEY, image.size))


def _with_source_size(decoded: Image.Image, orientation: int | None, plan: DecodePlan) -> Image.Image:
    """The decoded image, carrying the photo's upright stored size (the orientation it was turned by)."""
    width, height = plan.stored_size
    turned = orientation in (5, 6, 7, 8)  # the transposes that swap width and height
    decoded.info[SOURCE_SIZE_KEY] = (height, width) if turned else (width, height)
    return decoded


def finish_decode(image: Image.Image, plan: DecodePlan) -> Image.Image:
    """Decode the pixels of an opened image (its first frame or page only) to upright RGB.

    Only the first frame is ever read: nothing here asks for the frame count, which would
    walk every page of a TIFF chain or every frame of a GIF.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.load()
            orientation = image.getexif().get(0x0112)
            image = _shrink(image, plan.reduce)
            if orientation in _UPRIGHT:
                image = image.transpose(_UPRIGHT[orientation])
            return _with_source_size(_to_rgb(image), orientation, plan)
    except MemoryError:
        raise QueueFull("not enough memory to decode this image now; retry later") from None
    except DecodeStopped:
        raise
    except Exception as exc:  # noqa: BLE001 - a file Pillow cannot decode is the client's problem, whatever it raises
        raise InvalidInput(f"image data is truncated or corrupt ({plan.format}): {_reason(exc)}") from None


# JPEG colour modes nvJPEG decodes as the CPU path does (CMYK/YCCK stay on Pillow, which inverts Adobe CMYK).
_TORCH_JPEG_MODES = ("RGB", "L")


def decodes_on_device(plan: DecodePlan, device: str) -> bool:
    """Whether finish_decode_with_torch serves this image on `device` (a CUDA JPEG)."""
    return device.startswith("cuda") and plan.format == "JPEG" and plan.mode in _TORCH_JPEG_MODES


def finish_decode_with_torch(data: bytes, image: Image.Image, plan: DecodePlan, device: str) -> Image.Image:
    """A JPEG's pixels decoded by torchvision on `device` (nvJPEG on CUDA), as finish_decode does on the CPU:
    the limits were checked by open_image, the result is upright 8-bit RGB of the same size (the DCT
    draft scale and integer reduction become one area resize on the device), and the image that
    reaches the model's preprocessing is a Pillow image as from the CPU path.

    Imported lazily: only torch services (Florence-2, RAM++) on CUDA come here; SigLIP stays torch-free.
    """
    import torch

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs for torchcodec; they still work
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

    width, height = plan.size
    size = (-(-height // plan.reduce), -(-width // plan.reduce))
    try:
        orientation = image.getexif().get(0x0112)
        encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        pixels = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
        if tuple(pixels.shape[1:]) != size:
            pixels = torch.nn.functional.interpolate(pixels[None].float(), size=size, mode="area")[0]
            pixels = pixels.round_().clamp_(0, 255).to(torch.uint8)
        result = Image.fromarray(pixels.permute(1, 2, 0).contiguous().cpu().numpy(), "RGB")
    except MemoryError:
        raise QueueFull("not enough memory to decode this image now; retry later") from None
    except Exception as exc:  # noqa: BLE001 - as finish_decode: a file the codec cannot decode is the client's problem
        raise InvalidInput(f"image data is truncated or corrupt ({plan.format}): {_reason(exc)}") from None
    return _with_source_size(result.transpose(_UPRIGHT[orientation]) if orientation in _UPRIGHT else result,
                             orientation, plan)


def decode_image(data: bytes, limits: ImageLimits = ImageLimits(), min_edge: int | None = None) -> Image.Image:
    """Decode bytes to an upright RGB image, or raise InvalidInput naming the problem.

    min_edge: the model's input edge; large JPEGs are then decoded at a reduced DCT scale,
    and images over SHRINK_ABOVE_PIXELS shrunk at once by an integer factor, both still
    leaving each side at least this long.
    """
    image, plan = open_image(data, limits, min_edge)
    return finish_decode(image, plan)


def _check_deadline(deadline: float | None, what: str) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineExpired(f"deadline passed before {what}")


class DecodeMemory:
    """A byte budget shared by every decode of a process: a decode waits, in arrival order,
    until its estimated peak fits (open_image refuses one that alone needs more)."""

    def __init__(self, total_bytes: int):
        self.total = total_bytes
        self.used = 0
        self._waiting: deque[tuple[int, asyncio.Future]] = deque()

    @contextlib.asynccontextmanager
    async def hold(self, nbytes: int, deadline: float | None):
        nbytes = min(nbytes, self.total)  # open_image refused more; never wait for the impossible
        if self._waiting or self.used + nbytes > self.total:
            granted = asyncio.get_running_loop().create_future()
            self._waiting.append((nbytes, granted))
            try:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                await asyncio.wait_for(asyncio.shield(granted), timeout)
            except BaseException as exc:
                if granted.done() and not granted.cancelled():
                    self._release(nbytes)  # granted just as the wait ended
                else:
                    granted.cancel()
                    self._waiting = deque(w for w in self._waiting if w[1] is not granted)
                    self._grant()
                if isinstance(exc, TimeoutError):
                    raise DeadlineExpired("deadline passed while waiting for memory to decode the image") from None
                raise
        else:
            self.used += nbytes
        try:
            yield
        finally:
            self._release(nbytes)

    def _release(self, nbytes: int) -> None:
        self.used -= nbytes
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self.used + self._waiting[0][0] <= self.total:
            nbytes, granted = self._waiting.popleft()
            if not granted.done():
                self.used += nbytes
                granted.set_result(None)


class ImageDecoder:
    """Reads and decodes images in its own thread pool so the event loop never waits on pixels.

    A decode runs in two steps: the header (cheap; gives the plan and its memory estimate),
    then, once the estimate fits the shared DecodeMemory budget, the pixels. A step whose
    deadline has passed does not start, and one whose caller went away is never started.
    """

    def __init__(
        self, limits: ImageLimits, threads: int = 2, min_edge: int | None = None,
        allowed_roots: Sequence[Path | str] = (), device: str = "cpu",
    ):
        self.limits = limits
        self.device = device  # where the model runs: JPEGs are decoded there when it is CUDA
        self.min_edge = min_edge
        self.allowed_roots = list(allowed_roots)
        self.memory = DecodeMemory(limits.max_decode_bytes)
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="decode")
        self._running_since: dict[int, float] = {}  # decode thread id → when its step started

    def _open(self, image_proto, deadline: float | None,
              stop: threading.Event) -> tuple[bytes, Image.Image, DecodePlan]:
        _check_deadline(deadline, "the image was read")
        data = read_image_source(image_proto, self.allowed_roots, self.limits.max_bytes, deadline)
        return (data, *open_image(data, self.limits, self.min_edge, stop))

    def _finish(self, data: bytes, image: Image.Image, plan: DecodePlan,
                then: Callable[[Image.Image], Any] | None, deadline: float | None) -> Any:
        _check_deadline(deadline, "the image was decoded")
        if decodes_on_device(plan, self.device):
            decoded = finish_decode_with_torch(data, image, plan, self.device)
        else:
            decoded = finish_decode(image, plan)
        return then(decoded) if then else decoded

    def _timed(self, step: Callable[..., Any], *args: Any) -> Any:
        thread = threading.get_ident()
        started = self._running_since[thread] = time.monotonic()
        cpu_started = time.thread_time()
        try:
            return step(*args)
        finally:
            del self._running_since[thread]
            DECODE_SECONDS.labels("header" if step == self._open else "pixels").observe(time.monotonic() - started)
            THREAD_CPU_SECONDS.labels("decode").inc(time.thread_time() - cpu_started)

    async def _in_pool(self, step: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._timed, step, *args)

    async def decode(self, image_proto, then: Callable[[Image.Image], Any] | None = None,
                     deadline: float | None = None) -> Any:
        """Decode an archivetag.v1.Image (bytes, or a path under an allowed root) in the pool.

        then: further per-image work (the model's preprocessing) to run in the same thread,
        inside the memory budget. deadline: a time.monotonic() value, or None.
        """
        stop = threading.Event()
        data, image, plan = await self._in_pool(self._open, image_proto, deadline, stop)
        async with self.memory.hold(plan.peak_bytes, deadline):
            work = asyncio.ensure_future(self._in_pool(self._finish, data, image, plan, then, deadline))
            try:
                return await asyncio.shield(work)
            except asyncio.CancelledError:
                # The caller left (cancelled, or its deadline passed): the decode stops at its next read, and
                # its memory stays held until the thread has let go of it.
                stop.set()
                outcome = (await asyncio.gather(work, return_exceptions=True))[0]
                if isinstance(outcome, DecodeStopped):
                    DECODES_STOPPED.inc()
                raise

    def longest_step_seconds(self) -> float:
        """How long the longest-running decode step has been running (0: none is), for the watchdog."""
        starts = list(self._running_since.values())
        return time.monotonic() - min(starts) if starts else 0.0

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _uri_path(uri: str) -> str:
    path_text = uri[len("file://"):] if uri.startswith("file://") else uri
    if "://" in path_text:
        raise InvalidInput(f"image.uri {uri!r}: only local paths and file:// URIs are accepted",
                           reason="IMAGE_URI_REFUSED", field="image.uri")
    return path_text


_READ_CHUNK = 1024 * 1024


def read_image_source(
    image_proto, allowed_roots: Sequence[Path | str], max_bytes: int = ImageLimits.max_bytes,
    deadline: float | None = None,
) -> bytes:
    """The bytes of an archivetag.v1.Image: its data, or a regular file under an allowed root.

    A path must be a regular file (a FIFO would block the reader, a device never ends), no
    larger than max_bytes (checked before reading), read before the deadline
    (time.monotonic()). Blocking: call it off the event loop.
    """
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
    outside = InvalidInput(f"image.uri {uri!r} is outside the allowed roots", reason="IMAGE_URI_REFUSED",
                           field="image.uri")
    try:
        raw = _uri_path(uri)
        roots = [Path(os.path.realpath(Path(r).expanduser())) for r in allowed_roots]
        resolved = _inside_roots(raw, roots)  # nothing outside the roots is even opened
        if resolved is None:
            raise outside
        # O_NONBLOCK: opening a FIFO must not wait for a writer; O_NOFOLLOW: the last part must not have
        # become a link since. A folder swapped for a link in between is caught after the open.
        fd = os.open(resolved, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError) as exc:  # ELOOP (a symlink loop), ENOENT, EACCES, a NUL in the path
        raise InvalidInput(f"image.uri {uri!r} cannot be opened: {getattr(exc, 'strerror', None) or exc}",
                           reason="IMAGE_URI_REFUSED", field="image.uri") from None
    info = os.fstat(fd)
    if not _opened_inside(raw, fd, info, roots):
        os.close(fd)
        raise outside
    if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
        os.close(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(f"image.uri {uri!r} is not a regular file ({_file_kind(info.st_mode)})",
                               reason="IMAGE_URI_REFUSED", field="image.uri")
        raise InvalidInput(
            f"image.uri {uri!r} is {info.st_size} bytes; the limit is {max_bytes} bytes "
            "(set ARCHIVETAG_MAX_IMAGE_BYTES)"
        )
    with os.fdopen(fd, "rb", buffering=0) as file:
        chunks, size = [], 0
        try:
            while chunk := file.read(min(_READ_CHUNK, max_bytes + 1 - size)):
                chunks.append(chunk)
                size += len(chunk)
                if size > max_bytes:
                    raise InvalidInput(f"image.uri {uri!r} grew past the limit of {max_bytes} bytes while being read",
                                       reason="IMAGE_URI_REFUSED", field="image.uri")
                _check_deadline(deadline, f"image.uri {uri!r} was read")
        except OSError as exc:
            raise InvalidInput(f"image.uri {uri!r} cannot be read: {exc.strerror or exc}",
                               reason="IMAGE_URI_REFUSED", field="image.uri") from None
        return b"".join(chunks)


def _inside_roots(raw: str, roots: list[Path]) -> Path | None:
    """The path resolved (links followed), if it lies inside one of the (resolved) roots; else None."""
    resolved = Path(os.path.realpath(raw))
    return resolved if any(resolved.is_relative_to(root) for root in roots) else None


def _opened_inside(raw: str, fd: int, opened: os.stat_result, roots: list[Path]) -> bool:
    """Checked after the open: does the file opened lie inside an allowed root? A path redirected between
    the check and the open (a folder swapped for a link) is refused before a byte is read. The kernel names
    what an fd is (/proc/self/fd); where it cannot, the path must still resolve to the very file opened."""
    try:
        actual = Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        actual = None
    if actual is not None and actual.is_absolute():
        return any(actual.is_relative_to(root) for root in roots)
    try:
        resolved = _inside_roots(raw, roots)
        now = os.stat(resolved) if resolved is not None else None
    except (OSError, ValueError):
        return False
    return now is not None and (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino)


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


_FILE_READS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="image-read")


async def read_image_source_async(
    image_proto, allowed_roots: Sequence[Path | str], max_bytes: int = ImageLimits.max_bytes,
    deadline: float | None = None,
) -> bytes:
    """read_image_source in a pool of its own, so slow disks never hold the event loop's default pool."""
    if image_proto.WhichOneof("source") == "data":
        return image_proto.data
    return await asyncio.get_running_loop().run_in_executor(
        _FILE_READS, read_image_source, image_proto, allowed_roots, max_bytes, deadline
    )
