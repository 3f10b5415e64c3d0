"""One way for every model folder to say what it holds: `archivetag-model.json`.

Whatever installs a model (`models smoke`, `models pull`, the converters, the exporter)
writes the card; every service reads it the same way and reports it as its ModelIdentity
(name, revision, smoke flag). A folder without a card (weights copied in by hand) still
serves, under the backend's default name and an empty revision.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from archivetag.runtime.errors import ModelLoadError

CARD_FILE = "archivetag-model.json"
CARD_FORMAT = "archivetag-model/1"
SMOKE_MARK = "smoke"  # every smoke model's name ends with this, so every answer says so


@dataclass
class ModelCard:
    family: str  # registry name: florence, rampp, siglip
    name: str  # e.g. "florence-community/Florence-2-base", "archivetag/florence-2-smoke"
    revision: str = ""  # the upstream commit the files came from ("" when unknown)
    smoke: bool = False  # random weights: the answers are meaningless
    source: str = ""  # where the files came from, for people: a hub URL, "models smoke", a local path
    files: dict[str, str] = field(default_factory=dict)  # installed file → SHA-256
    format: str = CARD_FORMAT

    @staticmethod
    def smoke_name(family: str) -> str:
        """The one naming rule for smoke models: archivetag/<family>-smoke."""
        return f"archivetag/{family}-{SMOKE_MARK}"

    @classmethod
    def for_smoke(cls, family: str) -> ModelCard:
        return cls(family=family, name=cls.smoke_name(family), revision="random-weights", smoke=True,
                   source="archivetag models smoke")

    def write(self, folder: Path) -> Path:
        path = Path(folder) / CARD_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def read(cls, folder: Path) -> ModelCard | None:
        """The folder's card, or None when it has none; ModelLoadError when it is damaged."""
        path = Path(folder) / CARD_FILE
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{path} cannot be read: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != CARD_FORMAT:
            raise ModelLoadError(f"{path} is not an {CARD_FORMAT} model card")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        try:
            return cls(**known)
        except TypeError as exc:
            raise ModelLoadError(f"{path} is incomplete: {exc}") from None


def model_identity(family: str, folder: Path, *, default_name: str, default_revision: str = "",
                   weights_sha256: str = "", device: str = "", dtype: str = ""):
    """The ModelIdentity every answer carries: name, revision and smoke flag from the folder's card."""
    from archivetag.v1 import common_pb2

    card = ModelCard.read(folder)
    return common_pb2.ModelIdentity(
        family=family,
        name=card.name if card else default_name,
        revision=(card.revision if card else "") or default_revision,
        weights_sha256=weights_sha256,
        device=device,
        dtype=dtype,
        smoke=bool(card and card.smoke),
    )
