"""Florence-2 at int8 on a CPU (the CPU default, --dtype auto) against float32, at full size (Florence-2-base's
architecture, random weights speaking words): docs/models/cpu.md states the agreement at more photos."""

from __future__ import annotations

import pytest

from tests.support.precision import backend, florence_agreement, sample_photos


@pytest.fixture(scope="module")
def base_models(tmp_path_factory):
    from archivetag_florence.smoke import write_full_size_model

    models = tmp_path_factory.mktemp("florence-base")
    write_full_size_model(models / "florence", "base")
    return models


def test_int8_is_the_cpu_default_and_says_so_in_the_identity(base_models):
    florence = backend("florence", base_models, "auto", "--florence-num-beams", "1", "--florence-max-new-tokens", "4")
    assert florence.identity().dtype == "int8"
    assert florence.identity().smoke


def test_int8_answers_close_to_float32(base_models):
    args = ("--florence-num-beams", "1", "--florence-max-new-tokens", "16")
    measured = florence_agreement(backend("florence", base_models, "float32", *args),
                                  backend("florence", base_models, "int8", *args), sample_photos(2))
    assert measured["vision_cosine_min"] >= 0.998, measured
    # Fed the float32 caption, int8 picks the same next token almost everywhere (whole captions of a random
    # decoder part at its first near-tie: see docs/models/cpu.md).
    assert measured["teacher_forced_top1"] >= 0.97, measured


def test_int8_is_refused_on_a_gpu_device_with_a_clear_reason(base_models):
    from archivetag.runtime.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="int8 runs on a CPU only"):
        backend("florence", base_models, "int8", "--device", "meta")


def test_auto_serves_float32_when_int8_disagrees_on_the_probe_photo_and_explicit_int8_is_kept(monkeypatch, caplog):
    from archivetag_florence import backend as florence_backend
    from tests.florence import tiny_models_dir

    monkeypatch.setattr(florence_backend, "INT8_MIN_COSINE", 1.01)  # no int8 model can pass
    args = ("--florence-num-beams", "1", "--florence-max-new-tokens", "4")
    auto = backend("florence", tiny_models_dir(), "auto", *args)
    assert auto.identity().dtype == "float32"
    assert "serving float32 instead" in caplog.text
    assert not any(".quantized." in type(m).__module__ for m in auto.model.modules())
    explicit = backend("florence", tiny_models_dir(), "int8", *args)
    assert explicit.identity().dtype == "int8"
    assert any(".quantized." in type(m).__module__ for m in explicit.model.modules())
    assert "kept, as --dtype int8 asks" in caplog.text
