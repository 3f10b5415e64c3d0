"""View-type scoring on crafted embeddings: the old app's "unknown at 100%" cannot come back."""

from __future__ import annotations

import math

import numpy as np
import pytest

from archivetag_siglip.scoring import UNKNOWN, Thresholds, softmax, view_types

CLASSES = ["interior", "exterior", "aerial", "detail"]
LOGIT_SCALE = math.log(112.0)  # roughly google/siglip-base-patch16-224's
LOGIT_BIAS = -16.5


def crafted(cosines: list[float], dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """An image embedding and class embeddings whose cosines to it are exactly `cosines`."""
    basis = np.eye(dim)
    image = basis[0]
    classes = np.stack([c * basis[0] + math.sqrt(1 - c * c) * basis[i + 1] for i, c in enumerate(cosines)])
    return image[None].astype(np.float32), classes.astype(np.float32)


def classify(cosines, thresholds=Thresholds(), scale=LOGIT_SCALE, bias=LOGIT_BIAS):
    image, classes = crafted(cosines)
    return view_types(image, classes, CLASSES, scale, bias, thresholds)[0]


def test_the_old_apps_negative_cosines_give_a_real_answer_not_unknown():
    # The cosines the old app saw on a real photo (see specs/siglip.md): all negative.
    result = classify([-0.031, -0.054, -0.072, -0.046])
    assert result.view_type == "interior"
    assert result.confidence > 0.7
    assert [name for name, _, _ in result.scores] == ["interior", "detail", "exterior", "aerial"]


def test_close_together_scores_still_answer_the_top_class():
    result = classify([0.010, 0.002, -0.004, 0.006])  # within 0.014 of each other
    assert result.view_type == "interior"
    assert result.confidence >= 0.4


def test_probabilities_are_a_softmax_over_classes_and_logits_follow_the_siglip_formula():
    cosines = [0.12, -0.03, 0.05, 0.01]
    result = classify(cosines)
    by_name = {name: (p, logit) for name, p, logit in result.scores}
    expected_logits = np.array(cosines) * 112.0 + LOGIT_BIAS
    for name, logit in zip(CLASSES, expected_logits):
        assert by_name[name][1] == pytest.approx(logit, abs=1e-4)
    probabilities = softmax(expected_logits)
    for name, p in zip(CLASSES, probabilities):
        assert by_name[name][0] == pytest.approx(p, abs=1e-6)
    assert sum(p for _, p, _ in result.scores) == pytest.approx(1.0, abs=1e-6)
    assert [p for _, p, _ in result.scores] == sorted((p for _, p, _ in result.scores), reverse=True)


def test_the_bias_does_not_change_the_answer_or_probabilities():
    a = classify([0.08, 0.02, -0.01, 0.0], bias=0.0)
    b = classify([0.08, 0.02, -0.01, 0.0], bias=-30.0)
    assert a.view_type == b.view_type
    assert [p for _, p, _ in a.scores] == pytest.approx([p for _, p, _ in b.scores], abs=1e-9)


def test_a_truly_ambiguous_image_is_unknown_with_its_top_probability():
    result = classify([0.05, 0.05, 0.05, 0.05])
    assert result.view_type == UNKNOWN
    assert result.confidence == pytest.approx(0.25)
    assert len(result.scores) == 4  # every class is still returned


def test_the_absolute_match_threshold_only_applies_when_set():
    cosines = [-0.10, -0.20, -0.25, -0.30]  # clear winner, but sigmoid(logit) is tiny
    assert classify(cosines).view_type == "interior"
    assert classify(cosines, Thresholds(unknown=0.4, min_match=0.01)).view_type == UNKNOWN


def test_the_embedding_returned_is_normalised():
    image, classes = crafted([0.1, 0.0, 0.0, 0.0])
    result = view_types(image * 7.5, classes, CLASSES, LOGIT_SCALE, LOGIT_BIAS, Thresholds())[0]
    assert np.linalg.norm(result.embedding) == pytest.approx(1.0, abs=1e-6)
