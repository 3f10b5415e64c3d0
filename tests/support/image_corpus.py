"""A corpus of malformed and unusual image files, each with the outcome a user should get.

Every case is built here from code (no binary fixtures). `expect` is either "ok" with the
decoded size and a check on the pixels, or "invalid" with a fragment the INVALID_ARGUMENT
message must contain.
"""

from __future__ import annotations

import functools
import io
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

import pillow_heif

pillow_heif.register_heif_opener()


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    expect: str  # "ok", "invalid", or "any" (either; fuzzed files)
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


def scene(seed: int, width: int = 320, height: int = 240) -> Image.Image:
    """A deterministic picture of a dozen coloured boxes and discs, different for every seed."""
    rng = np.random.default_rng(seed)

    def colour() -> tuple[int, ...]:
        return tuple(int(c) for c in rng.integers(0, 256, 3))

    image = Image.new("RGB", (width, height), colour())
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        box = [x, y, x + int(rng.integers(20, 160)), y + int(rng.integers(20, 120))]
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(box, fill=colour())
    return image


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


def answers_to_every_case(call: Callable[[bytes], object], cases: Sequence[Case] | None = None) -> list:
    """Send every case (default: the corpus) through `call(data)` (a unary RPC on a real server).

    A case expected "invalid" must be INVALID_ARGUMENT with a message naming the problem, one
    expected "ok" must be answered, and one expected "any" either. Returns the answers, for
    the caller's own checks."""
    import grpc

    answers = []
    for case in corpus() if cases is None else cases:
        try:
            answers.append(call(case.data))
            outcome = "ok"
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (case.name, exc.code(), exc.details())
            assert exc.details(), case.name
            assert case.message.lower() in exc.details().lower(), (case.name, exc.details())
            outcome = "invalid"
        if case.expect != "any":
            assert outcome == case.expect, case.name
    return answers


# -- hostile files: what a hostile or unlucky client sends (issue 13) ---------------------------

HUGE = 10_000  # edge of the "huge but inside the 100 MP limit" images


def zlib_repeated(chunk: bytes, times: int) -> bytes:
    """The zlib stream of chunk * times, compressing chunk only once: after a full flush a
    deflate block needs nothing before it, so the same block bytes can be repeated."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    final = zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)  # an empty last block
    checksum = 1
    for _ in range(times):
        checksum = zlib.adler32(chunk, checksum)
    return b"\x78\xda" + block * times + final + struct.pack(">I", checksum)


def _zero_rows(row_bytes: int, height: int) -> bytes:
    rows = math.gcd(height, 100)
    return zlib_repeated(b"\x00" * row_bytes * rows, height // rows)


def png_stream(width: int, height: int, bit_depth: int, colour_type: int) -> bytes:
    """A PNG of zero-valued rows: a few hundred KB for 10000² pixels, built without ever
    holding the raw pixels."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    idat = _zero_rows(1 + width * channels * bit_depth // 8, height)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def lossless_webp(width: int, height: int) -> bytes:
    """A transparent lossless WebP of any size in 34 bytes: one colour costs no bits per pixel,
    so a 16×16 file with its VP8L size field rewritten is a valid width×height image."""
    data = bytearray(encode(Image.new("RGBA", (16, 16)), "WEBP", lossless=True))
    assert data[12:16] == b"VP8L" and data[20] == 0x2F
    bits = int.from_bytes(data[21:25], "little")
    bits = (bits & ~((1 << 28) - 1)) | (width - 1) | ((height - 1) << 14)
    data[21:25] = bits.to_bytes(4, "little")
    return bytes(data)


def tiff_pages(pages: list[tuple[dict[int, int], bytes]]) -> bytes:
    """A little-endian TIFF written by hand: each page is ({tag: value}, strip bytes); every
    value is one SHORT or LONG, StripOffsets (273) is filled in."""
    out = bytearray(b"II*\x00" + struct.pack("<I", 8))
    for index, (tags, strip) in enumerate(pages):
        tags = {**tags, 273: 0, 279: len(strip)}
        ifd_size = 2 + 12 * len(tags) + 4
        strip_at = len(out) + ifd_size
        next_at = 0 if index == len(pages) - 1 else strip_at + len(strip)
        out += struct.pack("<H", len(tags))
        for tag in sorted(tags):
            value = strip_at if tag == 273 else tags[tag]
            kind = 3 if value < 0x10000 and tag not in (273, 279) else 4
            out += struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
        out += struct.pack("<I", next_at) + strip
    return bytes(out)


def _grey_page(width: int, height: int, strip: bytes, bits: int = 8, sample_format: int = 1, compression: int = 1):
    tags = {256: width, 257: height, 258: bits, 259: compression, 262: 1, 277: 1, 278: height, 339: sample_format}
    return tags, strip


def tiff_chain(pages: int) -> bytes:
    """A TIFF of `pages` one-pixel pages (the whole chain is walked only if someone counts it)."""
    return tiff_pages([_grey_page(1, 1, bytes([index % 256])) for index in range(pages)])


def float_tiff(width: int, height: int) -> bytes:
    """A 32-bit float TIFF of zeros, deflate-compressed in one strip (~400 KB for 10000²)."""
    return tiff_pages([_grey_page(width, height, _zero_rows(width * 4, height), bits=32, sample_format=3,
                                  compression=8)])


def tiff_with_bad_second_page() -> bytes:
    """Two pages; the second has no ImageWidth/ImageLength (Pillow's page count raises TypeError)."""
    first = _grey_page(20, 10, bytes(range(200)))
    second_tags = {k: v for k, v in _grey_page(20, 10, b"\x80" * 200)[0].items() if k not in (256, 257)}
    return tiff_pages([first, (second_tags, b"\x80" * 200)])


class _Bits:
    """Bits of JPEG entropy-coded data, 0xFF bytes stuffed."""

    def __init__(self) -> None:
        self.out, self.acc, self.count = bytearray(), 0, 0

    def put(self, value: int, length: int) -> None:
        self.acc, self.count = (self.acc << length) | value, self.count + length
        while self.count >= 8:
            self.count -= 8
            byte = (self.acc >> self.count) & 0xFF
            self.out += b"\xff\x00" if byte == 0xFF else bytes([byte])
        self.acc &= (1 << self.count) - 1

    def zeros(self, nbits: int) -> None:
        self.out += b"\x00" * (nbits // 8)
        self.put(0, nbits % 8)

    def done(self) -> bytes:
        if self.count:
            self.put((1 << (8 - self.count)) - 1, 8 - self.count)
        return bytes(self.out)


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def progressive_jpeg(width: int, height: int, scans: int) -> bytes:
    """A flat grey progressive JPEG with `scans` scans: one DC scan, then the same AC scan
    (every block empty, coded as end-of-band runs: a few dozen bytes) repeated. Each scan
    makes the decoder visit every block."""
    blocks = -(-width // 8) * -(-height // 8)
    dc = _Bits()
    dc.zeros(blocks)  # DC category 0 is the 1-bit code 0: every block unchanged
    ac = _Bits()
    left = blocks
    while left:  # end-of-band runs: symbol r<<4 (4-bit code r) then r extra bits, run 2**r + extra
        run = min(left, 32767)
        r = run.bit_length() - 1
        ac.put(r, 4)
        ac.put(run - (1 << r), r)
        left -= run
    dc_data, ac_data = dc.done(), ac.done()
    dc_table = bytes([0x00]) + bytes([1] + [0] * 15) + bytes([0])
    ac_table = bytes([0x10]) + bytes([0, 0, 0, 15] + [0] * 12) + bytes(r << 4 for r in range(15))
    parts = [
        b"\xff\xd8",
        _segment(0xDB, b"\x00" + b"\x01" * 64),
        _segment(0xC2, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00"),
        _segment(0xC4, dc_table + ac_table),
        _segment(0xDA, b"\x01\x01\x00\x00\x00\x00"), dc_data,
    ]
    ac_scan = _segment(0xDA, b"\x01\x01\x00\x01\x3f\x00") + ac_data
    return b"".join(parts) + ac_scan * (scans - 1) + b"\xff\xd9"


def as_mpo(jpeg: bytes) -> bytes:
    """The JPEG with the APP2 "MPF" segment of a two-picture MPO (as cameras write) after its SOI: Pillow then
    opens it as format MPO, its first frame being this JPEG."""
    buffer = io.BytesIO()
    small = photo(16, 16)
    small.save(buffer, "MPO", save_all=True, append_images=[small])
    made = buffer.getvalue()
    at = 2
    while made[at + 1] != 0xE2 or made[at + 4:at + 8] != b"MPF\0":  # walk the segments to the APP2 MPF one
        at += 2 + struct.unpack(">H", made[at + 2:at + 4])[0]
    length = struct.unpack(">H", made[at + 2:at + 4])[0]
    return jpeg[:2] + made[at:at + 2 + length] + jpeg[2:]


@functools.lru_cache(maxsize=1)
def hostile_corpus() -> tuple[Case, ...]:
    """The files of issue 13's table: each once took a service's memory, CPU or health."""
    return (
        Case("multi-page tiff whose second page has no dimensions", tiff_with_bad_second_page(), "ok", (20, 10)),
        Case(f"{HUGE}x{HUGE} 16-bit grey png", png_stream(HUGE, HUGE, 16, 0), "ok"),
        Case(f"{HUGE}x{HUGE} rgba png", png_stream(HUGE, HUGE, 8, 6), "ok"),
        # libwebp cannot decode at a reduced scale: its full-size RGBA copies exceed the 1 GiB default.
        Case(f"{HUGE}x{HUGE} lossless webp", lossless_webp(HUGE, HUGE), "invalid", message="DECODE_MEMORY_MB"),
        Case(f"{HUGE}x{HUGE} float tiff", float_tiff(HUGE, HUGE), "ok"),
        Case("8000x8000 progressive jpeg with 3000 scans", progressive_jpeg(8000, 8000, 3000), "invalid",
             message="scans"),
        Case("the same as an MPO (an APP2 MPF segment)", as_mpo(progressive_jpeg(8000, 8000, 3000)), "invalid",
             message="scans"),
        Case("tiff chain of 60000 one-pixel pages", tiff_chain(60_000), "ok", (1, 1)),
    )


def _valid_files() -> dict[str, bytes]:
    """One small valid file of every accepted format and common variant, for the fuzz loop."""
    image = photo(48, 32)
    return {
        "jpeg": encode(image, "JPEG", quality=85),
        "progressive jpeg": encode(image, "JPEG", quality=85, progressive=True),
        "png": encode(image, "PNG"),
        "16-bit png": _sixteen_bit_grey(),
        "palette png": _palette_with_transparency(),
        "lossy webp": encode(image, "WEBP", quality=80),
        "lossless webp": encode(image, "WEBP", lossless=True),
        "animated webp": _animated_webp(),
        "animated gif": _animated_gif(),
        "tiff": encode(image, "TIFF"),
        "deflate tiff": encode(image, "TIFF", compression="tiff_deflate"),
        "lzw tiff": encode(image, "TIFF", compression="tiff_lzw"),
        "jpeg tiff": encode(image, "TIFF", compression="jpeg"),
        "multi-page tiff": _multipage_tiff(),
        "float tiff": _float_tiff(),
        "bmp": encode(image, "BMP"),
        "heic": encode(photo(64, 48), "HEIF", quality=80),
    }


def fuzz_corpus(seed: int = 13, truncations: int = 5, flips: int = 7) -> list[Case]:
    """Truncations and byte flips of valid files: each may decode or be INVALID_ARGUMENT,
    nothing else (expect "any"). Fixed seed, bounded count."""
    rng = np.random.default_rng(seed)
    cases = []
    for name, data in _valid_files().items():
        for keep in np.sort(rng.uniform(0.05, 0.98, truncations)):
            cases.append(Case(f"{name} cut at {keep:.0%}", data[: int(len(data) * keep)], "any"))
        for index in range(flips):
            mutated = bytearray(data)
            for position in rng.integers(0, len(data), 1 + index * 2):
                mutated[position] ^= int(rng.integers(1, 256))
            cases.append(Case(f"{name} with {1 + index * 2} bytes flipped (#{index})", bytes(mutated), "any"))
    return cases
