"""Original-layout Florence-2 (microsoft/Florence-2-*, remote code) → native transformers layout.

Offline and without remote code: the state dict is renamed key by key (the table in
docs/models/florence.md), `image_projection` is transposed, the `<image>` token (51289)
is added and the embeddings are padded to 51328 rows; the config is rebuilt from the
original's (`dim_embed` → `embed_dim`, ...); the tokenizer gets Florence-2's special tokens
that the old remote processor added at run time. `to_original_state_dict` is the inverse,
used by the tests to write an original-layout checkpoint from a native model.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from archivetag.runtime.model_card import ModelCard
from archivetag_florence.layout import (
    IMAGE_TOKEN_ID,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NATIVE_VOCAB,
    ORIGINAL_VOCAB,
    VOCABULARY_FILE,
    build_processor,
    with_florence_tokens,
)

# (original pattern, native replacement), applied in order to every key; first match wins per rule set.
_BLOCK_RULES = [
    (r"\.(conv[12])\.fn\.dw\.", r".\1."),
    (r"\.spatial_block\.window_attn\.norm\.", ".spatial_block.norm1."),
    (r"\.spatial_block\.window_attn\.fn\.", ".spatial_block.window_attn."),
    (r"\.channel_block\.channel_attn\.norm\.", ".channel_block.norm1."),
    (r"\.channel_block\.channel_attn\.fn\.", ".channel_block.channel_attn."),
    (r"\.ffn\.norm\.", ".norm2."),
    (r"\.ffn\.fn\.net\.(fc[12])\.", r".ffn.\1."),
]
_INVERSE_BLOCK_RULES = [
    (r"\.(spatial_block|channel_block)\.(conv[12])\.", r".\1.\2.fn.dw."),
    (r"\.spatial_block\.norm1\.", ".spatial_block.window_attn.norm."),
    (r"\.spatial_block\.window_attn\.(?!norm\.)", ".spatial_block.window_attn.fn."),
    (r"\.channel_block\.norm1\.", ".channel_block.channel_attn.norm."),
    (r"\.channel_block\.channel_attn\.(?!norm\.)", ".channel_block.channel_attn.fn."),
    (r"\.norm2\.", ".ffn.norm."),
    (r"\.ffn\.(fc[12])\.", r".ffn.fn.net.\1."),
]
_PROJECTOR = {
    "image_proj_norm.": "model.multi_modal_projector.image_proj_norm.",
    "image_pos_embed.": "model.multi_modal_projector.image_position_embed.",
    "visual_temporal_embed.": "model.multi_modal_projector.visual_temporal_embed.",
}
# Keys of the original that carry nothing the native model keeps (tied copies, a zero bias).
_DROPPED = ("language_model.model.encoder.embed_tokens.weight", "language_model.model.decoder.embed_tokens.weight",
            "language_model.final_logits_bias")


class ConversionError(ValueError):
    """The source is not an original-layout Florence-2 this converter understands."""


def native_key(key: str) -> str | None:
    """The native name of an original key (None: dropped)."""
    if key in _DROPPED:
        return None
    if key.startswith("vision_tower.convs."):
        key = re.sub(r"^vision_tower\.convs\.(\d+)\.proj\.", r"vision_tower.convs.\1.conv.", key)
        return "model." + key
    if key.startswith("vision_tower.blocks."):
        for pattern, replacement in _BLOCK_RULES:
            key = re.sub(pattern, replacement, key)
        return "model." + key
    if key == "image_projection":
        return "model.multi_modal_projector.image_projection.weight"
    for prefix, native in _PROJECTOR.items():
        if key.startswith(prefix):
            return native + key[len(prefix):]
    if key.startswith("language_model.model."):
        return "model.language_model." + key[len("language_model.model."):]
    if key == "language_model.lm_head.weight":
        return "lm_head.weight"
    raise ConversionError(f"unknown original Florence-2 weight {key!r}")


def original_key(key: str) -> str | None:
    """The original name of a native key (None: not stored in the original layout)."""
    if key.startswith("model.vision_tower.convs."):
        return re.sub(r"^vision_tower\.convs\.(\d+)\.conv\.", r"vision_tower.convs.\1.proj.", key[len("model."):])
    if key.startswith("model.vision_tower.blocks."):
        key = key[len("model."):]
        for pattern, replacement in _INVERSE_BLOCK_RULES:
            key = re.sub(pattern, replacement, key)
        return key
    if key == "model.multi_modal_projector.image_projection.weight":
        return "image_projection"
    for prefix, native in _PROJECTOR.items():
        if key.startswith(native):
            return prefix + key[len(native):]
    if key.startswith("model.language_model."):
        return "language_model.model." + key[len("model.language_model."):]
    if key == "lm_head.weight":
        return "language_model.lm_head.weight"
    raise ConversionError(f"unknown native Florence-2 weight {key!r}")


def to_native_state_dict(original: dict) -> dict:
    import torch

    native = {}
    for key, tensor in original.items():
        if key == "language_model.final_logits_bias" and torch.count_nonzero(tensor):
            raise ConversionError("the checkpoint has a non-zero final_logits_bias, which native Florence-2 lacks")
        name = native_key(key)
        if name is None:
            continue
        if key == "image_projection":
            tensor = tensor.t()
        native[name] = tensor.contiguous()
    shared = native.get("model.language_model.shared.weight")
    if shared is None:
        raise ConversionError("the checkpoint has no language_model.model.shared.weight (token embeddings)")
    native["model.language_model.shared.weight"] = _pad_rows(shared, NATIVE_VOCAB)
    native.pop("lm_head.weight", None)  # tied to the embeddings in the native model
    return native


def to_original_state_dict(native: dict) -> dict:
    """The inverse mapping: what a microsoft/Florence-2 checkpoint of these weights holds."""
    original = {}
    for key, tensor in native.items():
        if key in ("model.language_model.encoder.embed_tokens.weight",
                   "model.language_model.decoder.embed_tokens.weight"):
            continue
        name = original_key(key)
        if key == "model.multi_modal_projector.image_projection.weight":
            tensor = tensor.t()
        original[name] = tensor.contiguous().clone()
    shared = original["language_model.model.shared.weight"][:ORIGINAL_VOCAB].clone()
    original["language_model.model.shared.weight"] = shared
    original["language_model.lm_head.weight"] = shared.clone()
    import torch

    original["language_model.final_logits_bias"] = torch.zeros(1, ORIGINAL_VOCAB)
    return original


def _pad_rows(weight, rows: int):
    """Embeddings padded to `rows`; new rows (the <image> token and padding) get the mean row."""
    import torch

    if weight.shape[0] >= rows:
        return weight[:rows]
    extra = weight.mean(dim=0, keepdim=True).expand(rows - weight.shape[0], -1)
    return torch.cat([weight, extra], dim=0)


# -- config ------------------------------------------------------------------------------

def is_original_config(config: dict) -> bool:
    vision = config.get("vision_config") or {}
    return bool(config.get("auto_map")) or vision.get("model_type") == "davit" or "dim_embed" in vision


def native_config(original: dict):
    """A Florence2Config rebuilt from an original config.json (as a dict)."""
    from transformers import BartConfig, Florence2Config, Florence2VisionConfig

    vision = original.get("vision_config") or {}
    if "dim_embed" not in vision:
        raise ConversionError("config.json has no vision_config.dim_embed: not an original-layout Florence-2")
    vision_config = Florence2VisionConfig(
        embed_dim=list(vision["dim_embed"]),
        num_heads=list(vision["num_heads"]),
        num_groups=list(vision["num_groups"]),
        depths=list(vision["depths"]),
        patch_size=list(vision.get("patch_size", (7, 3, 3, 3))),
        patch_stride=list(vision.get("patch_stride", (4, 2, 2, 2))),
        patch_padding=list(vision.get("patch_padding", (3, 1, 1, 1))),
        patch_prenorm=list(vision.get("patch_prenorm", (False, True, True, True))),
        window_size=vision.get("window_size", 12),
        drop_path_rate=vision.get("drop_path_rate", 0.1),
        projection_dim=vision.get("projection_dim", original.get("projection_dim", 768)),
        max_temporal_embeddings=(vision.get("visual_temporal_embedding") or {}).get("max_temporal_embeddings", 100),
        max_position_embeddings=(vision.get("image_pos_embed") or {}).get("max_pos_embeddings", 50),
    )
    known = set(BartConfig().to_dict())
    text = {k: v for k, v in (original.get("text_config") or {}).items() if k in known and k not in
            ("architectures", "auto_map", "transformers_version", "_name_or_path", "model_type")}
    text["vocab_size"] = NATIVE_VOCAB
    text_config = BartConfig(**text)
    return Florence2Config(
        vision_config=vision_config, text_config=text_config, image_token_id=IMAGE_TOKEN_ID,
        bos_token_id=text_config.bos_token_id, eos_token_id=text_config.eos_token_id,
        pad_token_id=text_config.pad_token_id, decoder_start_token_id=text_config.decoder_start_token_id,
    )


def read_original_state_dict(src: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    files = sorted(src.glob("*.safetensors"))
    if files:
        state = {}
        for file in files:
            state.update(load_file(str(file)))
        return state
    bins = sorted(src.glob("pytorch_model*.bin"))
    if not bins:
        raise ConversionError(f"{src} has no model.safetensors or pytorch_model.bin")
    state = {}
    for file in bins:
        state.update(torch.load(file, map_location="cpu", weights_only=True))
    return state


def convert_processor(src: Path, dst: Path) -> None:
    """The original's BART tokenizer and CLIP image settings → a native Florence2Processor."""
    from transformers import BartTokenizer

    try:
        tokenizer = with_florence_tokens(BartTokenizer.from_pretrained(str(src), local_files_only=True))
    except ValueError as exc:
        raise ConversionError(str(exc)) from None
    preprocessor_config = src / "preprocessor_config.json"
    settings = json.loads(preprocessor_config.read_text()) if preprocessor_config.exists() else {}
    build_processor(
        tokenizer, settings.get("size"), resample=settings.get("resample", 3),
        rescale_factor=settings.get("rescale_factor", 1 / 255), image_mean=settings.get("image_mean", IMAGENET_MEAN),
        image_std=settings.get("image_std", IMAGENET_STD), image_seq_length=settings.get("image_seq_length"),
    ).save_pretrained(str(dst))


def convert(src: Path, dst: Path) -> Path:
    """Write the native-layout checkpoint of the original-layout checkpoint in `src` into `dst`."""
    from transformers import Florence2ForConditionalGeneration

    src, dst = Path(src), Path(dst)
    config_path = src / "config.json"
    if not config_path.exists():
        raise ConversionError(f"{src} has no config.json")
    original_config = json.loads(config_path.read_text())
    if not is_original_config(original_config):
        raise ConversionError(f"{src} is not an original-layout Florence-2 (no auto_map / davit vision config); "
                              "native checkpoints need no conversion")
    config = native_config(original_config)
    state = to_native_state_dict(read_original_state_dict(src))
    model = Florence2ForConditionalGeneration(config)
    report = model.load_state_dict(state, strict=False)
    model.tie_weights()
    missing = sorted(k for k in report.missing_keys if not k.endswith("embed_tokens.weight") and k != "lm_head.weight")
    if missing or report.unexpected_keys:
        raise ConversionError(f"conversion left {len(missing)} weights missing (e.g. {missing[:3]}) and "
                              f"{len(report.unexpected_keys)} unexpected (e.g. {report.unexpected_keys[:3]})")
    dst.mkdir(parents=True, exist_ok=True)
    model.generation_config = _generation_config(src, original_config)
    model.config._name_or_path = original_config.get("_name_or_path") or src.name
    model.save_pretrained(str(dst))
    convert_processor(src, dst)
    if (src / VOCABULARY_FILE).exists():
        shutil.copyfile(src / VOCABULARY_FILE, dst / VOCABULARY_FILE)
    ModelCard(family="florence", name=model.config._name_or_path, source=f"converted from {src}").write(dst)
    return dst


def _generation_config(src: Path, original: dict):
    from transformers import GenerationConfig

    text = original.get("text_config") or {}
    settings = dict(bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2,
                    forced_bos_token_id=text.get("forced_bos_token_id", 0), forced_eos_token_id=2,
                    no_repeat_ngram_size=text.get("no_repeat_ngram_size", 3), num_beams=text.get("num_beams", 3),
                    early_stopping=text.get("early_stopping", True))
    if (src / "generation_config.json").exists():
        stored = json.loads((src / "generation_config.json").read_text())
        settings.update({k: v for k, v in stored.items() if k in settings})
    return GenerationConfig(**settings)
