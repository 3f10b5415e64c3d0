"""Tests of the SigLIP view-type service, on tiny random-weight SigLIP models built offline.

`tiny_exports()` builds two tiny checkpoints of the real architecture (different random
weights, same classes) and exports each once per test session; tests copy the exported
folders before changing them.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TinyModel:
    checkpoint: Path  # the transformers checkpoint (SiglipModel, tokenizer, image processor)
    export: Path  # what `archivetag models export-siglip` wrote


@dataclass(frozen=True)
class TinyExports:
    a: TinyModel
    b: TinyModel  # another random model: its files must never be accepted next to a's


@functools.lru_cache(maxsize=1)
def tiny_exports() -> TinyExports:
    from archivetag.runtime.model_card import ModelCard
    from archivetag_siglip.export import export_folder
    from archivetag_siglip.smoke import write_random_checkpoint

    root = Path(tempfile.mkdtemp(prefix="siglip-tests-"))
    atexit.register(shutil.rmtree, root, True)
    models = []
    for seed, name in ((0, "a"), (1, "b")):
        checkpoint = write_random_checkpoint(root / f"checkpoint-{name}", seed=seed)
        export = root / f"export-{name}"
        export_folder(str(checkpoint), export, model_id=f"{ModelCard.smoke_name('siglip')}-{name}")
        ModelCard.for_smoke("siglip").write(export)
        models.append(TinyModel(checkpoint, export))
    return TinyExports(*models)


def models_dir_with(tmp_path: Path, export: Path) -> Path:
    """A fresh <models> folder whose siglip/ is a copy of export, safe to tamper with."""
    models = tmp_path / "models"
    shutil.copytree(export, models / "siglip")
    return models


@dataclass(frozen=True)
class FullSizeModel:
    kind: str  # "siglip" or "siglip2"
    checkpoint: Path
    export: Path


@functools.cache
def full_size_export(kind: str) -> FullSizeModel:
    """A full-size random-weight checkpoint (siglip-base-patch16-224's architecture, or siglip2-base-patch16-224's:
    Gemma tokenizer, 256000-token vocabulary), built offline and exported once per test session."""
    from transformers.utils import logging as transformers_logging

    from archivetag_siglip.export import export_folder
    from archivetag_siglip.smoke import write_random_checkpoint

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    root = Path(tempfile.mkdtemp(prefix=f"siglip-full-{kind}-"))
    atexit.register(shutil.rmtree, root, True)
    checkpoint = write_random_checkpoint(root / "checkpoint", seed=7, image_size=224, full_size=True,
                                         siglip2=kind == "siglip2")
    export = root / "models" / "siglip"
    export_folder(str(checkpoint), export, model_id=f"random-{kind}-base-patch16-224")
    return FullSizeModel(kind, checkpoint, export)
