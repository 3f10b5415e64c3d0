"""What `archivetag tag` reads from real folders: it stays inside the folders it is given, says what it
skips and why, walks any depth, shows names safely, and hashes exactly the bytes it records."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from archivetag.bulk import NotSent, find_photos, read_photo, shown


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
