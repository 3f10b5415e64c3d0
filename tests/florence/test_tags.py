"""Tags from a caption: vocabulary phrases, longest first, plurals folded, confidences from token scores."""

import math

import pytest

from archivetag_florence.tags import PhraseIndex, find_phrases, fold, tag_confidences

VOCAB = PhraseIndex.from_names(["window", "stained glass window", "glass", "church", "staircase", "ceiling", "ivy"])


def scored(words_and_probs):
    """Pieces like the tokenizer's (leading space) and their log-probabilities."""
    pieces = [f" {w}" for w, _ in words_and_probs]
    return "".join(pieces), pieces, [math.log(p) for _, p in words_and_probs]


def test_phrases_match_on_word_boundaries_only():
    names = [m.name for m in find_phrases("a churchyard with ivy and a window", VOCAB)]
    assert names == ["ivy", "window"]  # "churchyard" is not "church"


def test_longest_phrase_wins_over_its_parts():
    names = [m.name for m in find_phrases("an old stained glass window above glass", VOCAB)]
    assert names == ["stained glass window", "glass"]


def test_plurals_fold_to_the_vocabulary_name():
    names = [m.name for m in find_phrases("Churches with broken windows and staircases, ceilings", VOCAB)]
    assert names == ["church", "window", "staircase", "ceiling"]
    assert fold("stories") == "story"
    assert fold("glass") == "glass"
    assert fold("boxes") == "box"


def test_confidence_is_the_geometric_mean_of_the_phrase_tokens():
    text, pieces, logp = scored([("a", 0.9), ("stained", 0.5), ("glass", 0.8), ("window", 0.2), ("ivy", 0.6)])
    tags = dict(tag_confidences(text, pieces, logp, VOCAB))
    assert tags["stained glass window"] == pytest.approx((0.5 * 0.8 * 0.2) ** (1 / 3))
    assert tags["ivy"] == pytest.approx(0.6)
    assert set(tags) == {"stained glass window", "ivy"}


def test_confidences_follow_the_token_probabilities_and_stay_in_0_1():
    low = dict(tag_confidences(*scored([("church", 0.1), ("ivy", 0.3)]), VOCAB))
    high = dict(tag_confidences(*scored([("church", 0.7), ("ivy", 0.3)]), VOCAB))
    assert high["church"] > low["church"]
    assert high["ivy"] == pytest.approx(low["ivy"])
    assert all(0 < c <= 1 for c in [*low.values(), *high.values()])
    assert dict(tag_confidences(*scored([("church", 1.0)]), VOCAB))["church"] == 1.0


def test_a_word_split_over_several_tokens_uses_all_of_them_and_forced_tokens_are_left_out():
    pieces = ["", " stair", "case", " ivy", ""]  # <s> ... </s> decode to nothing here
    logp = [0.0, math.log(0.5), math.log(0.2), math.log(0.9), 0.0]
    tags = dict(tag_confidences("".join(pieces), pieces, logp, VOCAB, scored=[False, True, True, True, False]))
    assert tags == {"staircase": pytest.approx(math.sqrt(0.5 * 0.2)), "ivy": pytest.approx(0.9)}


def test_most_confident_first_and_a_repeated_tag_keeps_its_best_occurrence():
    tags = tag_confidences(*scored([("ivy", 0.2), ("church", 0.5), ("ivy", 0.7)]), VOCAB)
    assert tags == [("ivy", pytest.approx(0.7)), ("church", pytest.approx(0.5))]
