"""The one image decoder, on a corpus of malformed and unusual files (see support/image_corpus.py)."""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time

import numpy as np
import pytest
from PIL import Image, ImageFile

from archivetag.runtime.errors import DeadlineExpired, InvalidInput
from archivetag.runtime.images import (
    DecodeMemory, ImageDecoder, ImageLimits, _jpeg_scans, decode_image, finish_decode, open_image, read_image_source,
    read_image_source_async,
)
from archivetag.v1 import common_pb2
from tests.support.image_corpus import (
    as_mpo, corpus, encode, fuzz_corpus, hostile_corpus, photo, png_stream, progressive_jpeg, tiff_chain,
)
from tests.support.waiting import wait_for_async

CASES = corpus()


def test_corpus_is_large_enough_to_mean_something():
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_each_file_gives_its_expected_outcome(case):
    if case.expect == "invalid":
        with pytest.raises(InvalidInput) as info:
            decode_image(case.data)
        assert case.message.lower() in str(info.value).lower(), str(info.value)
        return
    image = decode_image(case.data)
    assert image.mode == "RGB"
    assert image.size == case.size
    if case.check:
        assert case.check(image), f"pixels of {case.name} are wrong: mean {np.asarray(image).reshape(-1, 3).mean(0)}"


def test_a_decompression_bomb_is_refused_without_decoding_it(monkeypatch):
    bomb = next(c for c in CASES if c.name == "png claiming 100000x100000")
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda image: decoded.append(image))
    with pytest.raises(InvalidInput, match="ARCHIVETAG_MAX_IMAGE_PIXELS"):
        decode_image(bomb.data)
    assert decoded == []  # refused from the header; decoding it would take minutes


def test_byte_limit_names_its_setting():
    data = encode(photo(), "PNG")
    with pytest.raises(InvalidInput, match="ARCHIVETAG_MAX_IMAGE_BYTES"):
        decode_image(data, ImageLimits(max_bytes=len(data) - 1))


def test_exif_orientation_turns_the_photo_upright():
    # Left half red, right half blue, stored with orientation 6 (rotate 90° clockwise to view).
    stored = Image.new("RGB", (80, 40), (255, 0, 0))
    stored.paste((0, 0, 255), (40, 0, 80, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    upright = decode_image(encode(stored, "JPEG", exif=exif.tobytes(), quality=95))
    assert upright.size == (40, 80)
    top, bottom = np.asarray(upright)[5, 20], np.asarray(upright)[75, 20]
    assert top[0] > 200  # stored left (red) is now on top
    assert top[2] < 60
    assert bottom[2] > 200
    assert bottom[0] < 60


def test_large_jpeg_is_decoded_at_reduced_scale_but_never_below_the_model_input():
    big = encode(photo(3000, 2000), "JPEG", quality=85)
    reduced = decode_image(big, min_edge=384)
    assert reduced.size == (750, 500)  # 1/4 scale: the smallest DCT scale keeping both sides ≥ 384
    assert min(reduced.size) >= 384
    full = decode_image(big, ImageLimits(jpeg_draft=False), min_edge=384)
    assert full.size == (3000, 2000)  # 6 MP: reaches the model as it is


def test_an_image_over_the_shrink_size_is_shrunk_at_once_but_never_below_the_model_input():
    huge = png_stream(5000, 4000, 8, 2)  # 20 MP
    assert decode_image(huge, min_edge=384).size == (500, 400)  # the integer factor 10 = 4000 // 384
    assert decode_image(huge).size == (5000, 4000)  # no model edge: nothing is shrunk


def test_small_jpeg_is_not_reduced():
    small = encode(photo(600, 500), "JPEG")
    assert decode_image(small, min_edge=384).size == (600, 500)


def test_paths_are_refused_unless_the_server_allows_a_root(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(encode(photo(), "PNG"))
    image = common_pb2.Image(uri=str(path))
    with pytest.raises(InvalidInput, match="ALLOWED_ROOTS"):
        read_image_source(image, [])
    assert read_image_source(image, [tmp_path]) == path.read_bytes()
    assert read_image_source(common_pb2.Image(uri=f"file://{path}"), [tmp_path]) == path.read_bytes()


def test_paths_outside_the_allowed_roots_are_refused(tmp_path):
    inside = tmp_path / "photos"
    inside.mkdir()
    secret = tmp_path / "secret.png"
    secret.write_bytes(encode(photo(), "PNG"))
    (inside / "link.png").symlink_to(secret)
    for uri in (str(secret), str(inside / ".." / "secret.png"), str(inside / "link.png")):
        with pytest.raises(InvalidInput, match="outside the allowed roots"):
            read_image_source(common_pb2.Image(uri=uri), [inside])


def test_a_request_without_an_image_says_what_to_send():
    with pytest.raises(InvalidInput, match="image.data"):
        read_image_source(common_pb2.Image(), [])


# -- hostile files (issue 13): bounded memory and time, and never anything but InvalidInput ------

MODEL_EDGE = 224  # what a model service passes as min_edge (SigLIP's input edge)


@pytest.mark.parametrize("case", hostile_corpus(), ids=lambda c: c.name)
def test_each_hostile_file_decodes_small_or_is_refused_from_its_header(case):
    if case.expect == "invalid":
        with pytest.raises(InvalidInput) as info:
            open_image(case.data, min_edge=MODEL_EDGE)  # refused before a pixel is decoded
        assert case.message.lower() in str(info.value).lower(), str(info.value)
        return
    image, plan = open_image(case.data, min_edge=MODEL_EDGE)
    assert plan.peak_bytes <= ImageLimits().max_decode_bytes
    decoded = finish_decode(image, plan)
    assert decoded.mode == "RGB"
    if case.size:
        assert decoded.size == case.size
    assert min(decoded.size) >= min(MODEL_EDGE, *(case.size or (MODEL_EDGE,)))
    assert max(decoded.size) <= 2 * max(MODEL_EDGE, *(case.size or (MODEL_EDGE,)))  # shrunk, not kept at 10000²


@pytest.mark.parametrize("case", fuzz_corpus(), ids=lambda c: c.name)
def test_a_fuzzed_file_decodes_or_is_invalid_input_and_nothing_else(case):
    try:
        image = decode_image(case.data, min_edge=MODEL_EDGE)
    except InvalidInput as exc:
        assert str(exc)
        return
    assert image.mode == "RGB"


def test_the_memory_estimate_is_known_before_decoding_and_grows_with_the_decoded_mode():
    grey16 = open_image(png_stream(5000, 4000, 16, 0), min_edge=MODEL_EDGE)[1]
    rgba = open_image(png_stream(5000, 4000, 8, 6), min_edge=MODEL_EDGE)[1]
    assert grey16.peak_bytes >= 5000 * 4000 * 2  # 16-bit pixels are held as they are ...
    assert grey16.peak_bytes < 5000 * 4000 * 4  # ... not widened to 32 or 64 bits
    assert rgba.peak_bytes >= 2 * 5000 * 4000 * 4  # decoded + Pillow's premultiplied copy while shrinking
    assert grey16.reduce == rgba.reduce == 4000 // MODEL_EDGE


def test_an_image_that_alone_needs_more_than_the_decode_memory_is_refused_from_its_header():
    data = png_stream(4000, 4000, 8, 6)
    with pytest.raises(InvalidInput, match="ARCHIVETAG_DECODE_MEMORY_MB"):
        open_image(data, ImageLimits(max_decode_bytes=32 * 1024 * 1024), min_edge=MODEL_EDGE)


def test_jpeg_scans_are_counted_from_the_markers_and_limited():
    camera = encode(photo(256, 256), "JPEG", progressive=True)
    assert 2 <= _jpeg_scans(camera, 1000) <= 12
    assert decode_image(camera).size == (256, 256)
    with pytest.raises(InvalidInput, match="ARCHIVETAG_MAX_JPEG_SCANS"):
        decode_image(camera, ImageLimits(max_jpeg_scans=1))
    crafted = progressive_jpeg(64, 64, 20)
    assert _jpeg_scans(crafted, 1000) == 20
    assert decode_image(crafted).size == (64, 64)  # a valid file: under the limit it decodes


def test_an_mpo_gets_every_jpeg_guard_the_jpeg_in_it_gets():
    bomb = as_mpo(progressive_jpeg(8000, 8000, 3000))
    assert Image.open(io.BytesIO(bomb)).format == "MPO"  # what Pillow makes of the bytes
    with pytest.raises(InvalidInput, match="ARCHIVETAG_MAX_JPEG_SCANS"):
        open_image(bomb, ImageLimits())
    # The progressive decoder's coefficients count in the estimate, as for the JPEG alone.
    plain, mpo = (open_image(d, ImageLimits(max_jpeg_scans=5000))[1] for d in (progressive_jpeg(3000, 3000, 4),
                                                                                as_mpo(progressive_jpeg(3000, 3000, 4))))
    assert mpo.format == "MPO" and mpo.peak_bytes == plain.peak_bytes
    # And a large one is read at a reduced scale.
    big = as_mpo(encode(photo(2400, 1600), "JPEG"))
    image, plan = open_image(big, ImageLimits(), min_edge=MODEL_EDGE)
    assert plan.format == "MPO" and max(image.size) < 2400


def test_only_the_first_page_of_a_long_tiff_chain_is_read():
    chain = tiff_chain(3)
    assert Image.open(io.BytesIO(chain)).n_frames == 3  # the writer makes a real chain
    assert np.asarray(decode_image(chain)).tolist() == [[[0, 0, 0]]]


def test_a_16_bit_grey_image_keeps_its_brightness():
    ramp = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    assert np.asarray(decode_image(encode(Image.fromarray(ramp), "PNG")))[0, :, 0].tolist() == [0, 100, 255]


def test_a_float_image_with_nan_and_infinity_is_stretched_from_its_finite_values():
    values = np.array([[np.nan, 0.0, 0.5, np.inf, 1.0]], dtype=np.float32)
    grey = np.asarray(decode_image(encode(Image.fromarray(values, "F"), "TIFF")))[0, :, 0]
    assert grey.tolist() == [0, 0, 128, 0, 255]


# -- image.uri: regular files only, size first, reads with a deadline --------------------------------

def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    with pytest.raises(InvalidInput, match="not a regular file .a FIFO"):
        read_image_source(common_pb2.Image(uri=str(fifo)), [tmp_path])


def test_a_directory_and_a_device_are_refused(tmp_path):
    (tmp_path / "album").mkdir()
    with pytest.raises(InvalidInput, match="a directory"):
        read_image_source(common_pb2.Image(uri=str(tmp_path / "album")), [tmp_path])
    with pytest.raises(InvalidInput, match="a character device"):
        read_image_source(common_pb2.Image(uri="/dev/zero"), ["/dev"])


def test_a_symlink_loop_under_an_allowed_root_is_invalid_input(tmp_path):
    (tmp_path / "a.jpg").symlink_to(tmp_path / "b.jpg")
    (tmp_path / "b.jpg").symlink_to(tmp_path / "a.jpg")
    with pytest.raises(InvalidInput, match="cannot be opened"):
        read_image_source(common_pb2.Image(uri=str(tmp_path / "a.jpg")), [tmp_path])


def test_a_file_over_the_byte_limit_is_refused_before_it_is_read(tmp_path):
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as file:
        file.truncate(1 << 30)  # sparse: 1 GiB that takes no disk
    with pytest.raises(InvalidInput, match="1073741824 bytes; the limit is"):
        read_image_source(common_pb2.Image(uri=str(huge)), [tmp_path], max_bytes=32 << 20)


def test_a_read_past_its_deadline_is_deadline_expired(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(encode(photo(), "PNG"))
    with pytest.raises(DeadlineExpired):
        read_image_source(common_pb2.Image(uri=str(path)), [tmp_path], deadline=time.monotonic() - 1)


# -- the decoder: a shared memory budget, and no work for callers who are gone -----------------------

def test_decodes_wait_their_turn_for_memory_in_arrival_order():
    async def scenario() -> list[str]:
        memory = DecodeMemory(100)
        order: list[str] = []
        release_first = asyncio.Event()

        async def decode(name: str, nbytes: int, hold_until: asyncio.Event | None = None) -> None:
            async with memory.hold(nbytes, None):
                order.append(name)
                if hold_until:
                    await hold_until.wait()

        first = asyncio.create_task(decode("first", 80, release_first))
        await asyncio.sleep(0)
        second = asyncio.create_task(decode("second", 60))
        third = asyncio.create_task(decode("third", 10))  # fits now, but waits behind "second"
        await wait_for_async(lambda: len(memory._waiting), until=lambda n: n == 2, describe="second and third queued")
        assert order == ["first"]
        assert memory.used == 80
        release_first.set()
        await asyncio.gather(first, second, third)
        assert memory.used == 0
        return order

    assert asyncio.run(scenario()) == ["first", "second", "third"]


def test_a_decode_waiting_for_memory_past_its_deadline_is_deadline_expired_and_frees_its_place():
    async def scenario() -> None:
        memory = DecodeMemory(100)
        async with memory.hold(90, None):
            with pytest.raises(DeadlineExpired, match="memory"):
                async with memory.hold(50, time.monotonic() + 0.05):
                    pass
            assert memory.used == 90
        async with memory.hold(100, None):
            assert memory.used == 100

    asyncio.run(scenario())


def test_a_decode_whose_deadline_has_passed_does_not_start():
    async def scenario() -> None:
        decoder = ImageDecoder(ImageLimits(), threads=1)
        try:
            with pytest.raises(DeadlineExpired):
                await decoder.decode(common_pb2.Image(data=encode(photo(), "PNG")), deadline=time.monotonic() - 1)
            image = await decoder.decode(common_pb2.Image(data=encode(photo(), "PNG")), deadline=time.monotonic() + 30)
            assert image.size == (96, 64)
            assert decoder.longest_step_seconds() == 0.0
        finally:
            decoder.close()

    asyncio.run(scenario())


def test_the_async_reader_reads_files_in_its_own_pool_not_the_event_loops(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    class NoDefaultPool(ThreadPoolExecutor):
        def submit(self, *args, **kwargs):
            raise AssertionError("the event loop's default pool was used")

    path = tmp_path / "photo.png"
    path.write_bytes(encode(photo(), "PNG"))

    async def scenario() -> bytes:
        asyncio.get_running_loop().set_default_executor(NoDefaultPool(1))
        return await read_image_source_async(common_pb2.Image(uri=str(path)), [tmp_path])

    assert asyncio.run(scenario()) == path.read_bytes()


def test_a_valid_image_too_costly_to_decode_says_which_limit_not_that_it_is_corrupt():
    with pytest.raises(InvalidInput) as scans:
        open_image(progressive_jpeg(64, 64, 20), ImageLimits(max_jpeg_scans=5))
    with pytest.raises(InvalidInput) as memory:
        open_image(png_stream(4000, 4000, 8, 6), ImageLimits(max_decode_bytes=32 * 1024 * 1024), min_edge=MODEL_EDGE)
    for caught, setting in ((scans, "ARCHIVETAG_MAX_JPEG_SCANS"), (memory, "ARCHIVETAG_DECODE_MEMORY_MB")):
        assert caught.value.reason == "IMAGE_DECODE_LIMIT"
        assert caught.value.metadata["setting"] == setting


@pytest.mark.parametrize("brand, reason", [
    (b"avif", "IMAGE_FORMAT_UNSUPPORTED"), (b"isom", "IMAGE_FORMAT_UNSUPPORTED"), (b"heic", "IMAGE_CORRUPT"),
])
def test_an_iso_media_file_is_unsupported_unless_it_is_a_heif_still(brand, reason):
    data = b"\x00\x00\x00\x1cftyp" + brand + b"\x00\x00\x00\x00" + brand + b"mif1" + b"\x00" * 64
    with pytest.raises(InvalidInput) as caught:
        open_image(data)
    assert caught.value.reason == reason, str(caught.value)


def test_a_folder_swapped_for_a_link_while_a_path_is_read_never_reads_outside_the_roots(tmp_path):
    """The audit's race: a folder inside the root swapped back and forth with a link to a folder outside it
    while the server reads a path through it. Checked, then opened, the outside file leaked (278 of 3,000
    tries); opened, then checked, never."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "real").mkdir(parents=True)
    outside.mkdir()
    (root / "real" / "photo.png").write_bytes(b"inside")
    (outside / "photo.png").write_bytes(b"SECRET")
    sub, link, parked = root / "sub", root / "link", root / "parked"
    os.symlink(outside, link)
    os.rename(root / "real", sub)
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            os.rename(sub, parked)  # sub: the real folder ...
            os.rename(link, sub)  # ... then the link to outside
            os.rename(sub, link)
            os.rename(parked, sub)

    swapper = threading.Thread(target=swap)
    swapper.start()
    read = {"inside": 0, "refused": 0}
    try:
        for _ in range(3000):
            try:
                data = read_image_source(common_pb2.Image(uri=str(sub / "photo.png")), [root])
            except InvalidInput:
                read["refused"] += 1
                continue
            assert data == b"inside"
            read["inside"] += 1
    finally:
        stop.set()
        swapper.join()
    assert read["inside"] > 0  # the swap did not just break every read
