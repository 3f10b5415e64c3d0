"""The RAM++ tagger on the shared runtime: real per-tag probabilities, per-class thresholds."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from archivetag.bundled import RAMPP_TAG_LIST, RAMPP_THRESHOLDS
from archivetag.runtime.checksums import sha256_file
from archivetag.runtime.device import (
    INT8,
    Precision,
    int8_kept,
    native_bfloat16,
    pick_device,
    pick_precision,
    probe_photo,
    quantize_int8,
    set_threads,
)
from archivetag.runtime.errors import ModelLoadError, abandoned_batch
from archivetag.runtime.logs import fields
from archivetag.runtime.model_card import model_identity
from archivetag.runtime.model_service import TAGGER_SERVICE, ModelBackend, TagOptions, TagResult
from archivetag.runtime.tags import TagVocabulary, select_tags
from archivetag.v1 import common_pb2
from archivetag_rampp.checkpoint import load_model
from archivetag_rampp.layout import CONVERTED, OFFICIAL, OFFICIAL_NAME, TAG_LIST_FILE, THRESHOLD_FILE
from archivetag_rampp.preprocess import to_array

log = logging.getLogger("archivetag.rampp")

DEFAULT_THRESHOLD = 0.68  # upstream's default, used only where a threshold file is absent
# int8 is served only if no tag probability on the probe photo moves more than this from float32's (the full-size
# random model: at most 0.046 on 8 photos, docs/models/cpu.md).
INT8_MAX_PROBABILITY_DIFF = 0.1



class RamPlusItem(NamedTuple):
    """One prepared request: pixels and what the request asks of the tag selection."""

    pixels: np.ndarray  # [3,S,S] float32
    threshold: float | None
    max_tags: int
    subset: list[int] | None  # tag indices, sorted; None: every tag


def default_vocabulary_files(folder: Path, settings) -> tuple[Path, Path]:
    """The tag list and thresholds: as set, else beside the weights, else the official ones shipped with archivetag."""
    if settings.rampp_tag_list:
        return Path(settings.rampp_tag_list), Path(settings.rampp_thresholds or folder / THRESHOLD_FILE)
    if (folder / TAG_LIST_FILE).is_file():
        return folder / TAG_LIST_FILE, Path(settings.rampp_thresholds or folder / THRESHOLD_FILE)
    return RAMPP_TAG_LIST, Path(settings.rampp_thresholds or RAMPP_THRESHOLDS)


def find_weights(folder: Path) -> Path:
    for name in (CONVERTED, OFFICIAL):
        if (folder / name).is_file():
            return folder / name
    raise ModelLoadError(
        f"no RAM++ weights in {folder} (looked for {CONVERTED} and {OFFICIAL}): "
        "`archivetag models pull --only rampp` downloads the real ones (needs network); "
        "`archivetag models smoke --only rampp` builds a small random one offline"
    )


class RamPlusBackend(ModelBackend):
    family = "rampp"
    decodes_with_torch = True
    service = TAGGER_SERVICE

    def __init__(self, settings):
        folder = Path(settings.models) / "rampp"
        self.folder = folder
        self.weights_setting = settings.rampp_weights
        self.settings = settings
        # Found in load(), after the service checked that it can read the model folder.
        self.tag_list: Path | None = None
        self.threshold_file: Path | None = None
        self.device_setting = settings.device
        self.dtype_setting = settings.dtype
        self.threads = settings.torch_threads
        self.model = None
        self.vocab: TagVocabulary | None = None
        self._identity = common_pb2.ModelIdentity(family=self.family)

    # -- loading --------------------------------------------------------------------
    def load(self) -> None:
        set_threads(self.threads)
        self.tag_list, self.threshold_file = default_vocabulary_files(self.folder, self.settings)
        weights = Path(self.weights_setting) if self.weights_setting else find_weights(self.folder)
        if not weights.is_file():
            raise ModelLoadError(f"RAM++ weights {weights} do not exist")
        if not Path(self.tag_list).is_file():
            raise ModelLoadError(f"RAM++ tag list {self.tag_list} is missing; "
                                 "`archivetag models pull --only rampp` fetches it")
        self.vocab = TagVocabulary.read(Path(self.tag_list), Path(self.threshold_file),
                                        default_threshold=DEFAULT_THRESHOLD, what="RAM++ tag list")
        started = time.monotonic()
        model, unexpected, metadata = load_model(weights)
        if unexpected:
            log.warning("ignored keys the model does not use",
                        extra=fields(count=len(unexpected), first=unexpected[:5]))
        if model.config.num_tags != len(self.vocab.names):
            raise ModelLoadError(
                f"{weights} has {model.config.num_tags} tags but {self.tag_list} lists {len(self.vocab.names)}"
            )
        try:
            device = pick_device(self.device_setting)
            # On a CPU: bfloat16 where it is native (faster and closer to float32 than int8 there), else int8
            # (docs/models/cpu.md).
            precision = pick_precision(self.dtype_setting, device,
                                       cpu_default="bfloat16" if native_bfloat16() else INT8)
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from None
        dtype = precision.dtype
        model = model.to(device=device, dtype=dtype)
        if precision.int8 and not self._quantize_checked(model):
            precision = Precision(torch.float32)
            model, _, _ = load_model(weights)
        # re-weighting runs in fp32 (docs/models/rampp.md §10.6)
        model.label_embed.data = model.label_embed.data.float()
        self.model, self.device, self.dtype = model, device, dtype
        self.input_edge = model.config.image_size
        # A converted file names the official checkpoint it came from by its SHA-256.
        self._identity = model_identity(
            self.family, self.folder, default_name=OFFICIAL_NAME,
            default_revision=metadata.get("source_sha256", "")[:12] or "official-pth",
            weights_sha256=sha256_file(weights), device=str(device), dtype=precision.name,
        )
        log.info("RAM++ weights loaded", extra=fields(path=str(weights), seconds=round(time.monotonic() - started, 2),
                                                      tags=len(self.vocab.names), smoke=self._identity.smoke))

    def _quantize_checked(self, model) -> bool:
        """int8 weights in the Swin encoder only (with the tagging head in int8 too, tag sets agreed less:
        docs/models/cpu.md), kept if the tag probabilities on the probe photo stay within INT8_MAX_PROBABILITY_DIFF
        of float32's (else the caller reloads)."""
        pixels = torch.from_numpy(to_array(probe_photo(), model.config.image_size)[None])
        with torch.inference_mode():
            before = torch.sigmoid(model(pixels).float())
            model.visual_encoder = quantize_int8(model.visual_encoder)
            diff = (torch.sigmoid(model(pixels).float()) - before).abs().max().item()
        return int8_kept(self.dtype_setting == "int8", 1.0 - diff, 1.0 - INT8_MAX_PROBABILITY_DIFF,
                         "1 - largest tag-probability difference", log)

    # -- inference ------------------------------------------------------------------
    def prepare(self, image, request):
        options = TagOptions.of(request)
        subset = self.vocab.subset(options.vocabulary, "RAM++") if options.vocabulary else None
        return RamPlusItem(to_array(image, self.model.config.image_size), options.threshold, options.max_tags, subset)

    @torch.inference_mode()
    def infer_batch(self, items: list[RamPlusItem], abandoned):
        vocab = self.vocab
        assert vocab is not None  # load() ran
        pixels = torch.from_numpy(np.stack([item.pixels for item in items])).to(self.device, self.dtype)
        image = self.model.encode_image(pixels)
        if abandoned():  # every caller has gone: skip the tagging head (a third of the compute)
            return abandoned_batch(len(items))
        # One head pass over the union of the tags the batch asks for (tags are independent queries).
        subsets = [item.subset for item in items if item.subset is not None]
        wanted = None if len(subsets) < len(items) else sorted(set[int]().union(*subsets))
        index = None if wanted is None else torch.tensor(wanted, device=self.device)
        probs = torch.sigmoid(self.model.tag_logits(image, index).float()).cpu().numpy()
        columns = np.arange(len(vocab.names)) if wanted is None else np.array(wanted)
        results = []
        for row, item in zip(probs, items):
            keep = np.searchsorted(columns, item.subset) if item.subset is not None else slice(None)
            ids = columns[keep]
            names = [vocab.names[i] for i in ids]
            tags = select_tags(names, row[keep], vocab.thresholds[ids], item.threshold, item.max_tags)
            results.append(TagResult(tags=tags))
        return results

    # -- description ----------------------------------------------------------------
    def identity(self):
        return self._identity

    def describe(self):
        return {
            "weights": str(self.weights_setting or self.folder),
            "tag_list": str(self.tag_list or ""),
            "thresholds": str(self.threshold_file or ""),
            "image_size": str(self.input_edge),
        }

    def vocabulary(self):
        return self.vocab.names if self.vocab else []


def create_backend(settings) -> RamPlusBackend:
    return RamPlusBackend(settings)
