"""Export a SigLIP (or SigLIP 2 FixRes) checkpoint into the folder the service serves (see layout.py).

The vision tower goes to ONNX (checked against torch), the text tower too with its tokenizer as a
`tokenizers` file (token ids checked against transformers' tokenizer, embeddings against torch), so
the service embeds any text at run time without torch; the classes' prompt ensembles become
text embeddings (tokenized with padding="max_length" at the model's length, as SigLIP was
trained), and a manifest stamps everything with the model it came from, with a probe image
and its embedding so the service can prove at start that nothing drifted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from archivetag.runtime.checksums import sha256_file
from archivetag.runtime.model_card import ModelCard
from archivetag_siglip import layout
from archivetag_siglip.layout import Preprocessor, write_json
from archivetag_siglip.prompts import load_classes, validate_classes

log = logging.getLogger("archivetag.siglip.export")

MAX_ABS_DIFF = 1e-4  # ONNX vs torch image embeddings, on export
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


class ExportError(RuntimeError):
    """The checkpoint cannot be exported; the message says why."""


# -- where the checkpoint comes from ----------------------------------------------------------
def resolve_source(src: str) -> tuple[Path, str | None]:
    """A local folder for src (downloading a hub id when online), and the hub commit if known."""
    path = Path(src).expanduser()
    if path.is_dir():
        return path, hub_commit_of(path)
    try:
        from huggingface_hub import snapshot_download

        local = Path(snapshot_download(src))
    except Exception as exc:  # noqa: BLE001 - the hub client raises many kinds; all mean "not here"
        raise ExportError(f"{src!r} is not a folder and could not be fetched from the hub: {exc}") from None
    return local, hub_commit_of(local)


def hub_commit_of(folder: Path) -> str | None:
    """The hub commit of a downloaded snapshot: from the cache path or local_dir metadata."""
    match = re.search(r"snapshots/([0-9a-f]{40})", str(folder.resolve()))
    if match:
        return match.group(1)
    metadata = folder / ".cache" / "huggingface" / "download" / "config.json.metadata"
    if metadata.exists():
        first = metadata.read_text(encoding="utf-8").splitlines()[:1]
        if first and re.fullmatch(r"[0-9a-f]{40}", first[0].strip()):
            return first[0].strip()
    return None


def fingerprint(folder: Path) -> str:
    """SHA-256 over config.json and the weight files: the model's identity when no commit is known."""
    digest = hashlib.sha256()
    files = [folder / "config.json"] + sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    for file in files:
        if file.exists():
            digest.update(file.name.encode() + b"\0" + sha256_file(file).encode() + b"\n")
    return digest.hexdigest()


# -- the parts --------------------------------------------------------------------------------
def image_settings(folder: Path) -> dict[str, Any]:
    """Resize/rescale/normalise exactly as the model's own image processor does."""
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    processor = SiglipImageProcessorPil.from_pretrained(str(folder))
    size = processor.size
    height = size.get("height") or size.get("shortest_edge")
    width = size.get("width") or size.get("shortest_edge")
    resample = int(processor.resample)
    return {
        "size": [int(height), int(width)],
        "resample": layout.RESAMPLE_NAMES[resample],
        "do_resize": bool(processor.do_resize),
        "do_rescale": bool(processor.do_rescale),
        "rescale_factor": float(processor.rescale_factor),
        "do_normalize": bool(processor.do_normalize),
        "mean": [float(v) for v in processor.image_mean],
        "std": [float(v) for v in processor.image_std],
        "processor": "SiglipImageProcessor",
    }


def reference_pixels(folder: Path, images: list):
    """Pixel values from transformers' own processor (PIL backend), for the export checks."""
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    processor = SiglipImageProcessorPil.from_pretrained(str(folder))
    return processor(images=images, return_tensors="pt")["pixel_values"]


def text_max_length(model) -> int:
    return int(model.config.text_config.max_position_embeddings)


def class_embeddings(model, tokenizer, classes: dict[str, list[str]]) -> np.ndarray:
    """(C, D): per class the mean of its prompts' normalised embeddings, renormalised."""
    import torch

    max_length = text_max_length(model)
    rows = []
    with torch.no_grad():
        for prompts in classes.values():
            tokens = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                               return_tensors="pt")
            features = model.get_text_features(input_ids=tokens["input_ids"]).pooler_output
            features = torch.nn.functional.normalize(features.float(), dim=-1)
            rows.append(torch.nn.functional.normalize(features.mean(0), dim=-1))
    return torch.stack(rows).numpy().astype(np.float32)


# -- the text tower ---------------------------------------------------------------------------
# Strings the exporter checks token for token against transformers (and the service re-checks at start):
# case, punctuation, whitespace, non-ASCII, special tokens, over-long.
PROBE_TEXTS = (
    "a photo of a hospital.",
    "An OPERATING theatre!!",
    "  staircase   with\tgraffiti ",
    "Café Müller — Zürich, 1920s",
    "ΟΔΟΣ ΣΤΑΘΜΟΣ",
    "病院の廊下",
    "it's a \"derelict\" asylum (1890)",
    "</s> after eos",
    "x <unk> y",
    "▁leading▁underscore▁",
    "!!!",
    "a very long description of an abandoned sanatorium " * 12,
)
GEMMA_TOKENIZERS = ("GemmaTokenizer", "GemmaTokenizerFast", "Siglip2Tokenizer")


def load_text_tokenizer(folder: Path):
    """The transformers tokenizer whose tokens the service reproduces.

    SigLIP: what AutoTokenizer loads (SiglipTokenizer). SigLIP 2 FixRes checkpoints declare a GemmaTokenizer,
    which does not lower-case; SigLIP 2 was trained on lower-cased text, so transformers' own Siglip2Tokenizer
    (the Gemma tokenizer with lower-casing) is used, with the checkpoint's padding side."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if type(tokenizer).__name__ in GEMMA_TOKENIZERS:
        from transformers.models.siglip2.tokenization_siglip2 import Siglip2Tokenizer

        tokenizer = Siglip2Tokenizer.from_pretrained(str(folder), padding_side=tokenizer.padding_side)
    return tokenizer


def write_text_tokenizer(tokenizer, dest: Path, max_length: int):
    """The tokenizer as a `tokenizers` JSON file in dest, and how to use it (text.TokenizerSpec)."""
    from archivetag_siglip.text import SIGLIP_SCHEME, TOKENIZERS_SCHEME, TokenizerSpec

    name = type(tokenizer).__name__
    if name == "SiglipTokenizer":
        from transformers.convert_slow_tokenizer import SpmConverter

        backend = SpmConverter(tokenizer).converted()
        scheme = SIGLIP_SCHEME
        specials = tuple(sorted((str(t.content), int(i)) for i, t in tokenizer.added_tokens_decoder.items()
                                if t.special))
        lowercase = bool(getattr(tokenizer, "do_lower_case", True))
    elif hasattr(tokenizer, "backend_tokenizer"):
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        scheme, specials, lowercase = TOKENIZERS_SCHEME, (), "Lowercase" in str(backend.normalizer)
    else:
        raise ExportError(f"the checkpoint's tokenizer {name} cannot be served without transformers "
                          "(SiglipTokenizer and `tokenizers`-backed tokenizers such as SigLIP 2's can)")
    backend.no_padding()
    backend.no_truncation()
    (dest / layout.TOKENIZER).write_text(backend.to_str(), encoding="utf-8")
    return TokenizerSpec(
        file=layout.TOKENIZER, scheme=scheme, max_length=max_length, pad_id=int(tokenizer.pad_token_id),
        eos_id=int(tokenizer.eos_token_id), pad_token=str(tokenizer.pad_token),
        padding_side=str(tokenizer.padding_side), lowercase=lowercase, special_tokens=specials,
    )


def reference_ids(tokenizer, texts, max_length: int) -> np.ndarray:
    """Token ids as transformers gives them (padding="max_length", truncation)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SiglipTokenizer warns about a text that already ends with </s>
        ids = tokenizer(list(texts), padding="max_length", max_length=max_length, truncation=True)["input_ids"]
    return np.asarray(ids, dtype=np.int64)


class _TextTower:
    """The module exported: input_ids -> what SiglipModel.get_text_features pools (not normalised)."""

    @staticmethod
    def build(model):
        import torch

        class TextTower(torch.nn.Module):
            def __init__(self, text_model):
                super().__init__()
                self.text_model = text_model

            def forward(self, input_ids):
                return self.text_model(input_ids=input_ids).pooler_output

        return TextTower(model.text_model).eval()


def export_text_onnx(model, max_length: int, path: Path, exporter: str = "dynamo") -> str:
    """Write the text tower to path: input_ids (batch, max_length) int64 -> text_embeds; returns the exporter."""
    import torch

    tower = _TextTower.build(model)
    example = torch.ones(2, max_length, dtype=torch.int64)
    if exporter == "dynamo":
        try:
            from torch.export import Dim

            with torch.no_grad():
                torch.onnx.export(
                    tower, (example,), str(path), input_names=["input_ids"], output_names=["text_embeds"],
                    dynamic_shapes={"input_ids": {0: Dim("batch")}}, opset_version=18, dynamo=True,
                    external_data=False, verbose=False,
                )
            return "dynamo"
        except Exception as exc:  # noqa: BLE001 - fall back to the TorchScript exporter, and say so
            log.warning("dynamo ONNX export of the text tower failed (%s: %s); using the TorchScript exporter",
                        type(exc).__name__, exc)
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            tower, (example,), str(path), input_names=["input_ids"], output_names=["text_embeds"],
            dynamic_axes={"input_ids": {0: "batch"}, "text_embeds": {0: "batch"}}, opset_version=18, dynamo=False,
        )
    return "torchscript"


def export_text_tower(model, tokenizer, dest: Path, exporter: str = "dynamo") -> dict[str, Any]:
    """The text tower (ONNX) and its tokenizer, checked against transformers; the manifest's "text_tower"."""
    import torch

    from archivetag_siglip.text import TextTokenizer, TextTower

    max_length = text_max_length(model)
    spec = write_text_tokenizer(tokenizer, dest, max_length)
    served = TextTokenizer(dest, spec)
    expected_ids = reference_ids(tokenizer, PROBE_TEXTS, max_length)
    ours = served(list(PROBE_TEXTS))
    if not np.array_equal(ours, expected_ids):
        bad = [t for t, a, b in zip(PROBE_TEXTS, ours, expected_ids) if not np.array_equal(a, b)]
        raise ExportError(f"the exported tokenizer ({spec.scheme}) disagrees with transformers' "
                          f"{type(tokenizer).__name__} on {bad!r}")
    onnx_path = dest / layout.TEXT_ONNX
    used = export_text_onnx(model, max_length, onnx_path, exporter)
    tower = TextTower(onnx_session(onnx_path), served)
    with torch.no_grad():
        reference = model.get_text_features(input_ids=torch.from_numpy(expected_ids)).pooler_output.numpy()
    reference = reference / np.maximum(np.linalg.norm(reference, axis=-1, keepdims=True), 1e-12)
    got = tower.embed_ids(ours)
    worst = min(cosine(a, b) for a, b in zip(reference, got))
    if worst < 0.9999:
        raise ExportError(f"the ONNX text tower disagrees with torch (cosine {worst:.6f} < 0.9999)")
    return {
        "file": layout.TEXT_ONNX,
        "sha256": sha256_file(onnx_path),
        "input": "input_ids",
        "output": "text_embeds",
        "exporter": used,
        "tokenizer": {**spec.to_dict(), "sha256": sha256_file(dest / layout.TOKENIZER),
                      "class": type(tokenizer).__name__},
        "min_cosine_vs_torch": worst,
        "probe": {"texts": list(PROBE_TEXTS), "input_ids": ours.tolist(),
                  "embeddings": [[float(v) for v in row] for row in reference]},
    }


class _VisionTower:
    """The module exported: pixel_values -> what SiglipModel.get_image_features pools."""

    @staticmethod
    def build(model):
        import torch

        class VisionTower(torch.nn.Module):
            def __init__(self, vision_model):
                super().__init__()
                self.vision_model = vision_model

            def forward(self, pixel_values):
                return self.vision_model(pixel_values=pixel_values).pooler_output

        return VisionTower(model.vision_model).eval()


def export_vision_onnx(model, size: tuple[int, int], path: Path, exporter: str = "dynamo") -> str:
    """Write the vision tower to path with a dynamic batch axis; returns the exporter used."""
    import torch

    tower = _VisionTower.build(model)
    example = torch.zeros(2, 3, *size)
    if exporter == "dynamo":
        try:
            from torch.export import Dim

            with torch.no_grad():
                torch.onnx.export(
                    tower, (example,), str(path), input_names=["pixel_values"], output_names=["image_embeds"],
                    dynamic_shapes={"pixel_values": {0: Dim("batch")}}, opset_version=18, dynamo=True,
                    external_data=False, verbose=False,
                )
            return "dynamo"
        except Exception as exc:  # noqa: BLE001 - fall back to the TorchScript exporter, and say so
            log.warning("dynamo ONNX export failed (%s: %s); using the TorchScript exporter", type(exc).__name__, exc)
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            tower, (example,), str(path), input_names=["pixel_values"], output_names=["image_embeds"],
            dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}}, opset_version=18,
            dynamo=False,
        )
    return "torchscript"


def export_vision_torch(model, dest: Path) -> dict[str, Any]:
    """The vision tower's weights for the torch runtime (torch_runtime.py): the checkpoint's own vision model
    (SiglipModel.vision_model, a SiglipVisionModel, the module vision.onnx was exported from), saved as
    config.json + model.safetensors in dest/vision_torch. The manifest's "vision_torch" records the files'
    SHA-256; the service re-embeds the probe through it before serving."""
    import shutil

    target = dest / layout.VISION_TORCH
    shutil.rmtree(target, ignore_errors=True)
    model.vision_model.save_pretrained(str(target))
    files = sorted(p.name for p in target.iterdir() if p.is_file())
    return {"folder": layout.VISION_TORCH, "class": "SiglipVisionModel", "output": "pooler_output",
            "files": {name: sha256_file(target / name) for name in files}}


def onnx_session(path: Path, threads: int = 0):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_embed(session, pixels: np.ndarray) -> np.ndarray:
    return session.run(["image_embeds"], {"pixel_values": np.ascontiguousarray(pixels, dtype=np.float32)})[0]


def check_onnx_against_torch(model, session, size: tuple[int, int]) -> float:
    """Max abs difference of image embeddings on a batch the export never saw; fails above MAX_ABS_DIFF."""
    import torch

    generator = torch.Generator().manual_seed(1234)
    pixels = torch.rand(3, 3, *size, generator=generator) * 2 - 1  # batch 3: the axis really is dynamic
    with torch.no_grad():
        expected = model.get_image_features(pixel_values=pixels).pooler_output.numpy()
    got = onnx_embed(session, pixels.numpy())
    diff = float(np.abs(expected - got).max())
    if not diff <= MAX_ABS_DIFF:
        raise ExportError(f"the ONNX vision tower differs from torch by {diff:.2e} (limit {MAX_ABS_DIFF:.0e})")
    return diff


def quantize_int8(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # reduce_range: 7-bit weights, so the u8s8 kernels of CPUs without VNNI (AVX2, most AVX-512) cannot
    # saturate; with full range the int8 tower drifted to cosine 0.95 from fp32 on an AVX2 EPYC.
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, reduce_range=True, per_channel=True)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))


def normalized(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v / max(float(np.linalg.norm(v)), 1e-12)


# -- the whole export -------------------------------------------------------------------------
def export_folder(src: str, dest: Path, model_id: str | None = None, classes: dict[str, list[str]] | Path | None = None,
                  int8: bool = False, exporter: str = "dynamo", text_tower: bool = True) -> dict[str, Any]:
    """Export src (hub id or folder) into dest; returns the manifest written."""
    import torch
    import transformers
    from transformers import SiglipModel

    started = time.monotonic()
    for noisy in ("onnx_ir", "onnxscript"):  # per-pass INFO lines from the ONNX optimiser
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger(noisy).level))
    folder, commit = resolve_source(src)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
    if config.get("model_type") not in (None, "siglip"):
        raise ExportError(f"{src}: model_type {config.get('model_type')!r} is not a SigLIP (siglip) checkpoint; "
                          "SigLIP 2 NaFlex checkpoints are not supported, FixRes ones (google/siglip2-*-patch16-224 "
                          "and the like) are")
    class_prompts = validate_classes(classes) if isinstance(classes, dict) else load_classes(classes)
    model_fingerprint = fingerprint(folder)
    identity = {
        "id": model_id or (src if not Path(src).expanduser().is_dir() else folder.resolve().name),
        "revision": commit or f"sha256:{model_fingerprint[:16]}",
        "fingerprint": model_fingerprint,
    }

    torch.manual_seed(0)
    model = SiglipModel.from_pretrained(str(folder), dtype=torch.float32).eval()
    tokenizer = load_text_tokenizer(folder)
    image = image_settings(folder)
    size = tuple(image["size"])

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / layout.MANIFEST).unlink(missing_ok=True)  # a half-written folder must not look complete

    # Vision tower, checked against torch.
    onnx_path = dest / layout.VISION_ONNX
    used = export_vision_onnx(model, size, onnx_path, exporter)
    session = onnx_session(onnx_path)
    max_diff = check_onnx_against_torch(model, session, size)

    # Probe: transformers' processor + torch is the reference; our preprocessing + ONNX must agree.
    probe = layout.probe_image()
    probe.save(dest / layout.PROBE_IMAGE, format="PNG")
    with Image.open(dest / layout.PROBE_IMAGE) as stored:
        probe = stored.convert("RGB")
    with torch.no_grad():
        reference = model.get_image_features(pixel_values=reference_pixels(folder, [probe])).pooler_output[0].numpy()
    ours = onnx_embed(session, Preprocessor(image)(probe)[None])[0]
    if cosine(reference, ours) < 0.9999:
        raise ExportError(f"the service's preprocessing + ONNX disagree with transformers on the probe image "
                          f"(cosine {cosine(reference, ours):.6f})")
    probe_embedding = normalized(reference)

    # Text: prompt ensembles, padding="max_length".
    text = class_embeddings(model, tokenizer, class_prompts)
    logit_scale = float(model.logit_scale.detach().float().item())
    logit_bias = float(model.logit_bias.detach().float().item())
    probe_logits = (text.astype(np.float64) @ probe_embedding) * np.exp(logit_scale) + logit_bias
    tokenizer_settings = {"padding": "max_length", "max_length": text_max_length(model), "truncation": True,
                          "class": type(tokenizer).__name__}
    text_doc = {
        "format": layout.FORMAT,
        "model": identity,
        "tokenizer": tokenizer_settings,
        "ensemble": "mean of normalised prompt embeddings, renormalised",
        "classes": list(class_prompts),
        "prompts": class_prompts,
        "logit_scale": logit_scale,
        "logit_bias": logit_bias,
        "embeddings": [[float(v) for v in row] for row in text],
    }
    write_json(dest / layout.TEXT_EMBEDDINGS, text_doc)

    manifest: dict[str, Any] = {
        "format": layout.FORMAT,
        "model": identity,
        "image": image,
        "vision": {
            "file": layout.VISION_ONNX,
            "sha256": sha256_file(onnx_path),
            "input": "pixel_values",
            "output": "image_embeds",
            "embedding_dim": int(text.shape[1]),
            "opset": 18,
            "exporter": used,
            "max_abs_diff_vs_torch": max_diff,
        },
        "text": {
            "file": layout.TEXT_EMBEDDINGS,
            "sha256": sha256_file(dest / layout.TEXT_EMBEDDINGS),
            "tokenizer": tokenizer_settings,
        },
        "logit_scale": logit_scale,
        "logit_bias": logit_bias,
        "classes": class_prompts,
        "probe": {
            "file": layout.PROBE_IMAGE,
            "sha256": sha256_file(dest / layout.PROBE_IMAGE),
            "generator": "archivetag_siglip.layout.probe_image",
            "embedding": [float(v) for v in probe_embedding],
            "logits": [float(v) for v in probe_logits],
        },
        "exported_with": {"torch": torch.__version__, "transformers": transformers.__version__},
    }

    manifest["vision_torch"] = export_vision_torch(model, dest)

    if text_tower:
        manifest["text_tower"] = export_text_tower(model, tokenizer, dest, exporter)
    else:
        (dest / layout.TEXT_ONNX).unlink(missing_ok=True)
        (dest / layout.TOKENIZER).unlink(missing_ok=True)

    int8_path = dest / layout.VISION_INT8_ONNX
    if int8:
        quantize_int8(onnx_path, int8_path)
        int8_embedding = normalized(onnx_embed(onnx_session(int8_path), Preprocessor(image)(probe)[None])[0])
        manifest["vision_int8"] = {
            "file": layout.VISION_INT8_ONNX,
            "sha256": sha256_file(int8_path),
            "quantization": "onnxruntime quantize_dynamic, QInt8 weights, per channel, reduced range",
            "probe_embedding": [float(v) for v in int8_embedding],
            "probe_cosine_to_fp32": cosine(int8_embedding, probe_embedding),
        }
    else:
        int8_path.unlink(missing_ok=True)

    write_json(dest / layout.MANIFEST, manifest)
    ModelCard(family="siglip", name=identity["id"], revision=identity["revision"],
              source=f"exported from {src}").write(dest)
    log.info("exported %s to %s in %.1f s (ONNX vs torch max abs diff %.1e)",
             identity["id"], dest, time.monotonic() - started, max_diff)
    return manifest
