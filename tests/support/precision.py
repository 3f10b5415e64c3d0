"""How far a faster precision (--dtype int8 or bfloat16 on a CPU) answers from float32, through the services' own
backends on the same model folder: what tests/florence/test_precision.py and tests/rampp/test_precision.py assert,
and what benchmarks/cpu_precision_bench.py measures at more photos.

Random weights make this a harsh check: a random decoder's next-token choices are near ties, so one small
difference changes the rest of a caption, which a trained model's confident choices would not. The teacher-forced
agreement (both fed the float32 caption, is each next token the same) is the measure that does not compound.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from archivetag.v1 import tagger_pb2

SAMPLES = Path(__file__).resolve().parents[2] / "src" / "archivetag" / "samples"


def sample_photos(n: int) -> list[Image.Image]:
    """The shipped sample photos, then varied synthetic ones (blotches at several scales), `n` in all."""
    from archivetag.runtime.images import decode_image

    photos = [decode_image(p.read_bytes()) for p in sorted(SAMPLES.iterdir()) if p.suffix != ".md"]
    rng = np.random.default_rng(0)
    while len(photos) < n:
        cells = int(rng.integers(4, 32))
        blotches = (rng.random((cells, cells, 3)) * 255).astype(np.uint8)
        photos.append(Image.fromarray(blotches).resize((640, 480), Image.Resampling.BICUBIC))
    return photos[:n]


def backend(family: str, models: Path, dtype: str, *args: str):
    from archivetag.cli import parse_serve_settings
    from archivetag.runtime import registry, specs

    settings = parse_serve_settings(family, "--models", str(models), "--dtype", dtype, *args)
    created = specs.load(registry.server(family).app)(settings)
    created.load()
    return created


def _tag_sets_jaccard(a: list[list[tuple[str, float]]], b: list[list[tuple[str, float]]]) -> list[float]:
    out = []
    for x, y in zip(a, b):
        sx, sy = {n for n, _ in x}, {n for n, _ in y}
        out.append(len(sx & sy) / len(sx | sy) if sx | sy else 1.0)
    return out


def florence_agreement(reference, other, photos: list[Image.Image]) -> dict:
    """Two loaded Florence-2 backends (float32 and another precision) on the same photos."""
    ref_items = [reference.prepare(p, tagger_pb2.TagRequest()) for p in photos]
    items = [other.prepare(p, tagger_pb2.TagRequest()) for p in photos]
    cosines, forced, identical, seconds, ref_tags, tags = [], [], [], [], [], []
    for ref_item, item in zip(ref_items, items):
        with torch.inference_mode():
            a = reference.encode([ref_item.pixels]).float()
            b = other.encode([item.pixels]).float()
        cosines.append(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item())
        ref_answer = reference.infer_batch([ref_item], lambda: False)[0]
        started = time.perf_counter()
        answer = other.infer_batch([item], lambda: False)[0]
        seconds.append(time.perf_counter() - started)
        identical.append(answer.caption == ref_answer.caption)
        ref_tags.append(ref_answer.tags)
        tags.append(answer.tags)
        forced.append(_teacher_forced(reference, other, ref_item, item, a, b))
    return {
        "photos": len(photos),
        "vision_cosine_min": min(cosines),
        "vision_cosine_mean": float(np.mean(cosines)),
        "teacher_forced_top1": float(np.mean(forced)),
        "identical_captions": int(sum(identical)),
        "tag_jaccard_mean": float(np.mean(_tag_sets_jaccard(ref_tags, tags))),
        "seconds_per_photo": float(np.mean(seconds)),
    }


def _teacher_forced(reference, other, ref_item, item, ref_features, features) -> float:
    """The share of the float32 greedy caption's tokens that `other` also ranks first when fed that caption."""
    sequences, _ = reference.generate([], features=ref_features.to(reference.dtype))
    sequence = sequences[:1]
    tops = []
    for b, feats in ((reference, ref_features), (other, features)):
        prompt = {k: v.to(b.device) for k, v in b.prompts[b.task].items()}
        with torch.inference_mode():
            embeds = b.model.get_input_embeddings()(prompt["input_ids"])
            mask = prompt["input_ids"] == b.model.config.image_token_id
            embeds[mask] = feats.to(embeds.dtype).reshape(-1, embeds.shape[-1])
            logits = b.model(inputs_embeds=embeds, attention_mask=prompt["attention_mask"],
                             decoder_input_ids=sequence[:, :-1]).logits
        tops.append(logits.argmax(-1)[0])
    return (tops[0] == tops[1]).float().mean().item()


def rampp_agreement(reference, other, photos: list[Image.Image]) -> dict:
    """Two loaded RAM++ backends (float32 and another precision) on the same photos: tag sets and probabilities."""
    ref_items = [reference.prepare(p, tagger_pb2.TagRequest()) for p in photos]
    items = [other.prepare(p, tagger_pb2.TagRequest()) for p in photos]
    ref_answers = [reference.infer_batch([i], lambda: False)[0] for i in ref_items]
    started = time.perf_counter()
    answers = [other.infer_batch([i], lambda: False)[0] for i in items]
    seconds = (time.perf_counter() - started) / len(items)
    with torch.inference_mode():
        deltas = []
        for ref_item, item in zip(ref_items, items):
            probs = []
            for b, it in ((reference, ref_item), (other, item)):
                pixels = torch.from_numpy(it.pixels[None]).to(b.device, b.dtype)
                probs.append(torch.sigmoid(b.model.tag_logits(b.model.encode_image(pixels), None).float()))
            deltas.append((probs[0] - probs[1]).abs().max().item())
    jaccard = _tag_sets_jaccard([a.tags for a in ref_answers], [a.tags for a in answers])
    return {
        "photos": len(photos),
        "tag_jaccard_min": min(jaccard),
        "tag_jaccard_mean": float(np.mean(jaccard)),
        "probability_max_abs_diff": max(deltas),
        "tags_per_photo": float(np.mean([len(a.tags) for a in ref_answers])),
        "seconds_per_photo": seconds,
    }
