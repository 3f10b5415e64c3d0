"""List the photos already tagged that look most like a photo (cosine of SigLIP embeddings).

The photo's embedding is the stored one when its content was tagged into the database;
otherwise the orchestrator embeds it (a TagImage call: it is tagged too, nothing is stored).
Only photos embedded by the same SigLIP model are compared (archivetag.vectors).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
from google.protobuf.json_format import MessageToJson

from archivetag import bulk, vector_index, vectors
from archivetag.bulk import DB_OPTION, MAX_PHOTO_OPTION, NotSent, Photo, shown
from archivetag.client import CLIENT_OPTIONS, ClientError, TaggingClient
from archivetag.results import ResultStore, StoreError, default_db_path, models_key, path_from_key, path_key
from archivetag.runtime.settings import Option, OptionGroup, parse_bool

STORE_OPTIONS = OptionGroup("results database", (DB_OPTION,))
EXACT_OPTION = Option("exact", False, "Search every vector exactly, without the index (as stores under "
                      f"{vector_index.EXACT_BELOW:,} photos always are): slow for a large store; for checking the "
                      "index.", parse_bool)
SIMILAR_OPTIONS = OptionGroup("similar", (Option("limit", 10, "How many of the closest photos to list.", int),
                                          MAX_PHOTO_OPTION, EXACT_OPTION))
OPTION_GROUPS = [CLIENT_OPTIONS, STORE_OPTIONS, SIMILAR_OPTIONS]


class CannotAnswer(Exception):
    """The command cannot answer; the message says why (exit code 2)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("photo", type=Path, metavar="PHOTO", help="the photo to compare (need not be tagged)")
    parser.add_argument("--json", action="store_true", help="print the answer as one JSON object")


def open_store(db: Path | None) -> ResultStore:
    """The existing results database (never a new, empty one)."""
    path = Path(db or default_db_path())
    if not path.exists():
        raise CannotAnswer(f"no results database at {path}: tag photos first (`archivetag tag PATH --db {path}`)")
    try:
        return ResultStore(path)
    except StoreError as exc:
        raise CannotAnswer(str(exc)) from None


def other_spaces_note(db: sqlite3.Connection, space: str, left_out: str = "compared") -> str:
    """A line about the vectors left out because another SigLIP model made them ('' when none).
    left_out: what is not done with them ("compared", "searched")."""
    others = sum(count for name, count in vectors.spaces(db) if name != space)
    return (f"{others} photos embedded by another SigLIP model are not {left_out} (tag them again with this one)"
            if others else "")


def model_name(model: dict) -> str:
    return f"{model.get('name', '?')} (revision {model.get('revision', '?')})"


def read_photo(path: Path, max_photo_mb: int) -> Photo:
    """The photo's bytes, read and size-checked as `tag` reads them."""
    if not path.exists():
        raise CannotAnswer(f"{shown(path)}: no such file")
    if not path.is_file():
        raise CannotAnswer(f"{shown(path)}: not a regular file")
    try:
        return bulk.read_photo(path, max_photo_mb)
    except NotSent as exc:
        raise CannotAnswer(f"{shown(path)}: {exc}") from None


def embed(args: argparse.Namespace, store: ResultStore, photo: Photo) -> tuple[str, np.ndarray, str, dict]:
    """(space, normalised vector, where it came from: "database" or "orchestrator", the SigLIP model)."""
    stored = vectors.stored_embedding(store.db, photo.sha256)
    if stored is not None:
        return stored[0], stored[1], "database", vectors.model_of_space(store.db, stored[0])
    try:
        with TaggingClient.from_settings(args) as client:
            result = client.tag(photo.data, max_tags=1, include_embedding=True)
    except ClientError as exc:
        if exc.code == grpc.StatusCode.INVALID_ARGUMENT:
            raise CannotAnswer(f"{shown(args.photo)}: the orchestrator cannot use it: {exc.message}") from None
        raise CannotAnswer(f"{args.target}: {exc} (the photo is not in the database, so it must be embedded)") from None
    model = vectors.embedding_model(result)
    vector = vectors.normalised(result.embedding)
    if model is None or vector is None:
        why = "; ".join(result.degraded_reasons) or "no embedding in the answer"
        raise CannotAnswer(f"{shown(args.photo)}: SigLIP did not embed it ({why})")
    return models_key([model]), vector, "orchestrator", json.loads(MessageToJson(model))


def closest(db: sqlite3.Connection, space: vectors.Space | vector_index.IndexedSpace, query: np.ndarray, limit: int,
            skip: str | bytes) -> list[tuple[Path, float]]:
    """The `limit` closest stored paths (a photo's own path left out), closest first."""
    wanted = limit + 1  # results, each with one path or more
    while True:
        found = []
        nearest = space.nearest(query, wanted)
        paths = vectors.paths_of(db, [result_id for result_id, _ in nearest])
        for result_id, similarity in nearest:
            found += [(path_from_key(p), similarity) for p in paths[result_id] if p != skip]
        if len(found) >= limit or wanted >= len(space):
            return found[:limit]
        wanted *= 4


def answer(args: argparse.Namespace) -> tuple[dict, str]:
    """(the answer, a note for stderr)."""
    if args.limit < 1:
        raise CannotAnswer(f"--limit must be 1 or more, not {args.limit}")
    photo = read_photo(args.photo, args.max_photo_mb)
    store = open_store(args.db)
    try:
        space_key, query, source, model = embed(args, store, photo)
        space = vector_index.searcher(store.db, store.path, space_key, exact=args.exact,
                                      say=lambda text: print(text, file=sys.stderr))
        note = other_spaces_note(store.db, space_key)
        if not len(space):
            raise CannotAnswer(f"no tagged photo was embedded by {model_name(model)}: tag photos "
                               "with `archivetag tag` first" + (f"; {note}" if note else ""))
        matches = closest(store.db, space, query, args.limit, path_key(args.photo.resolve()))
        return {
            "photo": str(args.photo.resolve()),
            "embedding_from": source,
            "model": model,
            "matches": [{"path": str(path), "similarity": round(sim, 6)} for path, sim in matches],
        }, note
    finally:
        store.close()


def answer_command(command: str, args: argparse.Namespace, compute: Callable[[argparse.Namespace], tuple[dict, str]],
                   show: Callable[[dict], None]) -> int:
    """Run a search command: its answer as text (`show`) or JSON on stdout, notes and errors on stderr."""
    try:
        result, note = compute(args)
    except CannotAnswer as exc:
        print(f"archivetag {command}: {exc}", file=sys.stderr)
        return 2
    if note:
        print(note, file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    else:
        show(result)
    return 0


def show_matches(result: dict) -> None:
    for match in result["matches"]:
        print(f"{match['similarity']:.4f}  {shown(Path(match['path']))}")


def run(args: argparse.Namespace) -> int:
    return answer_command("similar", args, answer, show_matches)
