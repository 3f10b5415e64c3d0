"""The main job in one command: the whole stack on this machine, tagging sample photos.

Builds smoke models if no models are present, starts the stack (`up`), tags the bundled
sample photos (or the paths given) through the orchestrator into SQLite, prints a
table, and stops the stack.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import textwrap
from importlib import resources
from pathlib import Path

from archivetag.bulk import TAG_OPTIONS, find_photos, tag_photos
from archivetag.results import ResultStore
from archivetag.stack import UP_OPTIONS, Stack, StackError, missing_models

OPTION_GROUPS = [UP_OPTIONS]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                        help="photos or folders (default: the bundled samples)")
    parser.add_argument("--db", type=Path, help="keep the results in this SQLite file (default: a temporary one)")


def sample_photos() -> Path:
    return Path(str(resources.files("archivetag").joinpath("samples")))


def results_table(db_path: Path) -> str:
    db = sqlite3.connect(db_path)
    rows = db.execute(
        "SELECT f.path, r.status, r.view_type, r.view_confidence, r.tagger, r.caption, "
        "r.error_status, r.error_message, "
        "(SELECT group_concat(name || ' ' || printf('%.2f', confidence), ', ') FROM "
        " (SELECT name, confidence FROM tags t WHERE t.result_id = r.id ORDER BY confidence DESC LIMIT 5)) "
        "FROM files f JOIN results r ON r.id = f.result_id ORDER BY f.path"
    ).fetchall()
    db.close()
    lines = []
    for path, status, view, view_conf, tagger, caption, error_status, error_message, tags in rows:
        lines.append(f"{Path(path).name}")
        if status != "ok":
            lines.append(f"    error      {error_status}: {error_message}")
            continue
        lines.append(f"    view type  {view} ({view_conf:.2f})")
        lines.append(f"    tags       {tags or '(none over threshold)'}   [{tagger}]")
        if caption:
            lines.append("    caption    " + textwrap.shorten(caption, 100))
    return "\n".join(lines)


async def demo(args) -> int:
    if missing_models(args.models):
        print(f"no models in {args.models}: building smoke models (random weights; their tags are meaningless)")
        from archivetag.models import write_smoke_models

        write_smoke_models(args.models)
    paths = args.paths or [sample_photos()]
    photos, problems = find_photos(paths)
    if problems or not photos:
        print("archivetag demo: " + ("; ".join(problems) or "no photos found"), file=sys.stderr)
        return 2
    stack = Stack(args)
    try:
        stack.start()
        print(f"starting the stack (logs: {args.log_dir})")
        await stack.wait_serving(args.start_timeout_seconds)
        print(stack.endpoints_text())
        client = argparse.Namespace(**{
            **{o.name: o.default for o in TAG_OPTIONS.options},
            "target": f"127.0.0.1:{args.orchestrator_port}", "token": "", "tls_ca": None,
            "tls_client_cert": None, "tls_client_key": None, "concurrency": 4, "retries": 2,
        })
        with tempfile.TemporaryDirectory() as tmp:
            db_path = args.db or Path(tmp) / "demo.sqlite"
            store = ResultStore(db_path)
            from tqdm import tqdm

            with tqdm(total=len(photos), unit="photo", desc="tagging", file=sys.stderr) as progress:
                summary = await tag_photos(client, photos, store, progress)
            store.close()
            print(f"\n{summary.tagged} tagged, {summary.failed} failed in {summary.seconds:.1f} s\n")
            print(results_table(db_path))
        return 0 if not summary.failed else 1
    except StackError as exc:
        print(f"archivetag demo: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping the stack ...")
        await stack.stop()


def run(args: argparse.Namespace) -> int:
    return asyncio.run(demo(args))
