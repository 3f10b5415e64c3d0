"""The whole path once: `archivetag up` with the smoke models, `tag` two sample photos into SQLite, then
`export --xmp`: the sidecars hold what the stack answered, with the models that answered."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess

from archivetag.stack import archivetag_command
from tests.export.conftest import SAMPLES, exiftool_read, export, listed
from tests.support.servers import free_port
from tests.support.waiting import wait_for

SERVICES = ("florence", "rampp", "siglip", "orchestrator")


def test_what_the_stack_answered_is_what_the_sidecars_hold(smoke_models, tmp_path):
    folder = tmp_path / "archive"
    folder.mkdir()
    for name in ("coffee-table.jpg", "brick-wall.webp"):
        shutil.copyfile(SAMPLES / name, folder / name)
    ports = {name: free_port() for name in SERVICES}
    logs = tmp_path / "up"
    argv = [*archivetag_command(), "up", "--models", str(smoke_models), "--log-dir", str(logs), "--no-metrics",
            *[arg for name, port in ports.items() for arg in (f"--{name}-port", str(port))]]
    env = {**os.environ, "ARCHIVETAG_CACHE_PATH": str(tmp_path / "cache.sqlite"), "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "up.out", "w") as out:
        up = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: (tmp_path / "up.out").read_text(), lambda text: "services are SERVING" in text
                 or up.poll() is not None, timeout=600, describe="`up` to say the services serve")
        db = tmp_path / "results.sqlite"
        tagged = subprocess.run([*archivetag_command(), "tag", str(folder), "--db", str(db), "--ocr", "--no-progress",
                                 "--target", f"127.0.0.1:{ports['orchestrator']}"],
                                capture_output=True, text=True, timeout=600)
        assert tagged.returncode == 0, tagged.stderr
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(120)

    assert export(db, "--xmp").returncode == 2  # smoke answers never reach a catalogue by accident
    result = export(db, "--xmp", "--include-smoke")
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(db) as con:
        for photo in sorted(folder.glob("*.*")):
            if photo.suffix == ".xmp":
                continue
            (result_id,) = con.execute("SELECT result_id FROM files WHERE path = ?", (str(photo),)).fetchone()
            tags = [name for name, in con.execute(
                "SELECT name FROM tags WHERE result_id = ? ORDER BY rowid", (result_id,))]
            (view,) = con.execute("SELECT view_type FROM results WHERE id = ?", (result_id,)).fetchone()
            revisions = {name: rev for name, rev in con.execute(
                "SELECT name, revision FROM result_models WHERE result_id = ?", (result_id,))}
            found = exiftool_read(photo.with_name(photo.name + ".xmp"))
            expected = list(dict.fromkeys(([view] if view != "unknown" else []) + tags))
            assert listed(found["XMP-dc:Subject"]) == expected
            machine = [t for t in found["XMP-archivetag:Tags"] if t["Kind"] == "tag"]
            assert [t["Name"] for t in machine] == tags
            assert all(t["Revision"] == revisions[t["Model"]] for t in machine)
            assert all(m["Smoke"] is True for m in found["XMP-archivetag:Models"])
