"""The whole stack on one machine: `up`, `tag` into SQLite, `status`, `models smoke` offline."""

from __future__ import annotations

import json
import resource
import os
import shutil
import signal
import sqlite3
import subprocess
from pathlib import Path

import grpc
import pytest

from archivetag.runtime.registry import server
from archivetag.stack import archivetag_command
from archivetag.v1 import tagger_pb2, tagger_pb2_grpc, tagging_pb2
from tests.support.image_corpus import encode, photo
from tests.support.servers import free_port, health_status
from tests.support.waiting import wait_for

ARCHIVETAG = archivetag_command()
SERVICES = ("florence", "rampp", "siglip", "orchestrator")


@pytest.fixture(scope="module")
def stack(smoke_models, tmp_path_factory):
    """`archivetag up` on free ports, as a user would run it."""
    logs = tmp_path_factory.mktemp("up")
    ports = {name: free_port() for name in SERVICES}
    argv = [*ARCHIVETAG, "up", "--models", str(smoke_models), "--log-dir", str(logs), "--no-metrics",
            *[arg for name, port in ports.items() for arg in (f"--{name}-port", str(port))]]
    output = open(logs / "up.out", "w")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "ARCHIVETAG_CACHE_PATH": str(logs / "cache.sqlite")}  # not the user's
    process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: (logs / "up.out").read_text(), lambda out: "services are SERVING" in out
                 or process.poll() is not None, timeout=600, describe="`up` to say the services serve (its output)")
        assert process.poll() is None, (logs / "up.out").read_text()
        yield {"process": process, "ports": ports, "logs": logs, "out": logs / "up.out"}
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
        output.close()


def pid_of(stack, name: str) -> int:
    return int((stack["logs"] / f"{name}.pid").read_text())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def test_up_brings_all_four_to_serving_and_prints_how_to_probe_them(stack):
    for name, port in stack["ports"].items():
        assert health_status(f"127.0.0.1:{port}", server(name).health_service) == "SERVING", name
    out = stack["out"].read_text()
    assert f"grpcurl -plaintext 127.0.0.1:{stack['ports']['orchestrator']} list" in out
    assert "grpc.health.v1.Health/Check" in out


def test_status_shows_every_backend_serving(stack):
    def status() -> subprocess.CompletedProcess:
        return subprocess.run([*ARCHIVETAG, "status", "--target", f"127.0.0.1:{stack['ports']['orchestrator']}"],
                              capture_output=True, text=True, timeout=120)

    def rows(result: subprocess.CompletedProcess) -> dict[str, list[str]]:
        """backend name -> its cells (backend, role, health, breaker, replicas, ..., model); the role
        ("primary tagger", "view type") is two words, so it is joined back into one cell."""
        table = {}
        for line in result.stdout.splitlines():
            cells = line.split()
            if len(cells) > 3:
                table[cells[0]] = [cells[0], " ".join(cells[1:3]), *cells[3:]]
        return table

    # The orchestrator's health watch learns each backend's state a moment after `up` saw it.
    result = wait_for(status, lambda r: r.returncode == 0 and all(
        rows(r).get(name, [""] * 3)[2] == "serving" for name in ("florence", "rampp", "siglip")), timeout=120,
        describe="`archivetag status` to show the three backends serving")
    for name in ("florence", "rampp", "siglip"):
        _, _, health, breaker, replicas, _, _, _, _, *model = rows(result)[name]
        assert health == "serving", result.stdout
        assert breaker == "closed", result.stdout
        assert replicas == "1/1", result.stdout
        assert "smoke" in " ".join(model), result.stdout
    assert "result cache (sqlite):" in result.stdout


def make_photo_folder(folder: Path, good: int = 45) -> tuple[list[Path], list[Path]]:
    folder.mkdir()
    (folder / "sub").mkdir()
    goods = []
    formats = [("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP"), ("tif", "TIFF"), ("heic", "HEIF")]
    for i in range(good):
        suffix, fmt = formats[i % len(formats)]
        path = folder / ("sub" if i % 3 == 0 else "") / f"photo-{i:02d}.{suffix}"
        path.write_bytes(encode(photo(80 + i, 60 + (i * 7) % 40), fmt))
        goods.append(path)
    broken = {
        "truncated.jpg": encode(photo(), "JPEG")[:300],
        "letter.jpg": b"Dear archivist, this is not a photo.\n" * 10,
        "empty.png": b"",
        "scan.tif": b"II*\x00garbage" * 10,
        "drawing.png": b"<svg xmlns='http://www.w3.org/2000/svg'/>",
    }
    for name, data in broken.items():
        (folder / name).write_bytes(data)
    return goods, [folder / n for n in broken]


def test_tag_records_every_good_photo_reports_broken_ones_and_resumes_after_a_kill(stack, tmp_path):
    goods, broken = make_photo_folder(tmp_path / "photos")
    db = tmp_path / "results.sqlite"
    target = f"127.0.0.1:{stack['ports']['orchestrator']}"
    argv = [*ARCHIVETAG, "tag", str(tmp_path / "photos"), "--db", str(db), "--target", target,
            "--concurrency", "2", "--no-progress"]

    def ok_rows() -> int:
        if not db.exists():
            return 0
        with sqlite3.connect(db) as con:
            try:
                return con.execute("SELECT count(*) FROM results WHERE status = 'ok'").fetchone()[0]
            except sqlite3.OperationalError:
                return 0

    first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(ok_rows, lambda rows: rows >= 5 or first.poll() is not None, timeout=600, interval=0.02,
             describe="the first run to record 5 photos (rows)")
    first.send_signal(signal.SIGSTOP)  # frozen where it is, then killed: nothing answered so far may be lost
    first.kill()
    first.wait()
    done_before = ok_rows()
    assert done_before >= 5
    assert done_before < len(goods), "the first run finished before it was killed: nothing to resume"
    with sqlite3.connect(db) as con:
        first_ids = dict(con.execute("SELECT sha256, id FROM results WHERE status = 'ok'").fetchall())

    second = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert second.returncode == 1, second.stderr  # some photos are broken: the exit code says so
    summary = second.stderr.strip().splitlines()[-1]
    assert f"{len(goods) + len(broken)} photos:" in summary, summary
    assert "5 failed" in summary, summary
    tagged_now = int(summary.split(": ")[1].split(" tagged")[0])
    assert tagged_now == len(goods) - done_before  # nothing was tagged twice
    for path in broken:
        assert str(path) in second.stderr  # each broken file is named

    con = sqlite3.connect(db)
    files = dict(con.execute("SELECT f.path, r.status FROM files f JOIN results r ON r.id = f.result_id").fetchall())
    assert {Path(p) for p, s in files.items() if s == "ok"} == {p.resolve() for p in goods}
    assert {Path(p) for p, s in files.items() if s == "error"} == {p.resolve() for p in broken}
    errors = dict(con.execute("SELECT f.path, r.error_status FROM files f JOIN results r ON r.id = f.result_id "
                              "WHERE r.status = 'error'").fetchall())
    assert set(errors.values()) == {"INVALID_ARGUMENT"}
    still = dict(con.execute("SELECT sha256, id FROM results WHERE status = 'ok'").fetchall())
    assert all(still[sha] == row_id for sha, row_id in first_ids.items())  # first run's rows kept as they were

    # The database holds what the orchestrator answered: tables and stored response agree, and a
    # fresh call to the tagger that answered (Florence, or RAM++ after a failover on a busy
    # machine) gives the same tags.
    taggers = {name: tagger_pb2_grpc.TaggerServiceStub(grpc.insecure_channel(f"127.0.0.1:{stack['ports'][name]}"))
               for name in ("florence", "rampp")}
    for path in goods[:3]:
        result_id, blob = con.execute(
            "SELECT r.id, r.response FROM files f JOIN results r ON r.id = f.result_id WHERE f.path = ?",
            (str(path.resolve()),)).fetchone()
        stored = tagging_pb2.TagImagesResponse.FromString(blob).result
        tags = con.execute("SELECT name, confidence, source_model FROM tags WHERE result_id = ?", (result_id,)).fetchall()
        assert [(t.name, pytest.approx(t.confidence), t.source_model) for t in stored.tags] == tags
        caption, view_type = con.execute("SELECT caption, view_type FROM results WHERE id = ?", (result_id,)).fetchone()
        assert (caption, view_type) == (stored.caption, stored.view_type.name)
        request = tagger_pb2.TagRequest()
        request.image.data = path.read_bytes()
        fresh = taggers[stored.tagger].Tag(request, timeout=300)
        assert fresh.caption == stored.caption
        assert [t.name for t in fresh.tags] == [t.name for t in stored.tags]
        assert [t.confidence for t in fresh.tags] == pytest.approx([t.confidence for t in stored.tags], abs=1e-4)

    third = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    summary = third.stderr.strip().splitlines()[-1]
    assert f"{len(goods) + len(broken)} photos: 0 tagged," in summary, summary  # everything was done before


def test_tag_json_prints_results_instead_of_writing_a_database(stack, tmp_path):
    path = tmp_path / "one.jpg"
    path.write_bytes(encode(photo(), "JPEG"))
    result = subprocess.run([*ARCHIVETAG, "tag", str(path), "--json", "--no-progress", "--db", str(tmp_path / "x.db"),
                             "--target", f"127.0.0.1:{stack['ports']['orchestrator']}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout.strip())
    assert line["path"] == str(path.resolve())
    assert line["result"]["tagger"] in {"florence", "rampp"}
    assert not (tmp_path / "x.db").exists()


def test_tag_json_keeps_stdout_for_results_and_every_problem_on_stderr(stack, tmp_path):
    good, broken, missing = tmp_path / "good.jpg", tmp_path / "broken.jpg", tmp_path / "missing.jpg"
    good.write_bytes(encode(photo(), "JPEG"))
    broken.write_bytes(b"not a photo at all")
    result = subprocess.run([*ARCHIVETAG, "tag", str(good), str(broken), str(missing), "--json", "--no-progress",
                             "--target", f"127.0.0.1:{stack['ports']['orchestrator']}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]  # nothing but JSON on stdout
    assert sorted(line["path"] for line in lines) == sorted([str(good.resolve()), str(broken.resolve())])
    assert f"{missing}: no such file or folder" in result.stderr
    assert f"failed: {broken.resolve()}" in result.stderr


def tag_argv(stack, *paths: Path, db: Path, concurrency: int = 2) -> list[str]:
    return [*ARCHIVETAG, "tag", *map(str, paths), "--db", str(db), "--target",
            f"127.0.0.1:{stack['ports']['orchestrator']}", "--concurrency", str(concurrency), "--no-progress"]


def summary_counts(stderr: str) -> dict[str, int]:
    """'N photos: T tagged, S already done, F failed, U unreadable (...)' → counts."""
    line = stderr.strip().splitlines()[-1]
    head, _, rest = line.partition(" photos: ")
    counts = {"photos": int(head)}
    for part in rest.split(" (")[0].split(", "):
        number, _, name = part.partition(" ")
        counts[name] = int(number)
    return counts


def ok_paths(db: Path) -> list:
    """Paths with a good result (str, or bytes for a name that is not UTF-8); [] before the tables exist."""
    if not db.exists():
        return []
    with sqlite3.connect(db) as con:
        try:
            return [row[0] for row in con.execute(
                "SELECT f.path FROM files f JOIN results r ON r.id = f.result_id WHERE r.status = 'ok'")]
        except sqlite3.OperationalError:
            return []


def png_folder(folder: Path, count: int) -> list[Path]:
    """A new folder of `count` small PNGs, each different (so none is another's duplicate content)."""
    folder.mkdir()
    paths = [folder / f"p-{i:02d}.png" for i in range(count)]
    for i, path in enumerate(paths):
        path.write_bytes(encode(photo(60 + i, 48 + i % 7), "PNG"))
    return paths


def test_tag_goes_past_an_oversized_file_and_stores_a_non_utf8_name_exactly(stack, tmp_path):
    folder = tmp_path / "photos"
    goods = png_folder(folder, 4)
    odd = Path(os.fsdecode(os.fsencode(folder) + b"/caf\xe9-\xff.jpg"))
    odd.write_bytes(encode(photo(90, 60), "JPEG"))
    huge = folder / "huge.jpg"
    with open(huge, "wb") as f:
        f.truncate(40 * 1024 * 1024)  # sparse: over the 32 MiB a request may carry
    db = tmp_path / "results.sqlite"
    result = subprocess.run(tag_argv(stack, folder, db=db), capture_output=True, text=True, timeout=600)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr  # one file was not tagged: the exit code says so
    counts = summary_counts(result.stderr)
    assert counts["photos"] == 6
    assert counts["tagged"] == 5
    assert counts["unreadable"] == 1
    assert f"unreadable: {huge}: 40.0 MiB, over the" in result.stderr
    stored = ok_paths(db)
    assert os.fsencode(odd) in stored  # the raw bytes of the name, exactly
    assert sorted(p for p in stored if isinstance(p, str)) == sorted(str(g) for g in goods)


def test_two_tag_runs_on_one_database_tag_each_photo_once(stack, tmp_path):
    folder = tmp_path / "photos"
    png_folder(folder, 24)
    db = tmp_path / "shared.sqlite"
    runs = [subprocess.Popen(tag_argv(stack, folder, db=db), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    for run, (_, stderr) in zip(runs, outputs):
        assert run.returncode == 0, stderr
    counts = [summary_counts(stderr) for _, stderr in outputs]
    assert sum(c["tagged"] for c in counts) == 24  # none tagged by both
    assert len(ok_paths(db)) == 24


def test_a_full_disk_ends_tag_with_a_clear_message_and_what_was_stored_is_kept(stack, tmp_path):
    db = tmp_path / "results.sqlite"
    first = subprocess.run(tag_argv(stack, *png_folder(tmp_path / "first", 1), db=db), capture_output=True, text=True,
                           timeout=600)
    assert first.returncode == 0, first.stderr
    files = sum(p.stat().st_size for p in tmp_path.glob("results.sqlite*"))

    def little_room() -> None:  # the disk as tag sees it: no file may grow past what the database has now
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (files, files))

    full = subprocess.run(tag_argv(stack, tmp_path / "second", db=db), capture_output=True, text=True, timeout=600,
                          preexec_fn=little_room) if png_folder(tmp_path / "second", 20) else None
    assert full is not None and full.returncode == 2, full.stderr if full else ""
    assert "cannot write the results to" in full.stderr and "Traceback" not in full.stderr
    assert len(ok_paths(db)) >= 1  # the first run's photo is still there


def test_tag_resumes_after_the_orchestrator_drains_on_sigterm_none_lost_none_twice(stack, tmp_path):
    folder = tmp_path / "photos"
    png_folder(folder, 40)
    db = tmp_path / "results.sqlite"
    run = subprocess.Popen(tag_argv(stack, folder, db=db, concurrency=2) + ["--retries", "10"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(ok_paths(db)) >= 5 or run.poll() is not None, timeout=300, describe="five photos tagged")
    os.kill(pid_of(stack, "orchestrator"), signal.SIGTERM)  # `up` starts it again
    _, stderr = run.communicate(timeout=900)
    assert run.returncode == 0, stderr
    counts = summary_counts(stderr)
    assert counts["tagged"] == 40  # each photo answered once, none lost
    assert len(ok_paths(db)) == 40
    target = f"127.0.0.1:{stack['ports']['orchestrator']}"
    wait_for(lambda: health_status(target, server("orchestrator").health_service) == "SERVING", timeout=300,
             describe="the orchestrator serving again")


def test_a_killed_service_is_restarted_and_sigterm_stops_all_four(stack):
    rampp = pid_of(stack, "rampp")
    os.kill(rampp, signal.SIGKILL)
    wait_for(lambda: pid_of(stack, "rampp"), lambda pid: pid != rampp, timeout=120, describe="a new rampp pid",
             ignore=(ValueError,))  # the pid file is rewritten on restart
    address = f"127.0.0.1:{stack['ports']['rampp']}"
    wait_for(lambda: health_status(address, server("rampp").health_service), lambda status: status == "SERVING",
             timeout=300, describe="the restarted rampp to serve (health)")
    assert "rampp exited with code -9; restarting" in stack["out"].read_text()

    pids = [pid_of(stack, name) for name in SERVICES]
    stack["process"].send_signal(signal.SIGTERM)
    assert stack["process"].wait(300) == 0
    assert not any(alive(pid) for pid in pids)
    assert "stopped" in stack["out"].read_text().splitlines()[-1]


def test_up_without_models_names_both_ways_to_get_them(tmp_path):
    result = subprocess.run([*ARCHIVETAG, "up", "--models", str(tmp_path / "none"), "--log-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "archivetag models pull" in result.stderr
    assert "archivetag models smoke" in result.stderr


def test_models_smoke_works_with_the_network_unreachable(tmp_path):
    if shutil.which("unshare") and subprocess.run(["unshare", "--net", "true"]).returncode == 0:
        prefix = ["unshare", "--net"]  # a new network namespace: no route anywhere, loopback down
    else:
        pytest.skip("cannot create a network namespace here")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    result = subprocess.run([*prefix, *ARCHIVETAG, "models", "smoke", "--models", str(tmp_path / "models")],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    for name in ("florence", "rampp", "siglip"):
        assert any((tmp_path / "models" / name).iterdir())
