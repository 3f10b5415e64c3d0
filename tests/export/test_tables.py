"""`archivetag export --csv / --jsonl`: one row per photo for spreadsheets and catalogue imports, the
photos chosen by path, a second export that changes nothing, clear errors."""

from __future__ import annotations

import csv
import json

from tests.export.conftest import FLORENCE, export


def test_csv_and_jsonl_hold_every_photo_with_its_tags_and_provenance(archive, tmp_path):
    db = archive.parent / "results.sqlite"
    result = export(db, "--csv", str(tmp_path / "tags.csv"), "--jsonl", str(tmp_path / "tags.jsonl"),
                    "--min-confidence", "0.5")
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "tags.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    row = next(r for r in rows if r["path"].endswith("coffee-table.jpg"))
    assert row["keywords"] == "interior; staircase; hall"  # window (0.18) is under the floor
    assert row["hierarchical_keywords"] == ("archivetag|view type|interior; archivetag|tags|staircase; "
                                            "archivetag|tags|hall")
    assert row["caption"] == "A wide staircase in an entrance hall."
    assert row["ocr_text"] == "EXIT"
    assert row["view_type"] == "interior"
    lines = [json.loads(line) for line in (tmp_path / "tags.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [line["path"] for line in lines] == sorted(r["path"] for r in rows)
    first = lines[0]
    assert first["tags"][0] == {"name": "staircase", "confidence": 0.912, "model": FLORENCE["name"],
                                "revision": FLORENCE["revision"]}
    assert first["view_type"]["name"] == "interior"
    assert {m["family"] for m in first["models"]} == {"florence", "siglip"}


def test_a_second_export_leaves_the_files_untouched_and_stdout_works(archive, tmp_path):
    db = archive.parent / "results.sqlite"
    assert export(db, "--csv", str(tmp_path / "tags.csv")).returncode == 0
    before = (tmp_path / "tags.csv").stat().st_mtime_ns
    again = export(db, "--csv", str(tmp_path / "tags.csv"))
    assert "(unchanged)" in again.stderr
    assert (tmp_path / "tags.csv").stat().st_mtime_ns == before
    printed = export(db, "--jsonl", "-", str(archive / "brick-wall.webp"))
    assert printed.returncode == 0, printed.stderr
    assert [json.loads(line)["path"] for line in printed.stdout.splitlines()] == [str(archive / "brick-wall.webp")]


def test_clear_errors_for_no_output_chosen_a_missing_database_and_a_path_not_in_it(archive, tmp_path):
    db = archive.parent / "results.sqlite"
    nothing = export(db)
    assert nothing.returncode == 2
    assert "say what to write: --xmp" in nothing.stderr
    missing = export(tmp_path / "nowhere.sqlite", "--xmp")
    assert missing.returncode == 2
    assert "no results database at" in missing.stderr
    stranger = export(db, "--jsonl", "-", str(tmp_path / "elsewhere"), str(archive / "coffee-table.jpg"))
    assert stranger.returncode == 1
    assert f"{tmp_path / 'elsewhere'}: no photo at or under it is in" in stranger.stderr
    assert len(stranger.stdout.splitlines()) == 1
    for result in (nothing, missing, stranger):
        assert "Traceback" not in result.stderr
