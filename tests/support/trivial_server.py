"""A model service for the runtime's own tests: the shared runtime serving a trivial function.

Not a model: it "tags" an image with its dominant colour channel, so tests of the
runtime (batching, health, shutdown, decoding) can run in milliseconds. The model
services never use it.

    python -m tests.support.trivial_server --port N [--load-seconds S] [--infer-seconds S]
        [--fail-file PATH] [--hang-file PATH] [--decode-hang-file PATH]

--fail-file / --hang-file: while that file exists, inference raises / blocks, so tests
can make the model fail or stall from outside and watch health change.
--decode-hang-file: while it exists, preparing a decoded image (in the decode pool) blocks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from archivetag.runtime.errors import InvalidInput
from archivetag.runtime.model_service import TAGGER_SERVICE, ModelBackend, ModelServiceApp, TagResult
from archivetag.runtime.options import MODEL_SERVICE_OPTIONS, SERVER_OPTIONS
from archivetag.runtime.server import run
from archivetag.runtime.settings import add_option_groups
from archivetag.v1 import common_pb2


class DominantColourBackend(ModelBackend):
    family = "trivial"
    service = TAGGER_SERVICE
    input_edge = 32

    def __init__(self, load_seconds: float, infer_seconds: float, fail_file: Path | None,
                 hang_file: Path | None, batch_log: Path | None, decode_hang_file: Path | None = None):
        self.load_seconds = load_seconds
        self.infer_seconds = infer_seconds
        self.fail_file = fail_file
        self.hang_file = hang_file
        self.batch_log = batch_log
        self.decode_hang_file = decode_hang_file
        self.lock = threading.Lock()

    def load(self) -> None:
        time.sleep(self.load_seconds)

    def warmup_input(self):
        return Image.new("RGB", (32, 32), (200, 10, 10)), None

    def prepare(self, image, request):
        while request is not None and self.decode_hang_file and self.decode_hang_file.exists():
            time.sleep(0.05)
        if request is not None and "forbidden" in list(request.vocabulary):
            raise InvalidInput("the tag 'forbidden' is not in the vocabulary")
        poison = request is not None and "poison" in list(request.vocabulary)
        return np.asarray(image.resize((32, 32)), dtype=np.float32).mean(axis=(0, 1)), poison

    def infer_batch(self, items, abandoned):
        if self.batch_log:
            with self.lock, open(self.batch_log, "a") as f:
                f.write(json.dumps({"size": len(items)}) + "\n")
        while self.hang_file and self.hang_file.exists():
            time.sleep(0.05)
        if self.fail_file and self.fail_file.exists():
            raise RuntimeError("simulated device failure")
        if any(poison for _, poison in items):
            raise RuntimeError("poison item in batch")
        time.sleep(self.infer_seconds)
        names = ("red", "green", "blue")
        results = []
        for means, _ in items:
            order = np.argsort(-means)
            results.append(TagResult(tags=[(names[i], float(means[i] / 255)) for i in order]))
        return results

    def identity(self):
        return common_pb2.ModelIdentity(family="trivial", name="dominant-colour (runtime test)", device="cpu")

    def vocabulary(self):
        return ["red", "green", "blue"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    add_option_groups(parser, [SERVER_OPTIONS, MODEL_SERVICE_OPTIONS])
    parser.add_argument("--load-seconds", type=float, default=0.0)
    parser.add_argument("--infer-seconds", type=float, default=0.0)
    parser.add_argument("--fail-file", type=Path)
    parser.add_argument("--hang-file", type=Path)
    parser.add_argument("--batch-log", type=Path)
    parser.add_argument("--decode-hang-file", type=Path)
    args = parser.parse_args(argv)
    backend = DominantColourBackend(args.load_seconds, args.infer_seconds, args.fail_file, args.hang_file, args.batch_log,
                                    args.decode_hang_file)
    return run(ModelServiceApp(backend, args), args)


if __name__ == "__main__":
    sys.exit(main())
