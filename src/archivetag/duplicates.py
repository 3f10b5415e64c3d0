"""Print groups of near-duplicate photos among those already tagged (SigLIP embeddings).

Two photos are linked when the cosine of their embeddings is at least --threshold; a group is
a connected component of those links (single linkage: a chain a~b~c is one group, so a member
may be further than the threshold from the group's first photo, and its printed similarity
says so). Copies of the same content are always in one group. Only the SigLIP model that
embedded the newest photos is searched; photos embedded by another model are counted, not compared.
"""

from __future__ import annotations

import argparse
import sys

from archivetag import vectors
from archivetag.bulk import shown
from archivetag.results import path_from_key
from archivetag.runtime.settings import Option, OptionGroup
from archivetag.similar import STORE_OPTIONS, CannotAnswer, answer_command, open_store, other_spaces_note

DUPLICATES_OPTIONS = OptionGroup("duplicates", (
    Option("threshold", 0.95, "Cosine similarity from which two photos count as near-duplicates (0 to 1). Not "
           "calibrated on real photos here: try a few values on your archive.", float),
))
OPTION_GROUPS = [STORE_OPTIONS, DUPLICATES_OPTIONS]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the groups as one JSON object")


def groups(args: argparse.Namespace) -> tuple[dict, str]:
    """(the answer, a note for stderr)."""
    if not 0.0 < args.threshold <= 1.0:
        raise CannotAnswer(f"--threshold must be above 0 and at most 1, not {args.threshold}")
    store = open_store(args.db)
    try:
        known = vectors.spaces(store.db)
        if not known:
            raise CannotAnswer(f"no photo in {store.path} has an embedding yet: tag photos with `archivetag tag`")
        space_key = known[0][0]
        space = vectors.load_space(store.db, space_key)
        try:
            rows = vectors.components(space, args.threshold)
        except vectors.TooManyPairs as exc:
            raise CannotAnswer(str(exc)) from None
        result_ids = [int(r) for r in space.result_ids]
        paths = vectors.paths_of(store.db, result_ids)
        found = []
        for members in rows:
            first = space.matrix[members[0]]
            photos = [{"path": str(path_from_key(p)), "similarity": round(float(space.matrix[row] @ first), 6)}
                      for row in members for p in paths[result_ids[row]]]
            if len(photos) > 1:
                found.append(photos)
        found.sort(key=lambda photos: (-len(photos), photos[0]["path"]))
        return {"threshold": args.threshold, "model": vectors.model_of_space(store.db, space_key),
                "embeddings_compared": len(space), "groups": found}, other_spaces_note(store.db, space_key)
    finally:
        store.close()


def show_groups(result: dict) -> None:
    for number, photos in enumerate(result["groups"], 1):
        print(f"group {number}: {len(photos)} photos (similarity to the first)")
        for photo in photos:
            print(f"  {photo['similarity']:.4f}  {shown(path_from_key(photo['path']))}")
    print(f"{len(result['groups'])} groups among {result['embeddings_compared']} distinct photos at threshold "
          f"{result['threshold']}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    return answer_command("duplicates", args, groups, show_groups)
