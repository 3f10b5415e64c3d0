"""The text read in a photo in the result store: stored with its regions, a store made before OCR gains
the tables when opened, and asking for OCR is part of what makes a photo done."""

from __future__ import annotations

import hashlib
import json
import sqlite3

from archivetag.results import ResultStore, models_key
from archivetag.v1 import common_pb2, tagging_pb2
from tests.bulk.conftest import with_embedding

KEY = "models-key"
PRE_OCR_TABLES = ("ocr_texts", "ocr_regions")


def answer_with_text() -> tagging_pb2.TagImagesResponse:
    answer = tagging_pb2.TagImagesResponse(id="1")
    answer.result.tagger = "florence"
    answer.result.caption = "a door"
    answer.result.ocr.status = common_pb2.OCR_STATUS_READ
    answer.result.ocr.text = "ST MARY'S\nHOSPITAL"
    for text, quad in (("ST MARY'S", [10, 20, 200, 20, 200, 60, 10, 60]), ("HOSPITAL", [10, 80, 220, 80, 220, 120, 10, 120])):
        answer.result.ocr.regions.add(text=text, quad=quad)
    return with_embedding(answer)


def stored_ocr(db) -> tuple[list, list]:
    with sqlite3.connect(db) as con:
        texts = con.execute("SELECT f.path, o.status, o.text FROM files f JOIN ocr_texts o ON o.result_id = f.result_id").fetchall()
        regions = con.execute("SELECT position, text, quad FROM ocr_regions ORDER BY position").fetchall()
    return texts, regions


def test_the_text_and_its_regions_are_stored_with_the_result(tmp_path):
    store = ResultStore(tmp_path / "results.sqlite")
    store.remember_models(KEY, [])
    store.record(tmp_path / "sign.jpg", "a" * 64, 10, 1.0, KEY, answer_with_text())
    store.close()
    texts, regions = stored_ocr(tmp_path / "results.sqlite")
    assert texts == [(str(tmp_path / "sign.jpg"), "read", "ST MARY'S\nHOSPITAL")]
    assert [(p, t) for p, t, _ in regions] == [(0, "ST MARY'S"), (1, "HOSPITAL")]
    assert json.loads(regions[1][2]) == [10, 80, 220, 80, 220, 120, 10, 120]


def test_ocr_not_available_is_stored_as_such(tmp_path):
    answer = tagging_pb2.TagImagesResponse(id="1")
    answer.result.tagger = "rampp"
    answer.result.ocr.status = common_pb2.OCR_STATUS_NOT_AVAILABLE
    store = ResultStore(tmp_path / "results.sqlite")
    store.remember_models(KEY, [])
    store.record(tmp_path / "sign.jpg", "b" * 64, 10, 1.0, KEY, answer)
    store.close()
    texts, regions = stored_ocr(tmp_path / "results.sqlite")
    assert [status for _, status, _ in texts] == ["not_available"]
    assert regions == []


def test_a_store_made_before_ocr_gains_the_tables_and_keeps_its_results(tmp_path):
    db = tmp_path / "old.sqlite"
    store = ResultStore(db)
    store.remember_models(KEY, [])
    plain = tagging_pb2.TagImagesResponse(id="0")
    plain.result.tagger, plain.result.caption = "florence", "a hall"
    store.record(tmp_path / "old.jpg", "c" * 64, 10, 1.0, KEY, with_embedding(plain))
    store.close()
    with sqlite3.connect(db) as con:  # as a store written before OCR existed
        for table in PRE_OCR_TABLES:
            con.execute(f"DROP TABLE {table}")

    store = ResultStore(db)
    assert store.is_done("c" * 64, KEY)
    store.record(tmp_path / "sign.jpg", "d" * 64, 10, 1.0, KEY, answer_with_text())
    store.close()
    texts, regions = stored_ocr(db)
    assert [path for path, _, _ in texts] == [str(tmp_path / "sign.jpg")]
    assert len(regions) == 2


def test_asking_for_ocr_changes_the_key_and_not_asking_keeps_the_old_one():
    models = [common_pb2.ModelIdentity(family="florence", name="f", weights_sha256="0" * 64)]
    plain = models_key(models)
    before_ocr = hashlib.sha256(json.dumps([["florence", "f", "", "0" * 64]]).encode()).hexdigest()[:16]
    assert plain == before_ocr  # stores written before OCR still find their photos done
    keys = {plain, models_key(models, common_pb2.OCR_MODE_TEXT), models_key(models, common_pb2.OCR_MODE_TEXT_WITH_REGIONS)}
    assert len(keys) == 3
