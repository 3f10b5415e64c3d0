"""The Florence-2 tagger: a caption per image, tags from the caption with token probabilities, and on
request the text in the image (the `<OCR>` and `<OCR_WITH_REGION>` tasks).

Concurrent requests arrive as one batch: one processor call on the list of images, one
`generate` call for the captions; the items that ask for OCR get one more generate pass per
OCR task, in the same batch (a task token is the whole prompt, so each task is its own pass).
A stopping criterion ends generation as soon as every caller of the batch has gone. Tag
confidences come from the generation scores (tags.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from archivetag.bundled import RAMPP_TAG_LIST as RAMPP_TAG_LIST_BUNDLED
from archivetag.runtime.checksums import sha256_file
from archivetag.runtime.errors import ModelLoadError
from archivetag.runtime.images import source_size
from archivetag.runtime.model_card import model_identity
from archivetag.runtime.model_service import TAGGER_SERVICE, ModelBackend, OcrText, TagOptions, TagResult
from archivetag.runtime.tags import TagVocabulary, select_tags
from archivetag.v1 import common_pb2
from archivetag_florence import tags as tagging
from archivetag_florence.layout import VOCABULARY_FILE

log = logging.getLogger("archivetag.florence")

MODEL_DIR = "florence"
# int8 is served only if its vision-tower output on the probe photo has at least this cosine to float32's (the
# full-size random model: 0.9989 on 8 photos, docs/models/cpu.md).
INT8_MIN_COSINE = 0.998
RAMPP_TAG_LIST = Path("rampp") / "ram_tag_list.txt"
# The Florence-2 task of each OcrMode that reads text.
OCR_TASKS = {common_pb2.OCR_MODE_TEXT: "<OCR>", common_pb2.OCR_MODE_TEXT_WITH_REGIONS: "<OCR_WITH_REGION>"}


@dataclass
class FlorenceItem:
    pixels: Any  # the processor's pixel_values of this image, (1, 3, H, W) float32, made in the decode pool
    threshold: float | None
    max_tags: int
    allowed: frozenset[str] | None
    ocr: int  # the OcrMode asked for
    size: tuple[int, int]  # the photo's size as stored: OCR regions are in its pixels
    decoded_size: tuple[int, int]  # the decoded image's size (a large JPEG is decoded reduced)


def default_vocabulary_path(models: Path) -> Path:
    """The model folder's own vocabulary, else RAM++'s beside it, else the RAM++ list shipped with archivetag:
    either way both taggers speak the same tags."""
    for path in (models / MODEL_DIR / VOCABULARY_FILE, models / RAMPP_TAG_LIST):
        if path.exists():
            return path
    return RAMPP_TAG_LIST_BUNDLED


def _stop_when(abandoned: Callable[[], bool]):
    """A StoppingCriteria that ends the whole batch's generation once every caller has gone."""
    import torch
    from transformers import StoppingCriteria

    class StopWhenAbandoned(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), bool(abandoned()), dtype=torch.bool, device=input_ids.device)

    return StopWhenAbandoned()


class FlorenceBackend(ModelBackend):
    family = "florence"
    decodes_with_torch = True
    service = TAGGER_SERVICE

    def __init__(self, settings):
        self.settings = settings
        self.folder = Path(settings.models) / MODEL_DIR
        self.task = settings.florence_task
        self.max_new_tokens = settings.florence_max_new_tokens
        self.ocr_max_new_tokens = settings.florence_ocr_max_new_tokens
        self.num_beams = settings.florence_num_beams
        self.min_confidence = settings.florence_min_confidence
        self.model = None
        self.processor = None
        self.device = None
        self.dtype = None
        self.vocab: TagVocabulary | None = None
        self.phrases: tagging.PhraseIndex | None = None
        self.vocabulary_path: Path | None = None
        self._identity: common_pb2.ModelIdentity | None = None

    # -- loading --------------------------------------------------------------------
    def load(self) -> None:
        from archivetag.runtime.device import INT8, Precision, pick_device, pick_precision, set_threads
        from archivetag_florence.loading import load_florence

        if self.max_new_tokens < 1 or self.ocr_max_new_tokens < 1 or self.num_beams < 0:
            raise ModelLoadError("--florence-max-new-tokens and --florence-ocr-max-new-tokens must be at least 1, "
                                 "--florence-num-beams at least 0 (0: chosen by the device)")
        try:
            self.device = pick_device(self.settings.device)
            precision = pick_precision(self.settings.dtype, self.device, cpu_default=INT8)
            self.dtype = precision.dtype
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from None
        # On a CPU greedy search is the CPU profile's choice (photos an hour, issue 27); beams cost little on a GPU.
        self.num_beams = self.settings.florence_num_beams or (1 if self.device.type == "cpu" else 3)
        set_threads(self.settings.torch_threads)
        self.vocabulary_path = (self.settings.florence_tag_vocabulary
                                or default_vocabulary_path(Path(self.settings.models)))
        # Florence-2 has no per-tag thresholds: every tag's own threshold is the minimum confidence.
        self.vocab = TagVocabulary.read(Path(self.vocabulary_path), default_threshold=self.min_confidence,
                                        what="tag vocabulary")
        self.phrases = tagging.PhraseIndex.from_names(self.vocab.names)
        loaded = load_florence(self.folder, self.device, self.dtype, self.settings.florence_attn_implementation)
        self.model, self.processor = loaded.model, loaded.processor
        if precision.int8 and not self._quantize_checked():
            precision = Precision(self.dtype)
            self.model = load_florence(self.folder, self.device, self.dtype,
                                       self.settings.florence_attn_implementation).model
        self.input_edge = int(self.processor.image_processor.size["height"])
        # A task's text inputs do not depend on the image (its <image> tokens are a fixed number): made once,
        # so preparing a request runs only the image processor.
        probe = Image.new("RGB", (self.input_edge, self.input_edge))
        self.prompts = {}
        for task in (self.task, *OCR_TASKS.values()):
            encoded = self.processor(text=[task], images=[probe], return_tensors="pt")
            self.prompts[task] = {k: v for k, v in encoded.items() if k != "pixel_values"}
        self._identity = self._make_identity(precision.name)

    def _quantize_checked(self) -> bool:
        """int8 weights in the whole model (vision tower, projection, BART: docs/models/cpu.md), kept if the vision
        tower's output on the probe photo stays within INT8_MIN_COSINE of float32's (else the caller reloads)."""
        import torch

        from archivetag.runtime.device import int8_kept, probe_photo, quantize_int8

        pixels = self.prepare(probe_photo(), None).pixels  # as a request is prepared (no options)
        before = self.encode([pixels]).flatten()
        quantize_int8(self.model)
        cosine = torch.nn.functional.cosine_similarity(before, self.encode([pixels]).flatten(), dim=0).item()
        return int8_kept(self.settings.dtype == "int8", cosine, INT8_MIN_COSINE, "vision-tower cosine", log)

    def _make_identity(self, dtype: str) -> common_pb2.ModelIdentity:
        name = getattr(self.model.config, "_name_or_path", "")
        if not name or name == str(self.folder):
            name = f"florence-2 ({self.folder.name})"
        weights = self.folder / "model.safetensors"
        return model_identity(self.family, self.folder, default_name=name,
                              weights_sha256=sha256_file(weights) if weights.exists() else "",
                              device=str(self.device), dtype=dtype)

    def identity(self) -> common_pb2.ModelIdentity:
        return self._identity or common_pb2.ModelIdentity(family=self.family)

    def describe(self) -> dict[str, str]:
        return {
            "task": self.task, "max_new_tokens": str(self.max_new_tokens), "num_beams": str(self.num_beams),
            "ocr_tasks": " ".join(OCR_TASKS.values()), "ocr_max_new_tokens": str(self.ocr_max_new_tokens),
            "tag_vocabulary": str(self.vocabulary_path or ""), "min_confidence": str(self.min_confidence),
            "attn_implementation": self.settings.florence_attn_implementation, "folder": str(self.folder),
        }

    def vocabulary(self) -> list[str]:
        return list(self.phrases.names) if self.phrases else []

    # -- requests -------------------------------------------------------------------
    def prepare(self, image: Image.Image, request) -> FlorenceItem:
        options = TagOptions.of(request)
        allowed = None
        if options.vocabulary:
            assert self.vocab is not None  # load() ran
            allowed = frozenset(self.vocab.names[i] for i in self.vocab.subset(options.vocabulary, "Florence-2"))
        assert self.processor is not None  # load() ran
        pixels = self.processor.image_processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"]
        return FlorenceItem(pixels, options.threshold, options.max_tags, allowed, options.ocr, source_size(image),
                            image.size)

    # -- inference ------------------------------------------------------------------
    def encode(self, pixels: list[Any]) -> Any:
        """The images' features from the vision tower and its projection, (n, tokens, d): computed once per batch
        and shared by every task asked of it (the caption and the OCR), the costliest part of a request."""
        import torch

        with torch.inference_mode():
            return self.model.get_image_features(torch.cat(pixels).to(self.device, self.dtype)).pooler_output

    def _generate(self, task: str, features: Any, abandoned: Callable[[], bool], max_new_tokens: int,
                  scores: bool):
        """One generate call of `task` over the images' features (the output, with scores if asked). transformers
        takes them as the image encoder's output (mm_encoder_outputs) and puts them in the prompt's <image>
        places as it would have from the pixels."""
        import torch
        from transformers import StoppingCriteriaList
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        inputs = {k: v.repeat(len(features), 1).to(self.device) for k, v in self.prompts[task].items()}
        with torch.inference_mode():
            if hasattr(self.model, "_supports_mm_encoder_outputs"):
                encoded: dict[str, Any] = {"mm_encoder_outputs": {"image": BaseModelOutputWithPooling(
                    pooler_output=features)}}
            else:  # transformers < 5.18 (a CUDA box's 5.17, issue 28) has no mm_encoder_outputs: the features go
                # into the prompt's <image> places here, as its Florence-2 does from pixel_values, and generate
                # gets the text encoder's output of those embeddings (encoder_outputs)
                embeds = self.model.get_input_embeddings()(inputs["input_ids"])
                features = features.to(embeds.device, embeds.dtype)
                mask = self.model.get_placeholder_mask(inputs["input_ids"], inputs_embeds=embeds,
                                                       image_features=features)
                encoded = {"encoder_outputs": self.model.model.get_encoder()(
                    inputs_embeds=embeds.masked_scatter(mask, features), attention_mask=inputs.get("attention_mask"),
                    return_dict=True)}
            return self.model.generate(
                **inputs, **encoded,
                max_new_tokens=max_new_tokens, num_beams=self.num_beams, do_sample=False, output_scores=scores,
                return_dict_in_generate=True, stopping_criteria=StoppingCriteriaList([_stop_when(abandoned)]),
            )

    def generate(self, pixels: list[Any], abandoned: Callable[[], bool] = lambda: False, features: Any = None):
        """One caption generate call for the batch's pixel_values (or their features, when already encoded):
        (sequences, per-token log-probabilities)."""
        import torch

        features = self.encode(pixels) if features is None else features
        out = self._generate(self.task, features, abandoned, self.max_new_tokens, scores=True)
        with torch.inference_mode():
            if self.num_beams > 1:
                logp = self.model.compute_transition_scores(out.sequences, out.scores, out.beam_indices,
                                                            normalize_logits=False)
            else:
                logp = self.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        return out.sequences.cpu(), logp.float().cpu()

    def describe_sequence(self, sequence, logprobs, image_size) -> TagResult:
        """Caption and scored tags of one generated sequence."""
        tokenizer = self.processor.tokenizer
        ids = sequence.tolist()
        text = tokenizer.decode(ids, skip_special_tokens=False)
        caption = self.processor.post_process_generation(text, task=self.task, image_size=image_size)[self.task]
        if not isinstance(caption, str):
            caption = ""
        specials = self._special_ids()
        pieces, values, scored = [], [], []
        # logprobs[j] belongs to ids[j + 1]; ids[0] is the decoder start token.
        for token_id, lp in zip(ids[1:], logprobs.tolist()):
            if token_id == tokenizer.pad_token_id:
                break
            special = token_id in specials
            pieces.append(
                "" if special else tokenizer.convert_tokens_to_string(tokenizer.convert_ids_to_tokens([token_id])))
            values.append(lp)
            scored.append(not special and lp > float("-inf"))
        assert self.phrases is not None  # load() ran
        found = tagging.tag_confidences("".join(pieces), pieces, values, self.phrases, scored)
        return TagResult(tags=found, caption=caption)

    def read_text(self, items: list[FlorenceItem], abandoned: Callable[[], bool],
                  features: Any = None) -> dict[int, OcrText]:
        """The text of the items that ask for OCR, by their index: one generate pass per OCR task, over the
        features the caption was made from (encoded here when not given)."""
        read: dict[int, OcrText] = {}
        for mode, task in OCR_TASKS.items():
            asking = [i for i, item in enumerate(items) if item.ocr == mode]
            if not asking:
                continue
            if features is None:
                features = self.encode([item.pixels for item in items])
            out = self._generate(task, features[asking], abandoned, self.ocr_max_new_tokens, scores=False)
            for i, sequence in zip(asking, out.sequences.cpu()):
                read[i] = self.ocr_of_sequence(task, sequence, items[i].size)
        return read

    def ocr_of_sequence(self, task: str, sequence, image_size: tuple[int, int]) -> OcrText:
        """The text (and regions, in the photo's pixels) of one generated OCR sequence, by transformers'
        own post-processing."""
        text = self.processor.tokenizer.decode(sequence.tolist(), skip_special_tokens=False)
        parsed = self.processor.post_process_generation(text, task=task, image_size=image_size)[task]
        if isinstance(parsed, str):
            return OcrText(parsed)
        regions = [(label, [float(v) for v in quad])
                   for label, quad in zip(parsed.get("labels", []), parsed.get("quad_boxes", []))]
        return OcrText("\n".join(label for label, _ in regions), regions)

    def _special_ids(self) -> frozenset[int]:
        """Ids that spell no caption text: <s>, </s>, <pad>, task and location tokens, <image>."""
        if getattr(self, "_specials", None) is None:
            tokenizer = self.processor.tokenizer
            self._specials = frozenset(tokenizer.all_special_ids) | frozenset(tokenizer.added_tokens_decoder)
        return self._specials

    def select(self, found: list[tuple[str, float]], item: FlorenceItem) -> list[tuple[str, float]]:
        """The request's tags among those the caption spells, by the one tag-selection rule."""
        assert self.vocab is not None  # load() ran
        vocab = self.vocab
        candidates = sorted((vocab.index[n], n, c) for n, c in found
                            if item.allowed is None or n in item.allowed)
        names = [n for _, n, _ in candidates]
        confidences = np.array([c for _, _, c in candidates], dtype=np.float32)
        return select_tags(names, confidences, self.min_confidence, item.threshold, item.max_tags)

    def infer_batch(self, items: list[FlorenceItem], abandoned: Callable[[], bool]):
        features = self.encode([item.pixels for item in items])  # once, for the caption and the OCR alike
        sequences, logprobs = self.generate([], abandoned, features=features)
        read = self.read_text(items, abandoned, features)
        results = []
        for index, (item, sequence, logp) in enumerate(zip(items, sequences, logprobs)):
            described = self.describe_sequence(sequence, logp, item.decoded_size)
            results.append(TagResult(tags=self.select(described.tags, item), caption=described.caption,
                                     ocr=read.get(index)))
        return results


def create_backend(settings) -> FlorenceBackend:
    return FlorenceBackend(settings)
