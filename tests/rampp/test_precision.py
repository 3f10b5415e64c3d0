"""RAM++ at its CPU precisions against float32, at full size: int8 (the Swin encoder's linear layers) and bfloat16;
--dtype auto takes bfloat16 on a CPU that computes it natively, else int8. docs/models/cpu.md states the agreement
at more photos."""

from __future__ import annotations

import pytest

from archivetag.runtime.device import native_bfloat16
from tests.support.precision import backend, rampp_agreement, sample_photos


@pytest.fixture(scope="module")
def full_models(tmp_path_factory):
    from archivetag_rampp.smoke import write_full_size_model

    models = tmp_path_factory.mktemp("rampp-full")
    write_full_size_model(models / "rampp")
    return models


@pytest.fixture(scope="module")
def reference(full_models):
    return backend("rampp", full_models, "float32")


def test_auto_takes_bfloat16_where_the_cpu_has_it_else_int8(full_models, reference):
    auto = backend("rampp", full_models, "auto")
    assert auto.identity().dtype == ("bfloat16" if native_bfloat16() else "int8")
    assert auto.identity().weights_sha256 == reference.identity().weights_sha256
    assert reference.identity().dtype == "float32"


@pytest.mark.parametrize("precision", ["int8", "bfloat16"])
def test_tags_agree_with_float32(full_models, reference, precision):
    other = backend("rampp", full_models, precision)
    assert other.identity().dtype == precision
    measured = rampp_agreement(reference, other, sample_photos(2))
    assert measured["tags_per_photo"] > 0, measured
    assert measured["tag_jaccard_min"] >= 0.9, measured
    assert measured["probability_max_abs_diff"] <= 0.1, measured
