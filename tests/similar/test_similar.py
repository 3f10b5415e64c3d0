"""`archivetag similar` and `duplicates` through the real embedding path: photos tagged by
`archivetag tag` through an orchestrator in front of real RAM++ and SigLIP services (smoke
models: real architectures, random weights).

Random weights still map near-identical pixels (a re-encode, a rescale) to near-identical
embeddings, and these pictures of different boxes and discs far apart; what they cannot
show is semantic similarity (two photos of one building from different sides), which
needs the real checkpoint.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from archivetag.stack import archivetag_command
from tests.conftest import model_service, orchestrator
from tests.orchestrator.test_orchestrator import wait_health
from tests.support.image_corpus import encode, scene
from tests.support.servers import free_port

ARCHIVETAG = archivetag_command()
TAGGING = "archivetag.v1.TaggingService"
# With the smoke SigLIP the variants of scene(1) score 0.9998 and above against a.png, the other
# pictures 0.40 and below (distinct scenes reached 0.91 over ten seeds tried): see
# test_the_threshold_separates_copies_from_different_photos.
THRESHOLD = 0.97


@pytest.fixture(scope="module")
def front(smoke_models, tmp_path_factory):
    """RAM++ (as the primary tagger: the test is about SigLIP, not captions) and SigLIP behind an orchestrator."""
    logs = tmp_path_factory.mktemp("similar-services")
    rampp = model_service("rampp", smoke_models, logs).start()
    siglip = model_service("siglip", smoke_models, logs).start()
    try:
        rampp.wait_status("archivetag.v1.TaggerService", "SERVING", timeout=300)
        siglip.wait_status("archivetag.v1.ViewTypeService", "SERVING", timeout=300)
        targets = ("--rampp-target", rampp.address, "--siglip-target", siglip.address,
                   "--disabled-backends", "florence")  # as a box without Florence-2 is run: RAM++ answers
        with orchestrator(logs, "--no-auth", "--taggers", "rampp,florence", *targets) as server:
            server.wait_status(TAGGING, "SERVING", timeout=120)
            wait_health(server.address, rampp="SERVING", siglip="SERVING")
            yield server
    finally:
        for server in (rampp, siglip):
            server.__exit__(None, None, None)


def variants_of(image: Image.Image) -> dict[str, bytes]:
    """Re-encodes and rescales of one picture, as an archive collects them."""
    w, h = image.size
    return {
        "a.png": encode(image, "PNG"),
        "a-q95.jpg": encode(image, "JPEG", quality=95),
        "a-q50.jpg": encode(image, "JPEG", quality=50),
        "a-half.png": encode(image.resize((w // 2, h // 2), Image.LANCZOS), "PNG"),
        "a-double-q85.jpg": encode(image.resize((w * 2, h * 2), Image.BICUBIC), "JPEG", quality=85),
    }


@pytest.fixture(scope="module")
def tagged(front, tmp_path_factory):
    """A folder of five versions of one picture, five other pictures and an exact copy of one, tagged."""
    folder = tmp_path_factory.mktemp("photos")
    files = variants_of(scene(1))
    files.update({f"other-{seed}.png": encode(scene(seed), "PNG") for seed in range(2, 7)})
    files["copy-of-other-2.png"] = files["other-2.png"]
    for name, data in files.items():
        (folder / name).write_bytes(data)
    db = folder.parent / "results.sqlite"
    result = run("tag", str(folder), "--db", str(db), "--target", front.address, "--no-progress")
    assert result.returncode == 0, result.stderr
    return {"folder": folder, "db": db, "target": front.address}


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*ARCHIVETAG, *args], capture_output=True, text=True, timeout=300)


def names(paths) -> set[str]:
    return {Path(p).name for p in paths}


def test_tag_stores_one_embedding_per_photo_content_under_the_siglip_model(tagged):
    with sqlite3.connect(tagged["db"]) as con:
        rows = con.execute("SELECT e.space, e.dim, length(e.vector) FROM embeddings e").fetchall()
        (models_json,) = con.execute("SELECT m.models_json FROM model_sets m WHERE m.models_key = ?",
                                     (rows[0][0],)).fetchone()
    assert len(rows) == 10  # 11 files, one exact copy
    assert len({space for space, _, _ in rows}) == 1
    assert {(dim, size) for _, dim, size in rows} == {(64, 256)}  # the smoke SigLIP's width, float32
    (model,) = json.loads(models_json)
    assert model["family"] == "siglip"
    assert model["name"] == "archivetag/siglip-smoke"
    assert model["weightsSha256"]


def test_the_threshold_separates_copies_from_different_photos(tagged):
    """The numbers behind THRESHOLD, from the stored embeddings: every variant of the picture is
    closer to a.png than THRESHOLD, every other picture further."""
    result = run("similar", str(tagged["folder"] / "a.png"), "--db", str(tagged["db"]), "--limit", "20", "--json")
    assert result.returncode == 0, result.stderr
    scores = {Path(m["path"]).name: m["similarity"] for m in json.loads(result.stdout)["matches"]}
    variants = {name: s for name, s in scores.items() if name.startswith("a-")}
    others = {name: s for name, s in scores.items() if not name.startswith("a-")}
    assert len(variants) == 4, scores
    assert min(variants.values()) > THRESHOLD + 0.01, scores
    assert max(others.values()) < THRESHOLD - 0.01, scores


def test_duplicates_groups_the_reencodes_and_rescales_and_the_copy_and_nothing_else(tagged):
    result = run("duplicates", "--db", str(tagged["db"]), "--threshold", str(THRESHOLD), "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    groups = sorted(names(p["path"] for p in group) for group in answer["groups"])
    assert groups == [{"a.png", "a-q95.jpg", "a-q50.jpg", "a-half.png", "a-double-q85.jpg"},
                      {"other-2.png", "copy-of-other-2.png"}]
    assert answer["embeddings_compared"] == 10
    assert answer["model"]["name"] == "archivetag/siglip-smoke"


def test_duplicates_prints_each_group_with_its_photos(tagged):
    result = run("duplicates", "--db", str(tagged["db"]), "--threshold", str(THRESHOLD))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "group 1: 5 photos (similarity to the first)"
    assert lines[6] == "group 2: 2 photos (similarity to the first)"
    assert len(lines) == 9
    assert f"  1.0000  {tagged['folder'] / 'copy-of-other-2.png'}" in lines
    assert "2 groups among 10 distinct photos" in result.stderr


def test_similar_embeds_a_photo_not_tagged_and_ranks_its_reencodes_first(tagged, tmp_path):
    query = tmp_path / "new-scan.jpg"
    query.write_bytes(encode(scene(1).resize((300, 225), Image.LANCZOS), "JPEG", quality=80))
    result = run("similar", str(query), "--db", str(tagged["db"]), "--target", tagged["target"], "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["embedding_from"] == "orchestrator"
    matches = [Path(m["path"]).name for m in answer["matches"]]
    assert set(matches[:5]) == set(variants_of(scene(1)))
    assert len(matches) == 10  # the default --limit
    similarities = [m["similarity"] for m in answer["matches"]]
    assert similarities == sorted(similarities, reverse=True)
    with sqlite3.connect(tagged["db"]) as con:  # asking stored nothing
        assert con.execute("SELECT count(*) FROM files").fetchone()[0] == 11


def test_similar_uses_the_stored_embedding_of_a_tagged_photo_without_the_orchestrator(tagged):
    photo = tagged["folder"] / "a-q50.jpg"
    result = run("similar", str(photo), "--db", str(tagged["db"]), "--limit", "3",
                 "--target", f"127.0.0.1:{free_port()}")  # nothing listens there
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert all(line.split("  ", 1)[1].startswith(str(tagged["folder"] / "a")) for line in lines)
    assert str(photo) not in result.stdout  # not itself


@pytest.mark.parametrize("kind", ["missing", "not an image", "folder", "too large"])
def test_similar_with_a_bad_photo_says_what_is_wrong(tagged, tmp_path, kind):
    photo = tmp_path / "photo.jpg"
    if kind == "not an image":
        photo.write_text("name,date\nhall,1901\n")
    elif kind == "folder":
        photo.mkdir()
    elif kind == "too large":
        photo.write_bytes(b"\xff" * (2 * 1024 * 1024))
    result = run("similar", str(photo), "--db", str(tagged["db"]), "--target", tagged["target"], "--max-photo-mb", "1")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    expected = {"missing": f"{photo}: no such file", "folder": f"{photo}: not a regular file",
                "not an image": f"{photo}: the orchestrator cannot use it: ",
                "too large": f"{photo}: 2.0 MiB, over the 1.0 MiB a request may carry"}[kind]
    assert expected in result.stderr


def test_similar_and_duplicates_without_a_database_say_to_tag_first(tmp_path):
    photo = tmp_path / "a.png"
    photo.write_bytes(encode(scene(1), "PNG"))
    for argv in (["similar", str(photo)], ["duplicates"]):
        result = run(*argv, "--db", str(tmp_path / "none.sqlite"))
        assert result.returncode == 2, result.stderr
        assert "no results database at" in result.stderr
        assert not (tmp_path / "none.sqlite").exists()


def test_duplicates_refuses_a_threshold_outside_0_to_1(tagged):
    result = run("duplicates", "--db", str(tagged["db"]), "--threshold", "1.5")
    assert result.returncode == 2
    assert "--threshold must be above 0 and at most 1" in result.stderr
