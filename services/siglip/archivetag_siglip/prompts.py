"""View-type classes and their prompt ensembles.

Each class is described by several prompts; its text embedding is the mean of the prompts'
normalised embeddings, renormalised. A deployment may bring its own classes in a JSON or
YAML file: {"class name": ["prompt", ...], ...}.
"""

from __future__ import annotations

from pathlib import Path

from archivetag.datafile import DataFileError, read_json_or_yaml

DEFAULT_CLASSES: dict[str, list[str]] = {
    "interior": [
        "a photo of the interior of a building.",
        "a photo of a room inside an abandoned building.",
        "a photo taken indoors in a derelict house.",
        "a photo of a hallway inside an old building.",
        "a photo of an empty room with peeling walls.",
    ],
    "exterior": [
        "a photo of the exterior of a building.",
        "a photo of the facade of an abandoned building.",
        "a photo of a derelict house seen from the street.",
        "a photo of an old building from the outside.",
        "a photo of the front of a ruined factory.",
    ],
    "aerial": [
        "an aerial photo of a building.",
        "a drone photo of an abandoned site from above.",
        "a bird's eye view of a derelict building and its grounds.",
        "an aerial view of rooftops.",
        "a photo taken from the air of an old factory complex.",
    ],
    "detail": [
        "a close-up photo of a detail of a building.",
        "a close-up photo of peeling paint and rust.",
        "a detail photo of an old door handle.",
        "a close-up of a broken window frame.",
        "a macro photo of decaying wallpaper.",
    ],
}


class ClassesError(ValueError):
    """The classes file cannot be used."""


def load_classes(path: Path | None) -> dict[str, list[str]]:
    """Classes and prompts from a JSON or YAML file; the defaults when path is None."""
    if path is None:
        return {name: list(prompts) for name, prompts in DEFAULT_CLASSES.items()}
    try:
        data = read_json_or_yaml(path, "classes")
    except DataFileError as exc:
        raise ClassesError(str(exc)) from None
    return validate_classes(data, str(path))


def validate_classes(data, source: str = "classes") -> dict[str, list[str]]:
    if not isinstance(data, dict) or len(data) < 2:
        raise ClassesError(f"{source}: expected a mapping of at least two classes to lists of prompts")
    classes: dict[str, list[str]] = {}
    for name, prompts in data.items():
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(name, str) or not name.strip():
            raise ClassesError(f"{source}: class names must be non-empty strings")
        if name.strip().lower() == "unknown":
            raise ClassesError(f"{source}: 'unknown' is the service's answer below the threshold, not a class; "
                               "add an 'other' class with its own prompts instead")
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ClassesError(f"{source}: class {name!r} needs a non-empty list of prompt strings")
        classes[name.strip()] = [p.strip() for p in prompts]
    return classes
