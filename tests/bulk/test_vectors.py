"""Embeddings in the result store: kept per SigLIP model and never compared across models,
added to results stored before embeddings were, grouped by the documented rule."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess

import numpy as np
import pytest

from archivetag import vectors
from archivetag.results import ResultStore
from archivetag.stack import archivetag_command
from archivetag.v1 import common_pb2, tagging_pb2
from tests.bulk.conftest import KEY


def siglip(revision: str = "r1") -> common_pb2.ModelIdentity:
    return common_pb2.ModelIdentity(family="siglip", name="google/siglip-base-patch16-224", revision=revision,
                                    weights_sha256="ab" * 32)


def answer(embedding, model: common_pb2.ModelIdentity | None = None) -> tagging_pb2.TagImagesResponse:
    reply = tagging_pb2.TagImagesResponse(id="1")
    reply.result.tagger = "rampp"
    reply.result.tags.add(name="hall", confidence=0.9, source_model="rampp")
    reply.result.models.append(model or siglip())
    reply.result.embedding.extend(embedding)
    return reply


def unit(*values: float) -> list[float]:
    vector = np.asarray(values, dtype=np.float64)
    return list(vector / np.linalg.norm(vector))


def test_the_embedding_is_stored_once_beside_the_result_not_in_the_response_blob(store, tmp_path):
    result_id = store.record(tmp_path / "a.jpg", "sha-a", 10, 1.0, KEY, answer(unit(1, 2, 3)))
    space, vector = vectors.stored_embedding(store.db, "sha-a")
    assert vector.tolist() == pytest.approx(unit(1, 2, 3), abs=5e-4)  # kept in half precision
    (blob,) = store.db.execute("SELECT response FROM results WHERE id = ?", (result_id,)).fetchone()
    assert not tagging_pb2.TagImagesResponse.FromString(blob).result.embedding
    assert vectors.model_of_space(store.db, space)["revision"] == "r1"
    assert store.is_done("sha-a", KEY)


def test_a_store_from_before_embeddings_is_migrated_and_its_photos_get_one_keeping_their_tags(tmp_path):
    db = tmp_path / "old.sqlite"
    old = ResultStore(db)
    old.remember_models(KEY, [])
    first = old.record(tmp_path / "a.jpg", "sha-a", 10, 1.0, KEY, answer([]))  # tagged without an embedding
    old.db.execute("DROP TABLE embeddings")  # as a store written before this table existed
    old.close()

    store = ResultStore(db)
    assert not store.is_done("sha-a", KEY)  # a re-run sends it again, for its embedding
    assert not store.path_is_done(tmp_path / "a.jpg", KEY)
    again = answer(unit(1, 0, 0))
    again.result.tags[0].name = "other tags this time"
    assert store.record(tmp_path / "a.jpg", "sha-a", 10, 1.0, KEY, again) == first  # the good result stands
    assert store.is_done("sha-a", KEY)
    assert store.db.execute("SELECT name FROM tags WHERE result_id = ?", (first,)).fetchall() == [("hall",)]
    assert vectors.stored_embedding(store.db, "sha-a") is not None
    store.close()


def test_a_result_siglip_did_not_answer_is_done_without_an_embedding(store, tmp_path):
    degraded = tagging_pb2.TagImagesResponse(id="1")
    degraded.result.tagger = "rampp"
    degraded.result.degraded = True
    degraded.result.degraded_reasons.append("siglip: UNAVAILABLE")
    store.record(tmp_path / "a.jpg", "sha-a", 10, 1.0, KEY, degraded)
    assert store.is_done("sha-a", KEY)  # not sent again and again while SigLIP is off
    assert vectors.stored_embedding(store.db, "sha-a") is None


def test_embeddings_of_another_siglip_model_are_never_compared(store, tmp_path):
    """Same vector, two model revisions: each command sees only its own model's photos."""
    old = tmp_path / "old-model.jpg"
    old.write_bytes(b"stored content")  # `similar` finds its stored embedding by content
    old_sha = hashlib.sha256(old.read_bytes()).hexdigest()
    store.record(old, old_sha, 14, 1.0, KEY, answer(unit(1, 1, 0), siglip("r1")))
    store.record(tmp_path / "new-model.jpg", "sha-2", 10, 1.0, KEY, answer(unit(1, 1, 0), siglip("r2")))
    assert [count for _, count in vectors.spaces(store.db)] == [1, 1]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*archivetag_command(), *args, "--db", str(store.path), "--json"],
                              capture_output=True, text=True, timeout=120)

    duplicates = run("duplicates", "--similar-threshold", "0.9", "--same-threshold", "0.9")
    assert duplicates.returncode == 0, duplicates.stderr
    assert json.loads(duplicates.stdout)["same_photo"]["groups"] == []
    assert json.loads(duplicates.stdout)["similar"]["groups"] == []
    assert json.loads(duplicates.stdout)["model"]["revision"] == "r2"  # the newest photos' model
    assert "1 photos embedded by another SigLIP model are not compared" in duplicates.stderr

    similar = run("similar", str(old))
    assert similar.returncode == 0, similar.stderr
    reply = json.loads(similar.stdout)
    assert reply["embedding_from"] == "database"
    assert reply["matches"] == []  # new-model.jpg has the same vector, but from another model


def space_of(*rows: list[float]) -> vectors.Space:
    matrix = np.asarray(rows, dtype=np.float32)
    return vectors.Space("s", np.arange(len(rows)), matrix)


def test_groups_are_connected_components_so_a_chain_is_one_group():
    angle = np.radians(10)  # neighbours 10° apart: cosine 0.985; the ends 20° apart: 0.940
    chain = [[np.cos(k * angle), np.sin(k * angle), 0.0] for k in range(3)]
    alone = [0.0, 0.0, 1.0]
    groups = vectors.components(space_of(*chain, alone), threshold=0.98)
    assert sorted(map(sorted, groups)) == [[0, 1, 2], [3]]


def test_a_threshold_that_links_almost_everything_is_refused(monkeypatch):
    monkeypatch.setattr(vectors, "MAX_PAIRS", 10)
    rows = np.random.default_rng(0).normal(size=(20, 8)) + 5.0  # all close to one direction
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    with pytest.raises(vectors.TooManyPairs, match="raise --similar-threshold"):
        vectors.components(space_of(*rows.tolist()), threshold=0.5)


def test_nearest_is_exact_and_ordered():
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(500, 16)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    space = space_of(*rows.tolist())
    query = rows[7]
    found = space.nearest(query, 5, exclude={7})
    expected = [int(i) for i in np.argsort(-(rows @ query)) if i != 7][:5]
    assert [result_id for result_id, _ in found] == expected


def test_an_old_store_with_float32_vectors_migrates_to_half_precision_without_tagging_again(tmp_path):
    """A store written before format 2 (float32 blobs, no embedding_format row): opening it converts every
    vector once; its photos stay done (nothing is sent again) and search answers as before."""
    db = tmp_path / "old.sqlite"
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"\xff\xd8 a photo")
    stat = photo.stat()
    old = ResultStore(db)
    old.remember_models(KEY, [])
    old.record(photo, "sha-a", stat.st_size, stat.st_mtime, KEY, answer(unit(1, 2, 3)))
    old.record(tmp_path / "b.jpg", "sha-b", 10, 1.0, KEY, answer(unit(1, 2, 3.1)))
    old.record(tmp_path / "c.jpg", "sha-c", 10, 1.0, KEY, answer(unit(-3, 0, 1)))
    with old.db:  # as the old code wrote them: float32
        for result_id, vector in old.db.execute("SELECT result_id, vector FROM embeddings").fetchall():
            full = np.frombuffer(vector, "<f2").astype("<f4").tobytes()
            old.db.execute("UPDATE embeddings SET vector = ? WHERE result_id = ?", (full, result_id))
        old.db.execute("DROP TABLE embedding_format")
    old.close()
    assert {n for (n,) in sqlite3.connect(db).execute("SELECT length(vector) FROM embeddings")} == {12}

    store = ResultStore(db)
    assert {n for (n,) in store.db.execute("SELECT length(vector) FROM embeddings")} == {6}  # 3 × float16
    assert store.path_is_done(photo, KEY) and store.is_done("sha-a", KEY)  # a re-run sends nothing
    _, vector = vectors.stored_embedding(store.db, "sha-a")
    assert vector.tolist() == pytest.approx(unit(1, 2, 3), abs=5e-4)
    space = vectors.load_space(store.db, vectors.spaces(store.db)[0][0])
    assert [r for r, _ in space.nearest(vector, 2)] == [1, 2]
    store.close()
    again = ResultStore(db)
    assert again.db.execute("SELECT version FROM embedding_format").fetchall() == [(2,)]  # converted once
    again.close()
