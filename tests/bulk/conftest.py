"""The result store on a fresh database, for the store's own tests."""

from __future__ import annotations

import pytest

from archivetag.results import ResultStore

KEY = "models-key"


@pytest.fixture
def store(tmp_path):
    store = ResultStore(tmp_path / "results.sqlite")
    store.remember_models(KEY, [])
    yield store
    store.close()
