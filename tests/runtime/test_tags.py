"""The one tag-selection rule both taggers use, and the one vocabulary type."""

import numpy as np
import pytest

from archivetag.bundled import RAMPP_TAG_LIST, RAMPP_THRESHOLDS
from archivetag.runtime.errors import InvalidInput, ModelLoadError
from archivetag.runtime.tags import TagVocabulary, select_tags

NAMES = ["a", "b", "c", "d"]
CONFIDENCES = np.array([0.7, 0.9, 0.65, 0.2], dtype=np.float32)


def test_own_thresholds_are_strict_and_the_answer_is_most_confident_first():
    own = np.array([0.65, 0.65, 0.65, 0.1], dtype=np.float32)
    tags = select_tags(NAMES, CONFIDENCES, own)
    assert [n for n, _ in tags] == ["b", "a", "d"]  # c sits exactly on its threshold
    assert tags[0][1] == pytest.approx(0.9)


def test_a_request_threshold_replaces_every_own_threshold_and_zero_keeps_every_candidate():
    own = np.full(4, 0.95, dtype=np.float32)
    assert [n for n, _ in select_tags(NAMES, CONFIDENCES, own, threshold=0.8)] == ["b"]
    assert [n for n, _ in select_tags(NAMES, CONFIDENCES, own, threshold=0.0)] == ["b", "a", "c", "d"]
    assert [n for n, _ in select_tags(NAMES, CONFIDENCES, 0.0, threshold=0.0, max_tags=2)] == ["b", "a"]


def test_a_scalar_own_threshold_works_like_per_tag_ones_and_ties_keep_vocabulary_order():
    tied = np.array([0.5, 0.5, 0.9, 0.5], dtype=np.float32)
    assert [n for n, _ in select_tags(NAMES, tied, 0.0)] == ["c", "a", "b", "d"]
    assert [n for n, _ in select_tags(NAMES, tied, 0.5)] == ["c"]


def test_the_shipped_rampp_vocabulary_has_4585_tags_with_their_thresholds():
    vocab = TagVocabulary.read(RAMPP_TAG_LIST, RAMPP_THRESHOLDS)
    assert len(vocab.names) == 4585
    assert vocab.thresholds.shape == (4585,)
    assert int((vocab.thresholds >= 1.0).sum()) == 10  # ten tags can never fire (strict rule)


def test_unknown_requested_tags_are_the_requests_fault(tmp_path):
    path = tmp_path / "tags.txt"
    path.write_text("window\nstaircase\nivy", encoding="utf-8")
    vocab = TagVocabulary.read(path, default_threshold=0.3)
    assert vocab.subset(["ivy", "window"], "Florence-2") == [0, 2]
    with pytest.raises(InvalidInput, match="not in the Florence-2 vocabulary: 'turret'"):
        vocab.subset(["ivy", "turret"], "Florence-2")


def test_a_bad_vocabulary_file_is_a_load_error_that_says_why(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ModelLoadError, match="is empty"):
        TagVocabulary.read(empty)
    with pytest.raises(ModelLoadError, match="cannot be read"):
        TagVocabulary.read(tmp_path / "missing.txt")
    names = tmp_path / "names.txt"
    names.write_text("a\nb", encoding="utf-8")
    (tmp_path / "thr.txt").write_text("0.5", encoding="utf-8")
    with pytest.raises(ModelLoadError, match="1 thresholds for 2 tags"):
        TagVocabulary.read(names, tmp_path / "thr.txt")
