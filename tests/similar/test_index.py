"""The index behind `similar` and `duplicates` for large stores (archivetag.vector_index): it finds what exact
search finds, follows the store as photos are added, and is rebuilt when the store no longer matches it.
The stores here are small, so the size from which the index is used is lowered for them."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from archivetag import duplicates, vector_index, vectors
from archivetag.results import ResultStore, models_key
from archivetag.v1 import common_pb2, tagging_pb2
from tests.bulk.conftest import KEY

SIGLIP = common_pb2.ModelIdentity(family="siglip", name="siglip-test", revision="r1", weights_sha256="cd" * 32)
SPACE = models_key([SIGLIP])
DIM = 32


def answer(vector: np.ndarray) -> tagging_pb2.TagImagesResponse:
    reply = tagging_pb2.TagImagesResponse(id="1")
    reply.result.tagger = "rampp"
    reply.result.models.append(SIGLIP)
    reply.result.embedding.extend(vector.tolist())
    return reply


def near(vector: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(DIM)
    noise -= (noise @ vector) * vector
    return cosine * vector + np.sqrt(1 - cosine**2) * noise / np.linalg.norm(noise)


@pytest.fixture
def store(tmp_path, monkeypatch):
    """1,500 photos in 30 clusters (cosine about 0.5 within one), with planted pairs: copies (cosine 0.99,
    hashes 2 bits apart), other shots (0.92, unrelated hashes), and look-alikes (0.99, unrelated hashes)."""
    monkeypatch.setattr(vector_index, "EXACT_BELOW", 1000)
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((30, DIM))
    rows = centres[rng.integers(0, 30, 1500)] + rng.standard_normal((1500, DIM))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    hashes = [int(h) for h in rng.integers(0, 2**63, 1500)]
    for k in range(0, 60, 2):  # 0+1, 2+3, ...: copies
        rows[k + 1], hashes[k + 1] = near(rows[k], 0.99, rng), hashes[k] ^ 0b101
    for k in range(60, 120, 2):  # other shots
        rows[k + 1] = near(rows[k], 0.92, rng)
    for k in range(120, 140, 2):  # look-alikes: the embedding says "same", the hash does not
        rows[k + 1] = near(rows[k], 0.99, rng)
    store = ResultStore(tmp_path / "results.sqlite")
    store.remember_models(KEY, [])
    for n, (row, phash) in enumerate(zip(rows, hashes)):
        store.record(tmp_path / f"p{n:04d}.jpg", f"sha-{n}", 10, 1.0, KEY, answer(row), phash=phash)
    yield store
    store.close()


def groups_of(store: ResultStore, exact: bool) -> dict:
    args = argparse.Namespace(db=store.path, same_threshold=0.95, max_hash_distance=10, similar_threshold=0.88,
                              exact=exact)
    result, _ = duplicates.groups(args)
    return result


def names(groups: list[list[dict]]) -> list[list[str]]:
    return sorted(sorted(photo["path"].rsplit("/", 1)[1] for photo in group) for group in groups)


def test_duplicates_through_the_index_finds_the_tiers_exact_search_finds(store):
    indexed, exact = groups_of(store, exact=False), groups_of(store, exact=True)
    assert (indexed["search"], exact["search"]) == ("index", "exact")
    same = [[f"p{k:04d}.jpg", f"p{k + 1:04d}.jpg"] for k in range(0, 60, 2)]
    assert names(indexed["same_photo"]["groups"]) == names(exact["same_photo"]["groups"]) == same
    similar = [[f"p{k:04d}.jpg", f"p{k + 1:04d}.jpg"] for k in range(60, 140, 2)]  # look-alikes are not the same
    assert names(indexed["similar"]["groups"]) == names(exact["similar"]["groups"]) == similar
    assert (vector_index.index_folder(store.path) / f"{SPACE}.json").exists()  # persisted beside the store


def test_the_index_follows_photos_tagged_since_and_is_rebuilt_when_it_no_longer_matches(store, tmp_path):
    said: list[str] = []
    first = vector_index.refresh(store.db, store.path, SPACE, say=said.append)
    assert first is not None and len(first) == 1500 and len(said) == 1 and "building" in said[0]
    rng = np.random.default_rng(8)
    added = rng.standard_normal(DIM)
    added /= np.linalg.norm(added)
    store.record(tmp_path / "new.jpg", "sha-new", 10, 1.0, KEY, answer(added))
    again = vector_index.refresh(store.db, store.path, SPACE, say=said.append)
    assert len(again) == 1501 and again.meta["file"] != first.meta["file"]
    assert len(said) == 1  # added to, not built again
    new_id = store.db.execute("SELECT id FROM results WHERE sha256 = 'sha-new'").fetchone()[0]
    assert again.nearest(added, 1)[0][0] == new_id
    folder = vector_index.index_folder(store.path)
    assert not (folder / first.meta["file"]).exists()  # the old file is gone
    with store.db:  # a row the index covers disappears: it no longer matches the store
        store.db.execute("DELETE FROM embeddings WHERE result_id = 1")
    rebuilt = vector_index.refresh(store.db, store.path, SPACE, say=said.append)
    assert len(said) == 2 and len(rebuilt) == 1500 and 1 not in {r for r, _ in rebuilt.nearest(added, 1500)}


def test_a_small_store_is_searched_exactly_without_an_index(store, monkeypatch):
    monkeypatch.setattr(vector_index, "EXACT_BELOW", 5000)
    assert vector_index.refresh(store.db, store.path, SPACE) is None
    assert isinstance(vector_index.searcher(store.db, store.path, SPACE), vectors.Space)
