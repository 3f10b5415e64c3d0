"""JSON or YAML files a person writes (label sets, view-type classes), read one way with clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class DataFileError(ValueError):
    """The file cannot be read, or is not valid JSON / YAML; the message names the file."""


def read_json_or_yaml(path: Path | str, what: str) -> Any:
    """The data in a .json file, or in a .yaml / .yml one (PyYAML, when installed). what: for the messages."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataFileError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    if file.suffix.lower() not in {".yaml", ".yml"}:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataFileError(f"{path} is not valid JSON: {exc}") from None
    try:
        import yaml
    except ImportError:
        raise DataFileError(f"{path}: reading YAML needs the PyYAML package; or write the {what} as JSON") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DataFileError(f"{path} is not valid YAML: {exc}") from None
