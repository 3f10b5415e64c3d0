"""`archivetag export --xmp` and `--embed`, read back by exiftool and exiv2: keywords, hierarchical
keywords, caption, text and provenance where archive tools look; a person's metadata kept; a second
export changes nothing; pixels untouched; read-only files skipped; an interrupted export leaves no half file."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tests.export.conftest import (
    FLORENCE,
    SAMPLES,
    SIGLIP,
    answer,
    exiftool_read,
    exiv2_read,
    export,
    listed,
    need,
    photos,
    record,
    snapshot,
)

KEYWORDS = ["interior", "staircase", "hall", "window"]
TREE = ["archivetag|view type|interior", "archivetag|tags|staircase", "archivetag|tags|hall", "archivetag|tags|window"]


def pixels(path) -> np.ndarray:
    import pillow_heif

    pillow_heif.register_heif_opener()
    with Image.open(path) as image:
        return np.asarray(image.convert("RGBA"))


def test_sidecars_hold_keywords_caption_text_and_provenance_that_exiftool_and_exiv2_read(archive):
    result = export(archive.parent / "results.sqlite", "--xmp")
    assert result.returncode == 0, result.stderr
    assert "6 photos; sidecars 6 written, 0 unchanged" in result.stderr
    for photo in photos(archive):
        sidecar = photo.with_name(photo.name + ".xmp")
        found = exiftool_read(sidecar)
        assert listed(found["XMP-dc:Subject"]) == KEYWORDS
        assert listed(found["XMP-lr:HierarchicalSubject"]) == TREE
        assert found["XMP-dc:Description"] == "A wide staircase in an entrance hall."
        assert found["XMP-iptcCore:AltTextAccessibility"] == "A wide staircase in an entrance hall."
        assert found["XMP-iptcCore:ExtDescrAccessibility"] == "EXIT"
        tags = {t["Name"]: t for t in found["XMP-archivetag:Tags"]}
        assert tags["staircase"] == {"Name": "staircase", "Kind": "tag", "Confidence": 0.912,
                                     "Model": FLORENCE["name"], "Revision": FLORENCE["revision"]}
        assert tags["interior"] == {"Name": "interior", "Kind": "view type", "Confidence": 0.83,
                                    "Model": SIGLIP["name"], "Revision": SIGLIP["revision"]}
        exiv2 = exiv2_read(sidecar)
        assert exiv2["Xmp.dc.subject"] == ", ".join(KEYWORDS)
        assert exiv2["Xmp.lr.hierarchicalSubject"] == ", ".join(TREE)
        assert exiv2["Xmp.archivetag.Tags[2]/archivetag:Name"] == "staircase"
        assert exiv2["Xmp.archivetag.Tags[2]/archivetag:Revision"] == FLORENCE["revision"]


def test_a_persons_keyword_rating_label_gps_and_description_survive_and_a_later_export_replaces_only_its_own(archive):
    db = archive.parent / "results.sqlite"
    photo = archive / "coffee-table.jpg"
    sidecar = archive / "coffee-table.jpg.xmp"
    need("exiftool", "libimage-exiftool-perl")
    subprocess.run(["exiftool", "-q", "-XMP-dc:Subject=Grandma's house", "-XMP-xmp:Rating=4", "-XMP-xmp:Label=Red",
                    "-XMP-dc:Description=Living room, 1962", "-XMP-exif:GPSLatitude=52.37",
                    "-XMP-dc:Subject=hall", str(sidecar)], check=True, timeout=60)
    assert export(db, "--xmp", str(photo)).returncode == 0
    found = exiftool_read(sidecar)
    assert listed(found["XMP-dc:Subject"]) == ["Grandma's house", "hall", "interior", "staircase", "window"]
    assert found["XMP-xmp:Rating"] == 4
    assert found["XMP-xmp:Label"] == "Red"
    assert found["XMP-exif:GPSLatitude"] == pytest.approx(52.37)
    assert found["XMP-dc:Description"] == "Living room, 1962"  # the person's, not the caption
    assert found["XMP-iptcCore:AltTextAccessibility"] == "A wide staircase in an entrance hall."

    # Tagged again by other models, which answer differently: archivetag's keywords are replaced, the
    # person's (hall too, though the first models said it as well) stay.
    record(db, photo, answer(tags=[("armchair", 0.7)], caption="An armchair.", ocr=""), key="newer-models")
    record_result = export(db, "--xmp", str(photo))
    assert record_result.returncode == 0, record_result.stderr
    found = exiftool_read(sidecar)
    assert listed(found["XMP-dc:Subject"]) == ["Grandma's house", "hall", "interior", "armchair"]
    assert listed(found["XMP-lr:HierarchicalSubject"]) == ["archivetag|view type|interior", "archivetag|tags|armchair"]
    assert found["XMP-iptcCore:AltTextAccessibility"] == "An armchair."
    assert "XMP-iptcCore:ExtDescrAccessibility" not in found  # no text read any more: archivetag's own removed
    assert found["XMP-dc:Description"] == "Living room, 1962"
    assert found["XMP-xmp:Rating"] == 4


def test_a_machine_keyword_a_person_removed_stays_removed(archive):
    db = archive.parent / "results.sqlite"
    photo = archive / "coffee-table.jpg"
    sidecar = archive / "coffee-table.jpg.xmp"
    assert export(db, "--xmp", str(photo)).returncode == 0
    subprocess.run(["exiftool", "-q", "-overwrite_original", "-XMP-dc:Subject-=window",
                    "-XMP-lr:HierarchicalSubject-=archivetag|tags|window", str(sidecar)], check=True, timeout=60)
    assert export(db, "--xmp", str(photo)).returncode == 0
    found = exiftool_read(sidecar)
    assert "window" not in listed(found["XMP-dc:Subject"])
    assert "archivetag|tags|window" not in listed(found["XMP-lr:HierarchicalSubject"])
    assert "window" in [t["Name"] for t in found["XMP-archivetag:Tags"]]  # what the model said is still recorded


def test_a_second_export_leaves_every_file_byte_identical(archive):
    db = archive.parent / "results.sqlite"
    first = export(db, "--xmp", "--embed")
    assert first.returncode == 0, first.stderr
    before = snapshot(archive)
    second = export(db, "--xmp", "--embed")
    assert second.returncode == 0, second.stderr
    assert "sidecars 0 written, 6 unchanged; embedded 0 written, 6 unchanged" in second.stderr
    assert snapshot(archive) == before  # bytes and modification times


def test_embedding_keeps_the_pixels_and_the_other_metadata_and_exiftool_reads_it_back(archive):
    originals = {p.name: (pixels(p), exiftool_read(p, "-EXIF:all", "-ICC_Profile:all")) for p in photos(archive)}
    (archive / "coffee-table.jpg").chmod(0o640)
    result = export(archive.parent / "results.sqlite", "--embed")
    assert result.returncode == 0, result.stderr
    assert not list(archive.glob("*.xmp"))
    assert (archive / "coffee-table.jpg").stat().st_mode & 0o777 == 0o640  # the replacement keeps the permissions
    for photo in photos(archive):
        decoded, other = originals[photo.name]
        assert np.array_equal(pixels(photo), decoded), photo.name
        assert exiftool_read(photo, "-EXIF:all", "-ICC_Profile:all") == other, photo.name
        found = exiftool_read(photo)
        assert listed(found["XMP-dc:Subject"]) == KEYWORDS, photo.name
        assert listed(found["XMP-lr:HierarchicalSubject"]) == TREE, photo.name
        assert found["XMP-archivetag:Tags"][1]["Revision"] == FLORENCE["revision"], photo.name
        if photo.suffix != ".heic":  # Debian 12's exiv2 0.27 is built without HEIF (BMFF) support
            assert exiv2_read(photo)["Xmp.dc.subject"] == ", ".join(KEYWORDS), photo.name


def test_a_tiff_keeps_its_pixels_when_tags_are_embedded(tmp_path):
    folder = tmp_path / "archive"
    folder.mkdir()
    photo = folder / "plan.tif"
    Image.fromarray(np.arange(64 * 48 * 3, dtype=np.uint8).reshape(48, 64, 3)).save(photo)
    record(tmp_path / "results.sqlite", photo, answer())
    before = pixels(photo)
    assert export(tmp_path / "results.sqlite", "--embed").returncode == 0
    assert np.array_equal(pixels(photo), before)
    assert listed(exiftool_read(photo)["XMP-dc:Subject"]) == KEYWORDS


def test_the_confidence_floor_and_the_hierarchy_root(archive):
    photo = archive / "coffee-table.jpg"
    result = export(archive.parent / "results.sqlite", "--xmp", "--min-confidence", "0.5", "--hierarchy-root",
                    "Machine", str(photo))
    assert result.returncode == 0, result.stderr
    found = exiftool_read(archive / "coffee-table.jpg.xmp")
    assert listed(found["XMP-dc:Subject"]) == ["interior", "staircase", "hall"]
    assert listed(found["XMP-lr:HierarchicalSubject"]) == ["Machine|view type|interior", "Machine|tags|staircase",
                                                           "Machine|tags|hall"]
    assert found["XMP-archivetag:MinConfidence"] == 0.5


def test_sidecars_named_photo_xmp_and_a_clash_with_another_file_of_the_same_name(archive):
    (archive / "coffee-table.CR2").write_bytes(b"raw")
    result = export(archive.parent / "results.sqlite", "--xmp", "--sidecar-name", "photo.xmp")
    assert result.returncode == 1
    assert "coffee-table.xmp would also be the sidecar of coffee-table.CR2" in result.stderr
    assert not (archive / "coffee-table.xmp").exists()
    assert listed(exiftool_read(archive / "brick-wall.xmp")["XMP-dc:Subject"]) == KEYWORDS


def test_a_read_only_photo_and_a_read_only_folder_are_reported_and_the_rest_exported(archive, tmp_path):
    db = archive.parent / "results.sqlite"
    locked = archive / "coffee-table.jpg"
    locked.chmod(0o444)
    original = locked.read_bytes()
    result = export(db, "--embed")
    assert result.returncode == 1
    assert f"{locked}: it is read-only: skipped, nothing written" in result.stderr
    assert "embedded 5 written" in result.stderr and "1 read-only" in result.stderr
    assert locked.read_bytes() == original
    assert listed(exiftool_read(archive / "brick-wall.webp")["XMP-dc:Subject"]) == KEYWORDS

    sealed = tmp_path / "sealed"
    sealed.mkdir()
    shutil.copyfile(archive / "brick-wall.webp", sealed / "wall.webp")
    record(db, sealed / "wall.webp", answer())
    sealed.chmod(0o555)
    try:
        result = export(db, "--xmp", str(sealed))
    finally:
        sealed.chmod(0o755)
    assert result.returncode == 1
    assert f"its folder {sealed} is read-only" in result.stderr
    assert os.listdir(sealed) == ["wall.webp"]


def test_a_photo_gone_since_tagging_and_a_bmp_that_cannot_hold_xmp_are_reported(archive):
    db = archive.parent / "results.sqlite"
    (archive / "rocket-launch-pad.jpg").unlink()
    bmp = archive / "scan.bmp"
    Image.new("RGB", (8, 8)).save(bmp)
    record(db, bmp, answer())
    result = export(db, "--embed", "--xmp")
    assert result.returncode == 1
    assert "rocket-launch-pad.jpg: no longer there" in result.stderr
    assert ".bmp files cannot hold XMP: not embedded (--xmp writes a sidecar)" in result.stderr
    assert (archive / "scan.bmp.xmp").exists()


def test_smoke_results_are_left_out_unless_asked_for(tmp_path):
    folder = tmp_path / "archive"
    folder.mkdir()
    photo = folder / "a.jpg"
    shutil.copyfile(SAMPLES / "coffee-table.jpg", photo)
    record(tmp_path / "results.sqlite", photo, answer(smoke=True))
    result = export(tmp_path / "results.sqlite", "--xmp")
    assert result.returncode == 2
    assert "1 results of smoke models (random weights) left out (--include-smoke exports them)" in result.stderr
    assert not (folder / "a.jpg.xmp").exists()
    assert export(tmp_path / "results.sqlite", "--xmp", "--include-smoke").returncode == 0
    assert exiftool_read(folder / "a.jpg.xmp")["XMP-archivetag:Models"][0]["Smoke"] is True


def test_an_export_killed_midway_leaves_no_truncated_file_and_the_next_run_finishes(tmp_path):
    folder = tmp_path / "archive"
    folder.mkdir()
    source = SAMPLES / "rocket-launch-pad.jpg"
    for i in range(60):
        shutil.copyfile(source, folder / f"p{i:03}.jpg")
    record(tmp_path / "results.sqlite", sorted(folder.iterdir()), answer())
    original = source.read_bytes()
    process = subprocess.Popen([sys.executable, "-m", "archivetag.cli", "export", "--db",
                                str(tmp_path / "results.sqlite"), "--embed", "--xmp", "--no-progress"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                               env={**os.environ, "TMPDIR": str(tmp_path)})  # what a kill leaves stays in tmp_path
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len([p for p in folder.glob("*.xmp") if not p.name.startswith(".")]) < 5:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # exiftool too: as a power cut would
    process.wait(timeout=30)
    written = [p for p in folder.glob("*.xmp") if not p.name.startswith(".")]
    assert 5 <= len(written) < 60, "the export must be stopped midway"
    for photo in sorted(folder.glob("*.jpg")):
        data = photo.read_bytes()
        if data != original:  # a photo is either untouched or completely written
            assert listed(exiftool_read(photo, "-XMP-dc:Subject")["XMP-dc:Subject"]) == KEYWORDS
    for sidecar in written:
        assert listed(exiftool_read(sidecar, "-XMP-dc:Subject")["XMP-dc:Subject"]) == KEYWORDS
    result = export(tmp_path / "results.sqlite", "--embed", "--xmp")
    assert result.returncode == 0, result.stderr
    assert len([p for p in folder.glob("*.xmp") if not p.name.startswith(".")]) == 60
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []  # temporaries cleared


def test_keywords_and_caption_kept_only_in_iptc_are_the_persons_and_reach_the_xmp(archive):
    db = archive.parent / "results.sqlite"
    photo = archive / "rocket-launch-pad.jpg"
    subprocess.run(["exiftool", "-q", "-overwrite_original", "-IPTC:Keywords=launch site", "-IPTC:Keywords=1969",
                    "-IPTC:Caption-Abstract=Pad 39A, from the north", str(photo)], check=True, timeout=60)
    result = export(db, "--xmp", "--embed", str(photo))
    assert result.returncode == 0, result.stderr
    for target in (photo, archive / "rocket-launch-pad.jpg.xmp"):
        found = exiftool_read(target)
        # (1969 is a number to JSON, as exiftool prints it)
        assert listed(found["XMP-dc:Subject"]) == ["launch site", 1969, *KEYWORDS], target.name
        assert found["XMP-dc:Description"] == "Pad 39A, from the north", target.name
    iptc = exiftool_read(photo, "-IPTC:all")
    assert listed(iptc["IPTC:Keywords"]) == ["launch site", 1969]  # IPTC itself untouched


def test_a_persons_keywords_are_kept_exactly_as_spelled_across_exports(archive):
    db = archive.parent / "results.sqlite"
    photo = archive / "coffee-table.jpg"
    sidecar = archive / "coffee-table.jpg.xmp"
    subprocess.run(["exiftool", "-q", "-XMP-dc:Subject=TRUE", "-XMP-dc:Subject=1.50", "-XMP-dc:Subject=Ça va",
                    str(sidecar)], check=True, timeout=60)
    assert export(db, "--xmp", str(photo)).returncode == 0
    record(db, photo, answer(tags=[("armchair", 0.7)]), key="newer-models")
    assert export(db, "--xmp", str(photo)).returncode == 0
    before = sidecar.read_bytes()
    for spelled in ("<rdf:li>TRUE</rdf:li>", "<rdf:li>1.50</rdf:li>", "<rdf:li>Ça va</rdf:li>",
                    "<rdf:li>armchair</rdf:li>"):
        assert spelled.encode() in before
    assert b"<rdf:li>staircase</rdf:li>" not in before
    assert export(db, "--xmp", str(photo)).returncode == 0
    assert sidecar.read_bytes() == before


def test_another_tools_sidecar_keeps_its_own_namespaces(archive):
    """darktable's edit history and a namespace exiftool has never heard of survive the merge."""
    sidecar = archive / "coffee-table.jpg.xmp"
    sidecar.write_text(
        "<?xpacket begin='\ufeff' id='W5M0MpCehiHzreSzNTczkc9d'?>\n<x:xmpmeta xmlns:x='adobe:ns:meta/'>\n"
        "<rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'>\n"
        " <rdf:Description rdf:about='' xmlns:darktable='http://darktable.sf.net/'"
        " xmlns:foo='http://example.invalid/foo/1.0/' darktable:xmp_version='5' foo:Whatever='keep me'>\n"
        "  <darktable:history><rdf:Seq><rdf:li darktable:operation='exposure' darktable:enabled='1'/></rdf:Seq>"
        "</darktable:history>\n </rdf:Description>\n</rdf:RDF>\n</x:xmpmeta>\n<?xpacket end='w'?>\n", encoding="utf-8")
    assert export(archive.parent / "results.sqlite", "--xmp", str(archive / "coffee-table.jpg")).returncode == 0
    found = exiftool_read(sidecar, "-XMP:all")
    assert found["XMP-darktable:History"] == [{"Enabled": 1, "Operation": "exposure"}]
    assert found["XMP-darktable:Xmp_version"] == 5
    assert found["XMP-foo:Whatever"] == "keep me"
    assert listed(found["XMP-dc:Subject"]) == KEYWORDS
