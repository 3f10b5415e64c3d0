"""Print the photos already tagged that are the same photo, and those that are similar (SigLIP embeddings
and perceptual hashes).

Two tiers, each a set of groups:

- **same photo**: a re-encode, resize, format change or small crop of one photo. Two photos are
  linked when the cosine of their embeddings is at least --same-threshold AND their perceptual
  hashes (archivetag.phash, computed by `tag` from the file) differ in at most --max-hash-distance
  of 64 bits. A photo without a hash (tagged before hashes were kept) is judged by the embedding
  alone, and its hash distance is printed as "-". Paths with the same content are always one group.
- **similar**: the same scene, another shot. Two photos are linked when their cosine is at least
  --similar-threshold; a similar group is printed only when it holds more than one photo (copies
  of one photo count once, and are marked with their same-photo group).

A group is a connected component of its links (single linkage: a chain a~b~c is one group, so a
member may be further from the group's first photo than the threshold, and its printed similarity
says so). Large stores are searched through the index (archivetag.vector_index), small ones
exactly. Only the SigLIP model that embedded the newest photos is searched; photos embedded by
another model are counted, not compared.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

import numpy as np

from archivetag import phash, vector_index, vectors
from archivetag.bulk import shown
from archivetag.results import path_from_key
from archivetag.runtime.settings import Option, OptionGroup
from archivetag.similar import (
    EXACT_OPTION,
    STORE_OPTIONS,
    CannotAnswer,
    answer_command,
    open_store,
    other_spaces_note,
)

DUPLICATES_OPTIONS = OptionGroup("duplicates", (
    Option("same_threshold", 0.95, "Cosine similarity from which two photos may be the same photo (a re-encode, "
           "resize, format change or small crop), if their perceptual hashes agree too (--max-hash-distance).",
           float),
    Option("max_hash_distance", 10, "Most bits (of 64) in which the perceptual hashes of two copies of the same "
           "photo may differ: re-encodes and resizes differ in 0-4, a 3% crop in about 8, other photos in about "
           "32. 64: the embedding alone decides.", int),
    Option("similar_threshold", 0.88, "Cosine similarity from which two photos count as similar (the same scene, "
           "another shot). Not calibrated on real photos here: try a few values on your archive.", float),
    EXACT_OPTION,
))
OPTION_GROUPS = [STORE_OPTIONS, DUPLICATES_OPTIONS]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the groups as one JSON object")


class Groups:
    """Union-find over result ids."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def root(self, x: int) -> int:
        parent = self.parent
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def link(self, a: int, b: int) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def members(self) -> list[list[int]]:
        found: dict[int, list[int]] = {}
        for x in list(self.parent):
            found.setdefault(self.root(x), []).append(x)
        return [sorted(m) for m in found.values()]


def near_pairs(searcher, threshold: float) -> Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(result ids a, result ids b, cosines) of every pair at or above threshold, from the index or exactly."""
    if isinstance(searcher, vector_index.IndexedSpace):
        yield from searcher.near_pairs(threshold)
        return
    for i, j, sims in searcher.pairs_at_least(threshold):
        yield searcher.result_ids[i], searcher.result_ids[j], sims


def linked_pairs(db, searcher, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs at or above threshold between results some path still points at, each pair once."""
    linked = np.fromiter((r for (r,) in db.execute("SELECT DISTINCT result_id FROM files WHERE result_id IS NOT NULL "
                                                   "ORDER BY result_id")), dtype=np.int64)

    def pointed_at(ids: np.ndarray) -> np.ndarray:
        at = np.minimum(np.searchsorted(linked, ids), max(0, len(linked) - 1))
        return linked[at] == ids if len(linked) else np.zeros(len(ids), dtype=bool)

    parts_a, parts_b, parts_s = [], [], []
    count = 0
    for a, b, sims in near_pairs(searcher, threshold):
        keep = pointed_at(a) & pointed_at(b) & (a != b)
        a, b = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
        parts_a.append(a)
        parts_b.append(b)
        parts_s.append(sims[keep])
        count += len(a)
        if count > 2 * vectors.MAX_PAIRS:  # each pair may be seen twice (from both lists)
            raise CannotAnswer(f"a threshold of {threshold} links more than {vectors.MAX_PAIRS:,} pairs of photos: "
                               "same-scene photos are far closer; raise --similar-threshold")
    if not parts_a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    a, b, s = np.concatenate(parts_a), np.concatenate(parts_b), np.concatenate(parts_s)
    _, first = np.unique(np.stack([a, b], axis=1), axis=0, return_index=True)
    return a[first], b[first], s[first]


def copies(db, space_key: str) -> dict[int, list[str | bytes]]:
    """Results of the space that several paths point at (exact copies), with their paths."""
    found: dict[int, list[str | bytes]] = {}
    for result_id, path in db.execute(
            "SELECT f.result_id, f.path FROM files f WHERE f.result_id IN (SELECT f2.result_id FROM files f2 "
            "JOIN embeddings e ON e.result_id = f2.result_id AND e.space = ? GROUP BY f2.result_id "
            "HAVING count(*) > 1)", (space_key,)):
        found.setdefault(result_id, []).append(path)
    return found


def groups(args: argparse.Namespace) -> tuple[dict, str]:
    """(the answer, a note for stderr)."""
    for name in ("same_threshold", "similar_threshold"):
        value = getattr(args, name)
        if not 0.0 < value <= 1.0:
            raise CannotAnswer(f"--{name.replace('_', '-')} must be above 0 and at most 1, not {value}")
    if not 0 <= args.max_hash_distance <= phash.BITS:
        raise CannotAnswer(f"--max-hash-distance must be 0 to {phash.BITS}, not {args.max_hash_distance}")
    store = open_store(args.db)
    try:
        known = vectors.spaces(store.db)
        if not known:
            raise CannotAnswer(f"no photo in {store.path} has an embedding yet: tag photos with `archivetag tag`")
        space_key = known[0][0]
        searcher = vector_index.searcher(store.db, store.path, space_key, exact=args.exact,
                                         say=lambda text: print(text, file=sys.stderr))
        a, b, sims = linked_pairs(store.db, searcher, min(args.same_threshold, args.similar_threshold))
        close = sims >= args.same_threshold
        hashes = vectors.hashes_of(store.db, sorted(set(a[close].tolist()) | set(b[close].tolist())))
        same, similar = Groups(), Groups()
        for x, y, s in zip(a.tolist(), b.tolist(), sims.tolist()):
            if s >= args.similar_threshold:
                similar.link(x, y)
            if s >= args.same_threshold and (x not in hashes or y not in hashes
                                             or phash.distance(hashes[x], hashes[y]) <= args.max_hash_distance):
                same.link(x, y)
        copied = copies(store.db, space_key)
        for result_id in copied:
            same.root(result_id)
            similar.root(result_id)
        same_groups = [m for m in same.members() if len(m) > 1 or m[0] in copied]
        wanted = sorted({r for m in same_groups for r in m} | {r for m in similar.members() if len(m) > 1 for r in m})
        paths = vectors.paths_of(store.db, wanted)
        vecs = vectors.vectors_of(store.db, wanted)
        hashes.update(vectors.hashes_of(store.db, [r for r in wanted if r not in hashes]))

        def to_first(members: list[int], row: int) -> float:
            return round(float(vecs[row] @ vecs[members[0]]), 6)

        same_out, same_of = [], {}
        for members in same_groups:
            photos = []
            for row in members:
                distance = (phash.distance(hashes[row], hashes[members[0]])
                            if row in hashes and members[0] in hashes else None)
                photos += [{"path": str(path_from_key(p)), "similarity": to_first(members, row),
                            "hash_distance": distance} for p in paths[row]]
            same_out.append(photos)
        same_out.sort(key=lambda photos: (-len(photos), photos[0]["path"]))
        for number, photos in enumerate(same_out, 1):
            for photo in photos:
                same_of[photo["path"]] = number
        similar_out = []
        for members in similar.members():
            photos = [{"path": str(path_from_key(p)), "similarity": to_first(members, row)}
                      for row in members for p in paths[row]]
            for photo in photos:
                photo["same_photo"] = same_of.get(photo["path"])
            distinct = {photo["same_photo"] or photo["path"] for photo in photos}
            if len(distinct) > 1:
                similar_out.append(photos)
        similar_out.sort(key=lambda photos: (-len(photos), photos[0]["path"]))
        return {
            "model": vectors.model_of_space(store.db, space_key),
            "embeddings_compared": len(searcher),
            "search": "index" if isinstance(searcher, vector_index.IndexedSpace) else "exact",
            "same_photo": {"threshold": args.same_threshold, "max_hash_distance": args.max_hash_distance,
                           "groups": same_out},
            "similar": {"threshold": args.similar_threshold, "groups": similar_out},
        }, other_spaces_note(store.db, space_key)
    finally:
        store.close()


def show_groups(result: dict) -> None:
    same, similar = result["same_photo"], result["similar"]
    for number, photos in enumerate(same["groups"], 1):
        print(f"same photo {number}: {len(photos)} photos (similarity and hash distance to the first)")
        for photo in photos:
            distance = "-" if photo["hash_distance"] is None else str(photo["hash_distance"])
            print(f"  {photo['similarity']:.4f}  {distance:>2}  {shown(photo['path'])}")
    for number, photos in enumerate(similar["groups"], 1):
        print(f"similar {number}: {len(photos)} photos (similarity to the first)")
        for photo in photos:
            mark = f"  (same photo {photo['same_photo']})" if photo["same_photo"] else ""
            print(f"  {photo['similarity']:.4f}  {shown(photo['path'])}{mark}")
    print(f"{len(same['groups'])} same-photo groups (cosine >= {same['threshold']}, hash distance <= "
          f"{same['max_hash_distance']}) and {len(similar['groups'])} similar groups (cosine >= "
          f"{similar['threshold']}) among {result['embeddings_compared']} distinct photos", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    return answer_command("duplicates", args, groups, show_groups)
