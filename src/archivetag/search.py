"""Find the photos already tagged that words describe best (SigLIP's text and image towers).

The orchestrator embeds the text with SigLIP's text tower (EmbedText); the photos are ranked by
SigLIP's own image-text score, sigmoid(exp(logit_scale) * cosine + logit_bias), over the stored
embeddings of the model that embedded the text, and no other (archivetag.vectors). The ranking is
exact (every stored vector is scored); the score says how well the text describes the photo.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import grpc
import numpy as np
from google.protobuf.json_format import MessageToJson

from archivetag import vectors
from archivetag.bulk import shown
from archivetag.client import CLIENT_OPTIONS, ClientError, TaggingClient
from archivetag.results import models_key
from archivetag.runtime.settings import Option, OptionGroup
from archivetag.similar import (
    STORE_OPTIONS,
    CannotAnswer,
    answer_command,
    closest,
    model_name,
    open_store,
    other_spaces_note,
)
from archivetag.v1 import tagging_pb2

SEARCH_OPTIONS = OptionGroup("search", (Option("limit", 10, "How many photos to list, the best first.", int),))
OPTION_GROUPS = [CLIENT_OPTIONS, STORE_OPTIONS, SEARCH_OPTIONS]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", metavar="TEXT", help='what the photos show, in words (e.g. "staircase with graffiti")')
    parser.add_argument("--json", action="store_true", help="print the answer as one JSON object")


def probability(cosine: float, logit_scale: float, logit_bias: float) -> tuple[float, float]:
    """(SigLIP's probability that the text describes the photo, its logit) for one cosine."""
    logit = math.exp(logit_scale) * cosine + logit_bias
    return 0.5 * (1.0 + math.tanh(0.5 * logit)), logit


def embed_text(args: argparse.Namespace, text: str) -> tagging_pb2.EmbedTextResponse:
    try:
        with TaggingClient.from_settings(args) as client:
            return client.embed_text([text])
    except ClientError as exc:
        if exc.code == grpc.StatusCode.INVALID_ARGUMENT:
            raise CannotAnswer(f"the text cannot be searched for: {exc.message}") from None
        raise CannotAnswer(f"{args.target}: {exc} (the text is embedded by the stack's SigLIP)") from None


def rank(space: vectors.Space, query: np.ndarray, limit: int, db, logit_scale: float,
         logit_bias: float) -> list[dict]:
    """The `limit` best photos (paths) for the query, each with its score, logit and cosine, best first."""
    found = closest(db, space, query, limit, "")
    matches = []
    for path, cosine in found:
        score, logit = probability(cosine, logit_scale, logit_bias)
        matches.append({"path": str(path), "score": float(f"{score:.6g}"), "logit": round(logit, 4),
                        "cosine": round(cosine, 6)})
    return matches


def answer(args: argparse.Namespace) -> tuple[dict, str]:
    """(the answer, a note for stderr)."""
    if args.limit < 1:
        raise CannotAnswer(f"--limit must be 1 or more, not {args.limit}")
    if not args.text.strip():
        raise CannotAnswer("give the words to search for")
    store = open_store(args.db)
    try:
        embedded = embed_text(args, args.text)
        model = json.loads(MessageToJson(embedded.model))
        space_key = models_key([embedded.model])
        space = vectors.load_space(store.db, space_key)
        note = other_spaces_note(store.db, space_key, "searched")
        if not len(space):
            raise CannotAnswer(f"no tagged photo was embedded by {model_name(model)}, the model that embedded the "
                               "text: tag photos with `archivetag tag` first" + (f"; {note}" if note else ""))
        query = np.asarray(embedded.embeddings[0].values, dtype=np.float32)
        query /= max(float(np.linalg.norm(query)), 1e-12)
        matches = rank(space, query, args.limit, store.db, embedded.logit_scale, embedded.logit_bias)
        return {"text": args.text, "model": model, "searched": len(space), "matches": matches}, note
    finally:
        store.close()


def show_matches(result: dict) -> None:
    for match in result["matches"]:
        print(f"{match['score']:.4g}  {shown(Path(match['path']))}")


def run(args: argparse.Namespace) -> int:
    return answer_command("search", args, answer, show_matches)
