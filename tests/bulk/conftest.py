"""The result store on a fresh database, for the store's own tests."""

from __future__ import annotations

import pytest

from archivetag.results import ResultStore
from archivetag.v1 import tagging_pb2

KEY = "models-key"


def with_embedding(answer: tagging_pb2.TagImagesResponse) -> tagging_pb2.TagImagesResponse:
    """The answer as SigLIP completes it: a good result is done once it has its embedding."""
    answer.result.models.add(family="siglip", name="siglip")
    answer.result.embedding.extend([1.0, 0.0])
    return answer


@pytest.fixture
def store(tmp_path):
    store = ResultStore(tmp_path / "results.sqlite")
    store.remember_models(KEY, [])
    yield store
    store.close()
