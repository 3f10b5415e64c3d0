"""`archivetag serve rampp` as a client sees it: a real server on the smoke RAM++ model."""

from __future__ import annotations

import io
from pathlib import Path

import grpc
import pytest
import torch
from PIL import Image, ImageOps

from archivetag.runtime.registry import TAGGER_SERVICE
from archivetag_rampp.model import tiny_config
from archivetag_rampp.random_checkpoint import random_model, write_official_checkpoint
from archivetag.v1 import common_pb2, tagger_pb2, tagger_pb2_grpc
from tests.conftest import model_service
from tests.support.servers import health_status
from tests.support.waiting import wait_for

SAMPLES = Path(__file__).resolve().parents[2] / "src" / "archivetag" / "samples"


@pytest.fixture(scope="module")
def rampp(smoke_models, tmp_path_factory):
    # Full-size JPEG decodes: the EXIF test compares a JPEG's probabilities with a PNG's of the same pixels, and the
    # smoke model's 64-pixel input would otherwise let the decoder read the JPEG at 1/8 scale.
    with model_service("rampp", smoke_models, tmp_path_factory.mktemp("rampp-logs"), "--no-jpeg-draft") as server:
        server.wait_status(TAGGER_SERVICE, "SERVING", timeout=120)
        yield server


def call(address: str, method: str = "Tag", **fields):
    with grpc.insecure_channel(address) as channel:
        stub = tagger_pb2_grpc.TaggerServiceStub(channel)
        if method == "GetModelInfo":
            return stub.GetModelInfo(tagger_pb2.TaggerServiceGetModelInfoRequest(), timeout=10)
        return stub.Tag(tagger_pb2.TagRequest(**fields), timeout=120)


def image(data: bytes) -> common_pb2.Image:
    return common_pb2.Image(data=data)


def png_bytes(picture: Image.Image) -> bytes:
    out = io.BytesIO()
    picture.save(out, "PNG")
    return out.getvalue()


def probabilities(reply) -> dict[str, float]:
    return {t.name: t.confidence for t in reply.tags}


PHOTO = (SAMPLES / "coffee-table.jpg").read_bytes()


def test_tags_are_over_their_thresholds_most_probable_first_and_the_identity_says_smoke(rampp):
    reply = call(rampp.address, image=image(PHOTO))
    confidences = [t.confidence for t in reply.tags]
    assert reply.tags
    assert confidences == sorted(confidences, reverse=True)
    assert all(0.65 < c <= 1.0 for c in confidences)  # the smoke thresholds are 0.65
    assert reply.model.smoke
    assert "smoke" in reply.model.name
    assert reply.model.family == "rampp"
    assert reply.timings.inference_seconds > 0


def test_threshold_zero_returns_every_tag_and_a_subset_gives_the_same_probabilities(rampp):
    info = call(rampp.address, "GetModelInfo")
    every = call(rampp.address, image=image(PHOTO), threshold=0.0)
    assert len(every.tags) == info.vocabulary_size
    everything = probabilities(every)
    subset = [every.tags[-1].name, every.tags[0].name, every.tags[len(every.tags) // 2].name]
    part = call(rampp.address, image=image(PHOTO), threshold=0.0, vocabulary=subset)
    assert set(probabilities(part)) == set(subset)
    assert all(abs(p - everything[n]) < 1e-5 for n, p in probabilities(part).items())
    capped = call(rampp.address, image=image(PHOTO), threshold=0.0, max_tags=2)
    assert [t.name for t in capped.tags] == [t.name for t in every.tags[:2]]


def test_a_sideways_photo_with_exif_orientation_is_tagged_upright(rampp):
    rotated = (SAMPLES / "astronaut-exif-rotated.jpg").read_bytes()
    upright = png_bytes(ImageOps.exif_transpose(Image.open(io.BytesIO(rotated))).convert("RGB"))
    sideways = png_bytes(Image.open(io.BytesIO(rotated)).convert("RGB"))  # pixels as stored, EXIF lost
    a, b, c = (probabilities(call(rampp.address, image=image(d), threshold=0.0)) for d in (rotated, upright, sideways))
    assert max(abs(a[n] - b[n]) for n in a) < 1e-5
    assert max(abs(a[n] - c[n]) for n in a) > 1e-4


@pytest.mark.parametrize("fields, message", [
    ({"image": image(b"not an image")}, "image"),
    ({"image": image(PHOTO), "threshold": 1.5}, "threshold 1.5 is outside [0, 1]"),
    ({"image": image(PHOTO), "vocabulary": ["no such tag"]}, "not in the RAM++ vocabulary: 'no such tag'"),
])
def test_bad_input_is_invalid_argument_with_a_message_and_the_service_stays_serving(rampp, fields, message):
    with pytest.raises(grpc.RpcError) as info:
        call(rampp.address, **fields)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()
    assert health_status(rampp.address, TAGGER_SERVICE) == "SERVING"


def wait_failed(server, timeout: float = 180.0):
    try:
        return wait_for(lambda: call(server.address, "GetModelInfo"), lambda info: info.state.phase == "failed",
                        timeout=timeout, describe="the model phase 'failed' in GetModelInfo", ignore=(grpc.RpcError,))
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}: {server.log_tail()}") from None


def test_a_checkpoint_without_label_embed_keeps_the_service_not_serving_with_the_reason(tmp_path):
    folder = tmp_path / "models" / "rampp"
    folder.mkdir(parents=True)
    model = random_model(tiny_config(4585, descriptions_per_tag=1))
    write_official_checkpoint(model, folder / "ram_plus_swin_large_14m.pth")
    checkpoint = torch.load(folder / "ram_plus_swin_large_14m.pth", weights_only=True)
    del checkpoint["model"]["label_embed"]
    torch.save(checkpoint, folder / "ram_plus_swin_large_14m.pth")
    with model_service("rampp", tmp_path / "models", tmp_path) as server:
        info = wait_failed(server)
        assert "label_embed" in info.state.reason
        assert not info.state.serving
        server.wait_status(TAGGER_SERVICE, "NOT_SERVING", timeout=60)
        with pytest.raises(grpc.RpcError) as refused:
            call(server.address, image=image(PHOTO))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "label_embed" in refused.value.details()


def test_missing_weights_name_both_ways_to_get_them(tmp_path):
    (tmp_path / "models" / "rampp").mkdir(parents=True)
    with model_service("rampp", tmp_path / "models", tmp_path) as server:
        reason = wait_failed(server).state.reason
    assert "archivetag models pull" in reason
    assert "archivetag models smoke" in reason
