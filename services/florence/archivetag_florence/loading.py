"""Loading a native-layout Florence-2 from a local folder, refusing anything that would be random.

`Florence2ForConditionalGeneration.from_pretrained` on an original-layout folder does not
raise: it returns a randomly initialised model with a warning. So the layout is checked
before loading, and the load report after: any missing or unexpected weight refuses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from archivetag.runtime.errors import ModelLoadError

CONVERT_HINT = "archivetag models convert-florence SRC DST"


@dataclass
class LoadedFlorence:
    model: object
    processor: object
    folder: Path


def check_layout(folder: Path) -> dict:
    """The folder's config.json, if it is a native Florence-2; ModelLoadError with the fix otherwise."""
    from archivetag_florence.convert import is_original_config

    config_path = folder / "config.json"
    if not folder.is_dir():
        raise ModelLoadError(f"no Florence-2 model folder at {folder}; run `archivetag models pull --only florence` "
                             f"(or `archivetag models smoke --only florence` for a random test model)")
    if not config_path.exists():
        raise ModelLoadError(f"{folder} has no config.json: not a Florence-2 checkpoint")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{config_path} cannot be read: {exc}") from None
    if is_original_config(config):
        raise ModelLoadError(
            f"{folder} holds an original-layout Florence-2 (microsoft/Florence-2-*: remote code, davit vision "
            f"config); it would load with random weights. Convert it once, offline: `{CONVERT_HINT}` "
            f"(e.g. `archivetag models convert-florence {folder} {folder}-native`), or pull a "
            f"florence-community/Florence-2-* checkpoint"
        )
    if config.get("model_type") != "florence2":
        raise ModelLoadError(f"{config_path} has model_type {config.get('model_type')!r}, not 'florence2'")
    return config


def check_loading_report(info: dict, folder: Path) -> None:
    """Refuse on any missing, unexpected or mis-shaped weight (the model would be partly random)."""
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(str(k) for k in (info.get(kind) or ()))
        if keys:
            problems.append(f"{len(keys)} {kind.replace('_', ' ')} (e.g. {', '.join(keys[:3])})")
    if problems:
        raise ModelLoadError(
            f"the weights in {folder} do not match the native Florence-2 architecture: {'; '.join(problems)}. "
            f"An original-layout checkpoint needs `{CONVERT_HINT}`"
        )


def load_florence(folder: Path, device, dtype, attn_implementation: str = "sdpa") -> LoadedFlorence:
    """Model (eval, on device, in dtype) and processor from `folder`, never from the hub, never remote code."""
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    folder = Path(folder)
    check_layout(folder)
    try:
        model, info = Florence2ForConditionalGeneration.from_pretrained(
            str(folder), local_files_only=True, attn_implementation=attn_implementation,
            dtype=dtype, output_loading_info=True,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"Florence-2 weights in {folder} cannot be loaded: {type(exc).__name__}: {exc}") from None
    check_loading_report(info, folder)
    try:
        processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(
            f"the Florence-2 processor in {folder} cannot be loaded: {type(exc).__name__}: {exc}") from None
    if type(processor).__name__ != "Florence2Processor":
        raise ModelLoadError(f"{folder} has a {type(processor).__name__}, not a Florence2Processor")
    model.to(device).eval()
    return LoadedFlorence(model=model, processor=processor, folder=folder)
