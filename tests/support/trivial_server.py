"""A model service for the runtime's own tests: the shared runtime serving a trivial function.

Not a model: it "tags" an image with its dominant colour channel, so tests of the
runtime (batching, health, shutdown, decoding) can run in milliseconds. The model
services never use it.

    python -m tests.support.trivial_server --port N [--load-gate-file PATH]
        [--fail-file PATH] [--hang-file PATH] [--decode-hang-file PATH] [--batch-log PATH]

--load-gate-file: while that file exists, loading the model does not finish.
--fail-file / --hang-file: while that file exists, inference raises / blocks, so tests
can make the model fail or stall from outside and watch health change (no timing involved).
--batch-log: one JSON line per batch, written when its inference starts: its size and the
dominant colour of each item in batch order (so tests can see which request went first).
--decode-hang-file: while it exists, preparing a decoded image (in the decode pool) blocks.
"""

from __future__ import annotations

import argparse
import json
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
from archivetag.runtime.specs import TAGGER, ServerSpec
from archivetag.v1 import common_pb2


NAMES = ("red", "green", "blue")
# Its declaration, as a model folder's spec.py holds one; not registered (tests start it directly).
SPEC = ServerSpec(name="trivial", title="dominant colour (runtime tests)", capability=TAGGER, port=0, metrics_port=0,
                  app="tests.support.trivial_server:DominantColourBackend")


class DominantColourBackend(ModelBackend):
    family = "trivial"
    service = TAGGER_SERVICE
    input_edge = 32

    def __init__(self, load_gate_file: Path | None, fail_file: Path | None, hang_file: Path | None,
                 batch_log: Path | None, decode_hang_file: Path | None = None):
        self.load_gate_file = load_gate_file
        self.fail_file = fail_file
        self.hang_file = hang_file
        self.batch_log = batch_log
        self.decode_hang_file = decode_hang_file
        self.lock = threading.Lock()

    def load(self) -> None:
        while self.load_gate_file and self.load_gate_file.exists():
            time.sleep(0.05)

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
                colours = [NAMES[int(np.argmax(means))] for means, _ in items]
                f.write(json.dumps({"size": len(items), "colours": colours}) + "\n")
        while self.hang_file and self.hang_file.exists():
            time.sleep(0.05)
        if self.fail_file and self.fail_file.exists():
            raise RuntimeError("simulated device failure")
        if any(poison for _, poison in items):
            raise RuntimeError("poison item in batch")
        names = NAMES
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
    parser.add_argument("--load-gate-file", type=Path)
    parser.add_argument("--fail-file", type=Path)
    parser.add_argument("--hang-file", type=Path)
    parser.add_argument("--batch-log", type=Path)
    parser.add_argument("--decode-hang-file", type=Path)
    args = parser.parse_args(argv)
    backend = DominantColourBackend(args.load_gate_file, args.fail_file, args.hang_file, args.batch_log,
                                    args.decode_hang_file)
    return run(ModelServiceApp(SPEC, backend, args), args)


if __name__ == "__main__":
    sys.exit(main())
