"""What `archivetag tag` reads from real folders: it stays inside the folders it is given, says what it
skips and why, walks any depth, shows names safely, hashes exactly the bytes it records, hands each photo
over as it finds it, and skips what is unchanged since it was tagged (by stat, without reading it)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from archivetag.bulk import NotSent, find_photos, read_photo, shown
from archivetag.results import ResultStore
from archivetag.v1 import tagging_pb2
from archivetag.walk import PhotoSource, walk_photos
from tests.bulk.conftest import KEY, with_embedding


def photo_file(path: Path, data: bytes = b"\xff\xd8 a photo") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_a_link_to_a_file_outside_the_folders_is_skipped_and_said_unless_asked(tmp_path):
    folder, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    inside = photo_file(folder / "a.jpg")
    secret = photo_file(elsewhere / "secret.jpg")
    (folder / "b.jpg").symlink_to(inside)  # a link within the folder: the same photo, once
    (folder / "outside.jpg").symlink_to(secret)
    found, problems = find_photos([folder])
    assert found == [inside.resolve()]
    assert len(problems) == 1 and "outside.jpg" in problems[0] and "--follow-links" in problems[0]
    found, problems = find_photos([folder], follow_links=True)
    assert sorted(found) == sorted([inside.resolve(), secret.resolve()]) and not problems


def test_a_link_to_a_folder_is_not_walked_into(tmp_path):
    folder, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    photo_file(elsewhere / "secret.jpg")
    folder.mkdir()
    (folder / "sub").symlink_to(elsewhere, target_is_directory=True)
    assert find_photos([folder]) == ([], [])


def test_a_folder_that_cannot_be_read_is_said_not_skipped_silently(tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    good = photo_file(folder / "ok" / "a.jpg")
    (folder / "locked").mkdir()
    real_scandir = os.scandir

    def scandir(path):  # as a folder without read permission answers (root may read any folder)
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found, problems = find_photos([folder])
    assert found == [good.resolve()]
    assert problems == [f"{folder / 'locked'}: cannot read this folder: Permission denied"]


def test_a_tree_1100_folders_deep_is_walked_to_the_bottom(tmp_path):
    deep = tmp_path / "photos"
    deep.mkdir()
    for _ in range(1100):  # one level at a time: mkdir(parents=True) itself recurses per level
        deep = deep / "d"
        os.mkdir(deep)
    bottom = deep / "bottom.jpg"
    bottom.write_bytes(b"\xff\xd8 a photo")
    try:
        found, problems = find_photos([tmp_path / "photos"])
        assert found == [bottom.resolve()] and not problems
    finally:  # bottom up: shutil.rmtree (pytest's clean-up) recurses per level on Python 3.11
        bottom.unlink()
        while deep != tmp_path:
            os.rmdir(deep)
            deep = deep.parent


def test_names_with_control_characters_or_odd_bytes_are_shown_escaped():
    assert shown("a\x1b[2K\rtagged OK.jpg") == "a\\x1b[2K\\rtagged OK.jpg"
    assert shown(os.fsdecode(b"caf\xe9.jpg")) == "caf\\udce9.jpg"
    assert shown("Église.jpg") == "Église.jpg"


def test_a_file_that_changes_while_read_is_not_sent(tmp_path):
    # A /proc file says it has 0 bytes and reads as many: as a file still being written, size and bytes disagree.
    with pytest.raises(NotSent, match="changed while being read"):
        read_photo(Path("/proc/self/status"), 32)
    still = photo_file(tmp_path / "a.jpg", b"\xff\xd8" + b"x" * 1000)
    photo = read_photo(still, 32)
    assert (photo.size, photo.data) == (1002, still.read_bytes())


def test_the_walk_hands_over_each_photo_as_it_is_found_not_after_the_whole_tree(tmp_path):
    """Tagging starts with the first photo found: a photo added to a folder the walk has not reached yet,
    after the first photo was handed over, is still found (nothing was listed ahead)."""
    first = photo_file(tmp_path / "photos" / "a" / "1.jpg")
    (tmp_path / "photos" / "z").mkdir()
    problems: list[str] = []
    walk = walk_photos([tmp_path / "photos"], problems)
    assert next(walk) == first.resolve()
    later = photo_file(tmp_path / "photos" / "z" / "2.jpg")
    assert list(walk) == [later.resolve()] and not problems


def test_a_folder_given_twice_or_inside_another_and_a_file_given_by_name_are_each_walked_once(tmp_path):
    a = photo_file(tmp_path / "photos" / "a.jpg")
    b = photo_file(tmp_path / "photos" / "sub" / "b.jpg")
    found, problems = find_photos([tmp_path / "photos", tmp_path / "photos" / "sub", a, tmp_path / "photos"])
    assert sorted(found) == sorted([a.resolve(), b.resolve()]) and len(found) == 2 and not problems


def done_store(tmp_path: Path, photos: list[Path]) -> Path:
    """A store in which these photos were tagged, as `tag` records them (their size and modification time)."""
    db = tmp_path / "results.sqlite"
    store = ResultStore(db)
    store.remember_models(KEY, [])
    for photo in photos:
        data = photo.read_bytes()
        stat = photo.stat()
        store.record(photo.resolve(), hashlib.sha256(data).hexdigest(), stat.st_size, stat.st_mtime, KEY,
                     with_embedding(tagging_pb2.TagImagesResponse(id="1", result={"tagger": "rampp"})))
    store.close()
    return db


def walk_with_store(paths: list[Path], db: Path) -> tuple[list[Path], int, int | None]:
    """(photos handed over to be read, photos skipped as unchanged, the total told once the walk ended)."""
    async def consume():
        source = PhotoSource(paths, db_path=db).start()
        source.set_key(KEY)
        skipped, total = [0], [None]
        handed = [p async for p in source.photos(lambda n: skipped.__setitem__(0, skipped[0] + n), lambda _: None,
                                                 lambda n: total.__setitem__(0, n))]
        source.close()
        return handed, skipped[0], total[0]
    return asyncio.run(consume())


def test_resume_skips_unchanged_photos_by_stat_and_hands_over_only_new_and_changed_ones(tmp_path):
    folder = tmp_path / "photos"
    old = [photo_file(folder / f"{n:02d}.jpg", b"\xff\xd8 photo %d" % n) for n in range(40)]
    db = done_store(tmp_path, old)
    changed = old[3]
    changed.write_bytes(b"\xff\xd8 edited since, and longer")
    new = photo_file(folder / "new" / "n.jpg")
    handed, skipped, total = walk_with_store([folder], db)
    assert sorted(handed) == sorted([changed.resolve(), new.resolve()])
    assert (skipped, total) == (39, 41)


def test_every_problem_met_during_the_walk_is_handed_over_with_the_photos(tmp_path):
    photos = [photo_file(tmp_path / f"{n}.jpg") for n in range(5)]
    missing = tmp_path / "missing.jpg"

    async def consume():
        source = PhotoSource([*photos, missing]).start()
        source.set_key(None)
        said: list[str] = []
        handed = [p async for p in source.photos(lambda n: None, said.append, lambda n: None)]
        return handed, said

    handed, said = asyncio.run(consume())
    assert handed == [p.resolve() for p in photos]
    assert said == [f"{missing}: no such file or folder"]
