"""Florence-2 service tests. The tiny model is built once per test process (a few seconds)."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path


@functools.lru_cache(maxsize=None)
def tiny_models_dir() -> Path:
    """A models directory whose florence/ holds the smoke Florence-2 (real architecture, tiny, random)."""
    from archivetag_florence.smoke import write_smoke_model

    models = Path(tempfile.mkdtemp(prefix="florence-tests-"))
    atexit.register(shutil.rmtree, models, ignore_errors=True)
    write_smoke_model(models / "florence")
    return models


def settings(models: Path, *args: str):
    """The typed `archivetag serve florence` settings for a models folder, in float32 unless `args` say otherwise:
    these tests compare with transformers' own float32 output (int8, the CPU default, has test_precision.py)."""
    from archivetag.cli import parse_serve_settings

    return parse_serve_settings("florence", "--models", str(models), "--dtype", "float32", *args)
