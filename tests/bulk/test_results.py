"""The result store on its own: good results kept, odd names round-trip, clear errors for
unusable database paths, claims that keep two runs on one database from doing the same work."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from archivetag.results import ResultStore, StoreError, path_from_key
from archivetag.v1 import tagging_pb2
from tests.bulk.conftest import KEY, with_embedding


def ok_answer(caption: str = "a hall") -> tagging_pb2.TagImagesResponse:
    answer = tagging_pb2.TagImagesResponse(id="1")
    answer.result.caption = caption
    answer.result.tagger = "florence"
    return with_embedding(answer)


def error_answer(status: str = "UNAVAILABLE") -> tagging_pb2.TagImagesResponse:
    return tagging_pb2.TagImagesResponse(id="2", error=tagging_pb2.ItemError(code=14, status=status, message="gone"))


def file_results(db: Path) -> dict:
    with sqlite3.connect(db) as con:
        return {path: (status, caption) for path, status, caption in con.execute(
            "SELECT f.path, r.status, r.caption FROM files f JOIN results r ON r.id = f.result_id")}


def test_a_failure_of_the_same_content_at_another_path_keeps_the_good_result(store, tmp_path):
    first, second = tmp_path / "a.jpg", tmp_path / "copy-of-a.jpg"
    store.record(first, "sha-a", 10, 1.0, KEY, ok_answer())
    store.record(second, "sha-a", 10, 1.0, KEY, error_answer())
    results = file_results(store.path)
    assert results[str(first)] == ("ok", "a hall")
    assert results[str(second)] == ("ok", "a hall")  # the content's good result, not the error
    assert store.is_done("sha-a", KEY)


def test_a_good_result_replaces_an_earlier_error_for_every_path(store, tmp_path):
    first, second = tmp_path / "a.jpg", tmp_path / "b.jpg"
    store.record(first, "sha-a", 10, 1.0, KEY, error_answer())
    store.record(second, "sha-a", 10, 1.0, KEY, ok_answer())
    results = file_results(store.path)
    assert results[str(first)] == ("ok", "a hall")
    assert results[str(second)] == ("ok", "a hall")


def test_a_file_name_that_is_not_utf8_is_stored_and_read_back_exactly(store, tmp_path):
    odd = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9-\xff.jpg"))
    store.record(odd, "sha-odd", 10, 1.0, KEY, ok_answer())
    with sqlite3.connect(store.path) as con:
        (stored,) = con.execute("SELECT path FROM files").fetchone()
    assert isinstance(stored, bytes)
    assert path_from_key(stored) == odd
    assert os.fsencode(path_from_key(stored)) == os.fsencode(odd)


@pytest.mark.parametrize("kind", ["folder", "not sqlite"])
def test_an_unusable_database_path_is_a_clear_error(tmp_path, kind):
    path = tmp_path / "results.sqlite"
    if kind == "folder":
        path.mkdir()
    else:
        path.write_text("name,tags\nphoto.jpg,hall\n")
    with pytest.raises(StoreError) as info:
        ResultStore(path)
    assert str(path) in str(info.value)
    assert ("is a folder" if kind == "folder" else "is not an SQLite database") in str(info.value)


def test_a_read_only_database_is_a_clear_error(tmp_path):
    path = tmp_path / "results.sqlite"
    ResultStore(path).close()
    path.chmod(0o444)
    code = ("from archivetag.results import ResultStore, StoreError\n"
            f"try:\n    ResultStore({str(path)!r})\nexcept StoreError as e:\n    print('StoreError:', e)\n")
    # Root may write anywhere: without its override capability, permissions apply to it too.
    unprivileged = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] if os.getuid() == 0 else []
    result = subprocess.run([*unprivileged, sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "Traceback" not in result.stderr, result.stderr
    assert f"StoreError: {path} is read-only" in result.stdout


def test_tag_with_a_folder_as_database_says_so_without_a_traceback(tmp_path):
    photo = tmp_path / "one.jpg"
    photo.write_bytes(b"\xff\xd8 not really")
    result = subprocess.run([sys.executable, "-m", "archivetag.cli", "tag", str(photo), "--db", str(tmp_path),
                             "--no-progress", "--target", "127.0.0.1:1"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{tmp_path} is a folder" in result.stderr


def test_a_photo_claimed_by_a_live_run_is_not_claimed_by_another(tmp_path):
    one, two = ResultStore(tmp_path / "r.sqlite"), ResultStore(tmp_path / "r.sqlite")
    photo = tmp_path / "p.jpg"
    assert one.claim(photo) == ""
    assert two.claim(photo) == one.owner
    one.release(photo)
    assert two.claim(photo) == ""
    one.close()
    two.close()


def test_a_claim_of_a_run_that_died_is_taken_over(tmp_path):
    photo = tmp_path / "p.jpg"
    code = ("import sys\nfrom archivetag.results import ResultStore\n"
            f"ResultStore({str(tmp_path / 'r.sqlite')!r}).claim(__import__('pathlib').Path({str(photo)!r}))\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)  # claims, then exits without releasing
    store = ResultStore(tmp_path / "r.sqlite")
    assert store.claim(photo) == ""
    store.close()
