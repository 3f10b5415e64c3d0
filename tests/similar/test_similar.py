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
import os
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


def another_shot(image: Image.Image) -> Image.Image:
    """The same scene from a step aside: the left three quarters of it, at the full size."""
    w, h = image.size
    return image.crop((0, 0, w * 3 // 4, h)).resize((w, h), Image.LANCZOS)


@pytest.fixture(scope="module")
def tagged(front, tmp_path_factory):
    """A folder of five versions of one picture, five other pictures and an exact copy of one, tagged."""
    folder = tmp_path_factory.mktemp("photos")
    files = variants_of(scene(1))
    files.update({f"other-{seed}.png": encode(scene(seed), "PNG") for seed in range(2, 7)})
    files["copy-of-other-2.png"] = files["other-2.png"]
    files["b-shot.png"] = encode(another_shot(scene(1)), "PNG")
    for name, data in files.items():
        (folder / name).write_bytes(data)
    db = tmp_path_factory.mktemp("store") / "results.sqlite"  # its own: the base temp folder is shared
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
    assert len(rows) == 11  # 12 files, one exact copy
    assert len({space for space, _, _ in rows}) == 1
    assert {(dim, size) for _, dim, size in rows} == {(64, 128)}  # the smoke SigLIP's width, float16
    (model,) = json.loads(models_json)
    assert model["family"] == "siglip"
    assert model["name"] == "archivetag/siglip-smoke"
    assert model["weightsSha256"]


def test_the_threshold_separates_copies_from_different_photos(tagged):
    """The numbers behind the defaults, from the stored embeddings: every variant of the picture is closer to
    a.png than THRESHOLD, every other picture further; another shot of its scene scores in between, above
    the similar tier's 0.88 (and the same tier's 0.95: the hashes tell it apart)."""
    result = run("similar", str(tagged["folder"] / "a.png"), "--db", str(tagged["db"]), "--limit", "20", "--json")
    assert result.returncode == 0, result.stderr
    scores = {Path(m["path"]).name: m["similarity"] for m in json.loads(result.stdout)["matches"]}
    variants = {name: s for name, s in scores.items() if name.startswith("a-")}
    others = {name: s for name, s in scores.items() if not name.startswith(("a-", "b-"))}
    assert len(variants) == 4, scores
    assert min(variants.values()) > THRESHOLD + 0.01, scores
    assert max(others.values()) < THRESHOLD - 0.01, scores
    assert 0.88 < scores["b-shot.png"] < min(variants.values()), scores


def test_duplicates_tells_reencodes_and_resizes_of_one_photo_from_another_shot_and_other_photos(tagged):
    result = run("duplicates", "--db", str(tagged["db"]), "--json")  # the documented defaults
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    same = sorted(names(p["path"] for p in group) for group in answer["same_photo"]["groups"])
    assert same == [{"a.png", "a-q95.jpg", "a-q50.jpg", "a-half.png", "a-double-q85.jpg"},
                    {"other-2.png", "copy-of-other-2.png"}]
    assert all(p["hash_distance"] <= 4 for group in answer["same_photo"]["groups"] for p in group)
    (similar,) = answer["similar"]["groups"]  # the other shot: the same scene, not the same photo
    assert names(p["path"] for p in similar) == {"a.png", "a-q95.jpg", "a-q50.jpg", "a-half.png",
                                                  "a-double-q85.jpg", "b-shot.png"}
    assert {p["same_photo"] for p in similar if not p["path"].endswith("b-shot.png")} == {1}
    assert [p["same_photo"] for p in similar if p["path"].endswith("b-shot.png")] == [None]
    assert answer["embeddings_compared"] == 11 and answer["search"] == "exact"
    assert answer["model"]["name"] == "archivetag/siglip-smoke"


def test_the_same_photo_tier_needs_the_hashes_to_agree_not_only_the_embeddings(tagged):
    """At an embedding threshold that also links the other shot, the hash still keeps it apart."""
    scores = json.loads(run("similar", str(tagged["folder"] / "a.png"), "--db", str(tagged["db"]), "--json",
                            "--limit", "20").stdout)
    shot = next(m["similarity"] for m in scores["matches"] if m["path"].endswith("b-shot.png"))
    loose = run("duplicates", "--db", str(tagged["db"]), "--json", "--same-threshold", str(round(shot - 0.01, 3)))
    groups = json.loads(loose.stdout)["same_photo"]["groups"]
    assert "b-shot.png" not in set().union(*(names(p["path"] for p in group) for group in groups))
    blind = run("duplicates", "--db", str(tagged["db"]), "--json", "--same-threshold", str(round(shot - 0.01, 3)),
                "--max-hash-distance", "64")  # the embedding alone: the other shot joins
    groups = json.loads(blind.stdout)["same_photo"]["groups"]
    assert "b-shot.png" in set().union(*(names(p["path"] for p in group) for group in groups))


def test_duplicates_prints_each_group_with_its_photos(tagged):
    result = run("duplicates", "--db", str(tagged["db"]))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "same photo 1: 5 photos (similarity and hash distance to the first)"
    assert lines[6] == "same photo 2: 2 photos (similarity and hash distance to the first)"
    assert lines[9] == "similar 1: 6 photos (similarity to the first)"
    assert f"  1.0000   0  {tagged['folder'] / 'copy-of-other-2.png'}" in lines
    assert any(line.endswith("a.png  (same photo 1)") for line in lines)
    assert "2 same-photo groups" in result.stderr and "1 similar groups" in result.stderr


def test_an_unchanged_photo_is_not_read_again_on_resume(front, tmp_path):
    """Resume goes by path, size and modification time: a photo whose bytes were swapped for garbage of the
    same size, its modification time put back, is skipped without being read. Were it read, its content
    (hash) would differ, it would be sent, fail to decode, and the run would say so and exit 1."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for seed in (11, 12, 13):
        (folder / f"p{seed}.png").write_bytes(encode(scene(seed), "PNG"))
    db = tmp_path / "results.sqlite"
    first = run("tag", str(folder), "--db", str(db), "--target", front.address, "--no-progress")
    assert first.returncode == 0, first.stderr
    photo = folder / "p12.png"
    stat = photo.stat()
    photo.write_bytes(b"\0" * stat.st_size)  # not a photo any more, but the same size ...
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and modification time
    again = run("tag", str(folder), "--db", str(db), "--target", front.address, "--no-progress")
    assert again.returncode == 0, again.stderr
    assert "3 photos: 0 tagged, 3 already done, 0 failed, 0 unreadable" in again.stderr


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
        assert con.execute("SELECT count(*) FROM files").fetchone()[0] == 12


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
    result = run("duplicates", "--db", str(tagged["db"]), "--similar-threshold", "1.5")
    assert result.returncode == 2
    assert "--similar-threshold must be above 0 and at most 1" in result.stderr
