"""RAM++ checkpoints: the official `.pth` layout in, a model-only safetensors file out.

Official layout (docs/models/rampp.md §2, §9): `torch.load(path)` gives `{'model': state_dict, ...}` with 402
keys named after the original Swin code. Our model uses timm's Swin, whose names differ in one
place (patch merging sits at the start of the next stage), and recomputes the 35 position-index
and shift-mask buffers. `official_name` / `model_name` translate between the two; every check
speaks the official names, so an error names the key a user can find in their file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from archivetag.runtime.checksums import sha256_file
from archivetag.runtime.errors import ModelLoadError
from archivetag_rampp.model import FULL, RamPlus, RamPlusConfig, tiny_config

# Buffers the official file carries and the model recomputes (dropped on load, §2 step 1).
RECOMPUTED = ("relative_position_index", "attn_mask")
_DOWNSAMPLE = re.compile(r"^visual_encoder\.layers\.(\d+)\.downsample\.")
_OURS_PREFIX = "visual_encoder.swin."
_OFFICIAL_PREFIX = "visual_encoder."
CONFIG_METADATA_KEY = "rampp_config"


def _shift_downsample(key: str, step: int) -> str:
    match = _DOWNSAMPLE.match(key)
    if not match:
        return key
    return f"visual_encoder.layers.{int(match.group(1)) + step}.downsample." + key[match.end():]


def official_name(model_key: str) -> str:
    """Our state-dict key → the official checkpoint's key."""
    if model_key.startswith(_OURS_PREFIX):
        return _shift_downsample(_OFFICIAL_PREFIX + model_key[len(_OURS_PREFIX):], -1)
    return model_key


def model_name(official_key: str) -> str | None:
    """The official checkpoint's key → ours; None for buffers we recompute."""
    if any(part in official_key for part in RECOMPUTED):
        return None
    key = official_key.replace("vision_multi", "tagging_head")  # legacy name (§2 step 2)
    if key.startswith(_OFFICIAL_PREFIX):
        return _OURS_PREFIX + _shift_downsample(key, +1)[len(_OFFICIAL_PREFIX):]
    return key


def required_official_shapes(model: RamPlus) -> dict[str, tuple[int, ...]]:
    """What a checkpoint must hold for this model, in official names and shapes."""
    return {official_name(k): tuple(v.shape) for k, v in model.state_dict().items()}


def official_state_dict(model: RamPlus) -> dict[str, torch.Tensor]:
    """The model's weights in the official layout, recomputed buffers included (as the released file has them)."""
    state = {official_name(k): v for k, v in model.state_dict().items()}
    for name, buffer in model.named_buffers():
        if name.startswith(_OURS_PREFIX) and name.rsplit(".", 1)[-1] in RECOMPUTED and buffer is not None:
            state[official_name(name)] = buffer
    return state


def _read_pth(path: Path) -> dict[str, torch.Tensor]:
    try:
        # weights_only: never unpickle arbitrary objects; mmap: the 3 GB file is not read whole.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - truncated, not a zip, pickled code: all unusable
        raise ModelLoadError(
            f"{path} is not a readable RAM++ checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "download it again with `archivetag models pull --only rampp`"
        ) from None
    if isinstance(checkpoint, dict) and "model" in checkpoint and isinstance(checkpoint["model"], dict):
        return checkpoint["model"]  # other top-level entries (optimizer, config, epoch) are not needed
    raise ModelLoadError(
        f"{path} has no 'model' entry: not the official RAM++ checkpoint layout {{'model': state_dict}}")


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], RamPlusConfig, dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{path} is not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    if CONFIG_METADATA_KEY not in metadata:
        raise ModelLoadError(f"{path} was not written by `archivetag models convert-rampp` (no {CONFIG_METADATA_KEY})")
    return state, RamPlusConfig.from_json(json.loads(metadata[CONFIG_METADATA_KEY])), metadata


def architecture_of(state: dict[str, torch.Tensor]) -> RamPlusConfig:
    """Which known architecture an official-layout state holds: the released swin_l/384, or the tiny
    size of smoke and test checkpoints (`tiny_config`, 3 descriptions per tag). The strict check
    that follows decides; anything unknown is checked against the released one and refused there."""
    label_embed = state.get("label_embed")
    if label_embed is None or label_embed.ndim != 2:
        return FULL
    rows, width = label_embed.shape
    tiny = tiny_config(rows // 3)
    if (rows, width) != (FULL.num_tags * FULL.descriptions_per_tag, FULL.embed_width) and rows % 3 == 0 \
            and width == tiny.embed_width:
        return tiny
    return FULL


def check_official_state(state: dict[str, torch.Tensor], model: RamPlus, source: Path) -> list[str]:
    """Strict check (stricter than upstream, §2): every weight present with its shape.

    `state` is in our names (model_name applied); errors speak official names. Returns the
    unexpected keys (logged, not fatal: upstream ignores them too)."""
    required = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [official_name(k) for k in required if k not in state]
    if missing:
        hint = " (the tag embeddings: without them every tag would be garbage)" if "label_embed" in missing else ""
        raise ModelLoadError(
            f"{source}: {len(missing)} weight(s) missing, first {missing[0]!r}{hint}; "
            "not a complete RAM++ swin_l checkpoint"
        )
    for key, shape in required.items():
        if tuple(state[key].shape) != shape:
            raise ModelLoadError(f"{source}: weight {official_name(key)!r} has shape {list(state[key].shape)}, "
                                 f"expected {list(shape)}")
    return sorted(official_name(k) for k in state if k not in required)


def load_model(path: Path, config: RamPlusConfig | None = None) -> tuple[RamPlus, list[str], dict[str, str]]:
    """A RAM++ model with the weights of `path` (.pth official layout or converted .safetensors).

    config: the architecture of a .pth file (default: the known one its shapes match, see
    architecture_of); a safetensors file records its own. Returns the model, the unexpected keys
    that were ignored, and the file's metadata (safetensors only; empty for .pth)."""
    if path.suffix == ".safetensors":
        state, config, metadata = _read_safetensors(path)
    else:
        state, metadata = _read_pth(path), {}
        config = config or architecture_of(state)
    ours = {name: tensor for key, tensor in state.items() if (name := model_name(key)) is not None}
    with torch.device("meta"):
        model = RamPlus(config)
    unexpected = check_official_state(ours, model, path)
    model.load_state_dict(ours, strict=False, assign=True)  # strict=False: unexpected keys are ignored
    _rebuild_buffers(model)
    return model.eval(), unexpected, metadata


def _rebuild_buffers(model: RamPlus) -> None:
    """Built on the meta device, timm's position-index and shift-mask buffers are recomputed on the CPU."""
    for module in model.modules():
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer is not None and buffer.is_meta:
                setattr(module, name, torch.empty_like(buffer, device="cpu"))
    for module in model.modules():
        init_buffers = getattr(module, "_init_buffers", None)  # timm's hook that fills index tables and shift masks
        if init_buffers is not None:
            init_buffers()



def save_safetensors(model: RamPlus, path: Path, source_sha256: str = "",
                     extra_metadata: dict[str, str] | None = None) -> None:
    """Model-only file that loads in seconds; the config and provenance go in its metadata."""
    state = {official_name(k): v.contiguous() for k, v in model.state_dict().items()}
    metadata = {CONFIG_METADATA_KEY: json.dumps(model.config.to_json()), **(extra_metadata or {})}
    if source_sha256:
        metadata["source_sha256"] = source_sha256
    save_file(state, str(path), metadata=metadata)


def convert(pth: Path, out: Path, config: RamPlusConfig | None = None) -> list[str]:
    """Official .pth → model-only safetensors (strictly checked on the way). Returns ignored keys."""
    model, unexpected, _ = load_model(pth, config)
    save_safetensors(model, out, source_sha256=sha256_file(pth))
    return unexpected
