"""Label sets: the archive's own words, scored per photo by SigLIP at request time (docs/search.md).

A label set file (JSON, or YAML with PyYAML installed):

    {"template": "a photo of a {}.",                    # optional; "{}" is the label's name
     "labels": {"hospital": ["a photo of a hospital ward.", ...],   # prompts describing the label
                "farm": []}}                             # no prompts: the template filled with the name

or just a list of names (each scored with the template). The package ships an example of place
types: `archivetag tag --labels place-types` (a name without a suffix is a bundled set).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from archivetag.bundled import data_file
from archivetag.datafile import DataFileError, read_json_or_yaml
from archivetag.v1 import view_type_pb2

BUNDLED = data_file("labels")


class LabelsError(ValueError):
    """The label set file cannot be used; the message says why."""


def bundled_sets() -> list[str]:
    return sorted(p.stem for p in BUNDLED.glob("*.json"))


def resolve(path: Path | str) -> Path:
    """A file, or the name of a bundled set ("place-types")."""
    candidate = Path(path).expanduser()
    if candidate.exists() or candidate.suffix:
        return candidate
    bundled = BUNDLED / f"{candidate.name}.json"
    if bundled.exists():
        return bundled
    raise LabelsError(f"{path}: no such file, and not a bundled label set ({', '.join(bundled_sets())})")


def parse(data, source: str = "labels") -> view_type_pb2.LabelSet:
    """A LabelSet from the file's parsed content, checked for what the client can see."""
    template = ""
    if isinstance(data, dict) and "labels" in data:
        template = data.get("template") or ""
        data = data["labels"]
    if isinstance(data, list):
        data = {name: [] for name in data}
    if not isinstance(data, dict) or not data:
        raise LabelsError(f"{source}: expected {{\"labels\": {{\"name\": [\"prompt\", ...]}}}} or a list of names")
    if not isinstance(template, str) or (template and "{}" not in template):
        raise LabelsError(f"{source}: the template must be a string holding {{}} for the label's name")
    labels = []
    for name, prompts in data.items():
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(name, str) or not name.strip():
            raise LabelsError(f"{source}: label names must be non-empty strings")
        if not isinstance(prompts, list) or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise LabelsError(f"{source}: label {name!r} needs a list of non-empty prompt strings (or [])")
        labels.append(view_type_pb2.Label(name=name.strip(), prompts=[p.strip() for p in prompts]))
    return view_type_pb2.LabelSet(labels=labels, template=template)


def load(path: Path | str) -> view_type_pb2.LabelSet:
    try:
        data = read_json_or_yaml(resolve(path), "labels")
    except DataFileError as exc:
        raise LabelsError(str(exc)) from None
    return parse(data, str(path))


_loaded: dict[str, view_type_pb2.LabelSet] = {}


def for_settings(settings) -> view_type_pb2.LabelSet | None:
    """The --labels set of a command's settings (read once per run), or None without one."""
    path = getattr(settings, "labels", None)
    if not path:
        return None
    key = str(path)
    if key not in _loaded:
        _loaded[key] = load(path)
    return _loaded[key]


def digest(labels: view_type_pb2.LabelSet | None) -> str:
    """A short key for a label set ('' for none): results tagged with other labels are not the same results."""
    if labels is None or not labels.labels:
        return ""
    return hashlib.sha256(labels.SerializeToString(deterministic=True)).hexdigest()[:16]
