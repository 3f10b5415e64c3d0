"""The SigLIP view-type backend: an ONNX Runtime vision tower + stamped class text embeddings, and the
text tower (ONNX Runtime + `tokenizers`) for EmbedText and request-time labels.

load() refuses to serve (ModelLoadError, the reason shown in health and GetModelInfo) unless
the folder is an export of one model, unchanged: the ONNX file's SHA-256 and the text
embeddings' SHA-256 match the manifest, the text embeddings are stamped with the manifest's
model, and the probe image re-embeds to the manifest's embedding; the text tower's files match
their hashes, its tokenizer gives the probe texts' recorded token ids and its embeddings the
recorded ones. No torch in this path, unless the vision tower runs on torch (--siglip-runtime torch, or
auto on a CUDA box whose ONNX Runtime has no CUDA provider: torch_runtime.py), from the same export's
vision_torch/ weights, under the same hash and probe checks.

Images and texts share one batcher: a batch may hold Classify items (pixels, maybe a label set)
and EmbedText items (token ids); infer_batch runs each tower once for the batch.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from archivetag.runtime.checksums import sha256_file
from archivetag.runtime.errors import InvalidInput, ModelLoadError, NotServing, abandoned_batch
from archivetag.runtime.logs import fields
from archivetag.runtime.model_card import model_identity
from archivetag.runtime.model_service import VIEW_TYPE_SERVICE, ModelBackend, ViewTypeResult
from archivetag.v1 import common_pb2
from archivetag_siglip import layout
from archivetag_siglip.layout import Preprocessor, read_json
from archivetag_siglip.scoring import Thresholds, label_scores, logits_for, normalize, view_types
from archivetag_siglip.text import TextTokenizer, TextTower, TokenizerSpec
from archivetag_siglip.torch_runtime import ORT_CUDA as CUDA  # one name for the provider, with the torch runtime
from archivetag_siglip.torch_runtime import TorchVisionTower, choose_runtime

log = logging.getLogger("archivetag.siglip")

CPU = "CPUExecutionProvider"
TEXT_LOGIT_TOLERANCE = 1e-3  # stored probe embedding x loaded text embeddings vs the manifest's logits
DEFAULT_TEMPLATE = "a photo of {}."
# --siglip-precision auto serves the int8 tower only if, on the exported weights, its probe embedding has at least
# this cosine to fp32's (random full-size weights: >= 0.9997, docs/models/siglip.md).
INT8_MIN_PROBE_COSINE = 0.999


@dataclass(frozen=True)
class LabelRequest:
    """A request's label set, checked: (name, prompts) per label, in request order."""

    labels: tuple[tuple[str, tuple[str, ...]], ...]


@dataclass
class ImageItem:
    pixels: np.ndarray
    include_embedding: bool
    labels: LabelRequest | None = None


@dataclass
class TextItem:
    ids: np.ndarray  # (N, max_length) int64


@dataclass
class SiglipViewResult(ViewTypeResult):
    """The view type, and the request's labels: (name, probability, logit), most probable first."""

    labels: list[tuple[str, float, float]] = field(default_factory=list)


@dataclass
class TextResult:
    embeddings: np.ndarray  # (N, D), normalised
    logit_scale: float
    logit_bias: float


class LabelCache:
    """Prompt text -> normalised embedding, least recently used dropped beyond `size` (bounded memory).
    Used only on the inference thread."""

    def __init__(self, size: int):
        self.size = max(0, size)
        self._rows: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, prompt: str) -> np.ndarray | None:
        row = self._rows.get(prompt)
        if row is not None:
            self._rows.move_to_end(prompt)
            self.hits += 1
        else:
            self.misses += 1
        return row

    def put(self, prompt: str, row: np.ndarray) -> None:
        if not self.size:
            return
        self._rows[prompt] = row
        self._rows.move_to_end(prompt)
        while len(self._rows) > self.size:
            self._rows.popitem(last=False)


def refuse_old_app_files(folder: Path) -> None:
    """The old app's trio is recognised and refused: it cannot be scored correctly."""
    present = [name for name in layout.OLD_APP_FILES if (folder / name).exists()]
    if present and not (folder / layout.MANIFEST).exists():
        raise ModelLoadError(
            f"{folder} holds the old app's SigLIP files ({', '.join(present)}). They cannot be served: "
            "their text embeddings are not stamped with the model they came from, were tokenized without "
            "padding=\"max_length\", and carry no logit_scale/logit_bias, so their scores were wrong "
            f"(\"unknown\" at 100%). Re-export the model with `{layout.EXPORT_COMMAND}` "
            f"(or `{layout.PULL_COMMAND}`)."
        )


class SiglipBackend(ModelBackend):
    family = "siglip"
    service = VIEW_TYPE_SERVICE

    def __init__(self, settings):
        self.folder = Path(settings.models) / self.family
        self.device_setting = settings.device
        self.thresholds = Thresholds(unknown=settings.siglip_unknown_threshold,
                                     min_match=settings.siglip_min_match_probability)
        self.ort_threads = settings.siglip_ort_threads
        self.ort_spinning = settings.siglip_ort_spinning
        self.precision = settings.siglip_precision
        self.runtime_setting = settings.siglip_runtime
        self.runtime = "onnx"  # what load() chose: onnx (vision.onnx on ONNX Runtime) or torch (vision_torch/)
        self.dtype_setting = settings.dtype
        self.torch_threads = settings.torch_threads
        self.torch_tower: TorchVisionTower | None = None
        self.probe_tolerance = settings.siglip_probe_tolerance
        self.manifest: dict[str, Any] = {}
        self.session = None
        self.providers: list[str] = []
        self.classes: list[str] = []
        self.class_embeddings = np.zeros((0, 0), np.float32)
        self.logit_scale = 0.0
        self.logit_bias = 0.0
        self.preprocess: Preprocessor | None = None
        self.onnx_sha256 = ""
        self.probe_cosine = float("nan")
        self.max_texts = settings.siglip_max_texts
        self.max_text_chars = settings.siglip_max_text_chars
        self.max_labels = settings.siglip_max_labels
        self.label_cache = LabelCache(settings.siglip_label_cache_size)
        self.text: TextTower | None = None
        self.text_probe_cosine = float("nan")

    # -- loading --------------------------------------------------------------------------
    def load(self) -> None:
        folder = self.folder
        if not folder.is_dir():
            raise ModelLoadError(f"no SigLIP model at {folder}: export one with `{layout.EXPORT_COMMAND}` "
                                 f"(or `{layout.PULL_COMMAND}`, or `archivetag models smoke` to try the stack)")
        refuse_old_app_files(folder)
        if self.runtime_setting == "torch" and self.precision == "int8":
            raise ModelLoadError("--siglip-precision int8 is an ONNX Runtime tower (vision-int8.onnx); with "
                                 "--siglip-runtime torch use fp32 (and --dtype float16 or bfloat16 on a GPU)")
        manifest_path = folder / layout.MANIFEST
        if not manifest_path.exists():
            raise ModelLoadError(f"{folder} has no {layout.MANIFEST}: it is not an archivetag SigLIP export; "
                                 f"re-export with `{layout.EXPORT_COMMAND}`")
        try:
            self.manifest = manifest = read_json(manifest_path)
            if manifest.get("format") != layout.FORMAT:
                raise ModelLoadError(f"{manifest_path} has format {manifest.get('format')!r}, this service reads "
                                     f"{layout.FORMAT!r}; re-export with `{layout.EXPORT_COMMAND}`")
            self.preprocess = Preprocessor(manifest["image"])
            self.input_edge = max(self.preprocess.height, self.preprocess.width)
            self._load_text(manifest)
            if self.precision == "auto":
                self.precision = self._auto_precision(manifest)
            onnx_path = self._check_onnx_file(manifest)
        except ModelLoadError:
            raise
        except (KeyError, ValueError, TypeError) as exc:
            raise ModelLoadError(f"{folder}: the export is incomplete or damaged ({type(exc).__name__}: {exc}); "
                                 f"re-export with `{layout.EXPORT_COMMAND}`") from None
        import onnxruntime as ort

        # int8 is an ONNX Runtime tower (vision-int8.onnx): auto keeps it there, torch refuses it (load() start).
        self.runtime = "onnx" if self.precision == "int8" else choose_runtime(
            self.runtime_setting, self.device_setting, ort.get_available_providers(), manifest)
        if self.runtime == "torch":
            try:
                self.torch_tower = TorchVisionTower(folder, manifest, self.device_setting, self.dtype_setting,
                                                    self.torch_threads)
            except (KeyError, TypeError) as exc:
                raise ModelLoadError(f"{folder}: the export's vision_torch entry is damaged ({type(exc).__name__}: "
                                     f"{exc}); re-export with `{layout.EXPORT_COMMAND}`") from None
            self.providers = [f"torch:{self.torch_tower.device_name}"]
        else:
            self.session, self.providers = self._open_session(onnx_path)
        self._check_probe(manifest)
        self._load_text_tower(manifest)
        log.info("siglip model checked", extra=fields(
            model=manifest["model"]["id"], runtime=self.runtime, providers=",".join(self.providers),
            precision=self.precision,
            probe_cosine=round(self.probe_cosine, 6), classes=",".join(self.classes),
        ))

    def _auto_precision(self, manifest: dict[str, Any]) -> str:
        """--siglip-precision auto: the int8 tower when it runs on a CPU and the export has one (on a CPU it is about
        twice as fast at cosine >= 0.9996 to fp32, docs/models/cpu.md), else fp32."""
        import onnxruntime as ort

        if "vision_int8" not in manifest or self.runtime_setting == "torch":
            return "fp32"
        cosine = float(manifest["vision_int8"].get("probe_cosine_to_fp32", 0.0))
        if cosine < INT8_MIN_PROBE_COSINE:  # measured on these very weights at export
            log.warning(f"the export's int8 tower has probe cosine {cosine:.5f} to fp32, below "
                        f"{INT8_MIN_PROBE_COSINE}: serving fp32 (--siglip-precision int8 serves it anyway)")
            return "fp32"
        providers = ort.get_available_providers()
        if self.device_setting != "cpu" and (
                CUDA in providers
                or choose_runtime(self.runtime_setting, self.device_setting, providers, manifest) == "torch"):
            return "fp32"  # on a GPU
        return "int8"

    def _load_text(self, manifest: dict[str, Any]) -> None:
        """Class embeddings, only if they are the ones exported with this manifest's model."""
        text_path = self.folder / manifest["text"]["file"]
        if not text_path.exists():
            raise ModelLoadError(f"{text_path} is missing; re-export with `{layout.EXPORT_COMMAND}`")
        actual = sha256_file(text_path)
        if actual != manifest["text"]["sha256"]:
            raise ModelLoadError(
                f"text embeddings {text_path.name} do not match the manifest (SHA-256 {actual[:12]}…, manifest "
                f"{manifest['text']['sha256'][:12]}…): they were changed or come from another export; "
                f"re-export with `{layout.EXPORT_COMMAND}`"
            )
        text = read_json(text_path)
        if text.get("model", {}).get("fingerprint") != manifest["model"]["fingerprint"]:
            raise ModelLoadError(
                f"text embeddings {text_path.name} are stamped with model {text.get('model', {}).get('id')!r} "
                f"({str(text.get('model', {}).get('fingerprint'))[:12]}…), not the manifest's "
                f"{manifest['model']['id']!r} ({manifest['model']['fingerprint'][:12]}…); "
                f"re-export with `{layout.EXPORT_COMMAND}`"
            )
        if text.get("tokenizer", {}).get("padding") != "max_length":
            raise ModelLoadError(f"text embeddings {text_path.name} were not tokenized with padding=\"max_length\"; "
                                 f"re-export with `{layout.EXPORT_COMMAND}`")
        self.classes = list(text["classes"])
        if self.classes != list(manifest["classes"]):
            raise ModelLoadError(f"text embeddings classes {self.classes} differ from the manifest's "
                                 f"{list(manifest['classes'])}; re-export with `{layout.EXPORT_COMMAND}`")
        self.class_embeddings = np.asarray(text["embeddings"], dtype=np.float32)
        self.logit_scale = float(text["logit_scale"])
        self.logit_bias = float(text["logit_bias"])
        # The text side alone must reproduce the probe's logits recorded at export.
        stored = np.asarray(manifest["probe"]["embedding"], dtype=np.float32)[None]
        logits = logits_for(stored, self.class_embeddings, self.logit_scale, self.logit_bias)[0]
        expected = np.asarray(manifest["probe"]["logits"])
        if logits.shape != expected.shape or not np.allclose(logits, expected, atol=TEXT_LOGIT_TOLERANCE, rtol=0):
            raise ModelLoadError("the text embeddings do not reproduce the probe's class logits recorded at export: "
                                 f"they belong to another model; re-export with `{layout.EXPORT_COMMAND}`")

    def _load_text_tower(self, manifest: dict[str, Any]) -> None:
        """The text tower, if exported (older exports have none: EmbedText and labels are then refused)."""
        entry = manifest.get("text_tower")
        if entry is None:
            log.warning("this SigLIP export has no text tower: EmbedText and labels are unavailable; "
                        f"re-export with `{layout.EXPORT_COMMAND}`")
            return
        try:
            spec = TokenizerSpec.from_dict(entry["tokenizer"])
            for name, expected in ((entry["file"], entry["sha256"]), (spec.file, entry["tokenizer"]["sha256"])):
                path = self.folder / name
                if not path.exists() or sha256_file(path) != expected:
                    raise ModelLoadError(f"{path.name} is missing or does not match the manifest's SHA-256: the text "
                                         f"tower is not the one exported with this model; re-export with "
                                         f"`{layout.EXPORT_COMMAND}`")
            tokenizer = TextTokenizer(self.folder, spec)
            probe = entry["probe"]
            ids = tokenizer(list(probe["texts"]))
        except (KeyError, ValueError, TypeError, OSError) as exc:
            raise ModelLoadError(f"{self.folder}: the text tower export is incomplete or damaged "
                                 f"({type(exc).__name__}: {exc}); re-export with `{layout.EXPORT_COMMAND}`") from None
        if not np.array_equal(ids, np.asarray(probe["input_ids"], dtype=np.int64)):
            raise ModelLoadError("the tokenizer here does not give the probe texts' token ids recorded at export "
                                 "(another tokenizers version, or a changed file); re-export with "
                                 f"`{layout.EXPORT_COMMAND}`")
        session, _ = self._open_session(self.folder / entry["file"])
        tower = TextTower(session, tokenizer, max_batch=max(1, self.max_texts))
        got = tower.embed_ids(ids).astype(np.float64)
        expected = normalize(np.asarray(probe["embeddings"], dtype=np.float32)).astype(np.float64)
        self.text_probe_cosine = float(np.min(np.sum(got * expected, axis=-1)))
        if not self.text_probe_cosine >= self.probe_tolerance:
            raise ModelLoadError(f"the text tower's probe embeddings do not match the manifest (cosine "
                                 f"{self.text_probe_cosine:.5f} < {self.probe_tolerance}); re-export with "
                                 f"`{layout.EXPORT_COMMAND}`")
        self.text = tower

    def _check_onnx_file(self, manifest: dict[str, Any]) -> Path:
        entry = manifest["vision"] if self.precision == "fp32" else manifest.get("vision_int8")
        if entry is None:
            raise ModelLoadError(f"--siglip-precision int8 asked for, but this export has no int8 vision tower; "
                                 f"re-export with `{layout.EXPORT_COMMAND} --int8`")
        path = self.folder / entry["file"]
        if not path.exists():
            raise ModelLoadError(f"{path} is missing; re-export with `{layout.EXPORT_COMMAND}`")
        self.onnx_sha256 = sha256_file(path)
        if self.onnx_sha256 != entry["sha256"]:
            raise ModelLoadError(
                f"{path.name} has SHA-256 {self.onnx_sha256[:12]}…, the manifest says {entry['sha256'][:12]}…: "
                f"the vision tower is not the one exported with these text embeddings; "
                f"re-export with `{layout.EXPORT_COMMAND}`"
            )
        return path

    def _providers(self) -> list[str]:
        import onnxruntime as ort

        available = ort.get_available_providers()
        setting = self.device_setting
        if self.runtime == "torch":  # the vision tower is on torch; the text tower stays on ONNX Runtime's CPU
            return [CUDA, CPU] if setting.startswith("cuda") and CUDA in available else [CPU]
        if setting.startswith("cuda"):
            if CUDA not in available:
                raise ModelLoadError(f"--device {setting} asked for, but ONNX Runtime has no CUDA provider here "
                                     f"(available: {', '.join(available)}); install onnxruntime-gpu, run the "
                                     "vision tower on torch (--siglip-runtime torch, with torch and transformers "
                                     "installed), or use --device cpu")
            return [CUDA, CPU]
        if setting == "auto" and CUDA in available:
            return [CUDA, CPU]
        return [CPU]

    def _cuda_options(self) -> dict[str, str]:
        setting = self.device_setting
        return {"device_id": setting.split(":", 1)[1]} if setting.startswith("cuda:") else {}

    def _open_session(self, path: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if self.ort_threads > 0:
            options.intra_op_num_threads = self.ort_threads
        # Spinning threads burn the cores co-located taggers need (issue 27); off unless asked for.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.ort_spinning else "0")
        wanted = self._providers()
        providers = [(p, self._cuda_options()) if p == CUDA else p for p in wanted]
        try:
            session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own kinds
            raise ModelLoadError(f"ONNX Runtime cannot load {path.name}: {exc}") from None
        return session, session.get_providers()

    def _check_probe(self, manifest: dict[str, Any]) -> None:
        """Re-embed the probe image: the vision tower and preprocessing must still give its embedding."""
        probe = manifest["probe"]
        path = self.folder / probe["file"]
        if not path.exists() or sha256_file(path) != probe["sha256"]:
            raise ModelLoadError(f"the probe image {path.name} is missing or changed; re-export with "
                                 f"`{layout.EXPORT_COMMAND}`")
        assert self.preprocess is not None  # load() set it first
        with Image.open(path) as image:
            pixels = self.preprocess(image.convert("RGB"))[None]
        got = self._embed(pixels)[0]
        key = "probe_embedding" if self.precision == "int8" else None
        expected = np.asarray(manifest["vision_int8"][key] if key else probe["embedding"], dtype=np.float64)
        got = got.astype(np.float64)
        self.probe_cosine = float(got @ expected / max(np.linalg.norm(got) * np.linalg.norm(expected), 1e-12))
        if not self.probe_cosine >= self.probe_tolerance:
            message = (
                f"the probe image's embedding does not match the manifest (cosine {self.probe_cosine:.5f} < "
                f"{self.probe_tolerance}): the vision tower or preprocessing is not the one these text embeddings "
                f"were exported with; re-export with `{layout.EXPORT_COMMAND}`"
            )
            log.error("siglip probe mismatch", extra=fields(cosine=self.probe_cosine, tolerance=self.probe_tolerance))
            raise ModelLoadError(message)

    # -- inference ------------------------------------------------------------------------
    def _embed(self, pixels: np.ndarray) -> np.ndarray:
        if self.torch_tower is not None:
            return self.torch_tower(pixels)
        return self.session.run(None, {"pixel_values": np.ascontiguousarray(pixels, dtype=np.float32)})[0]

    def prepare(self, image: Image.Image, request: Any) -> ImageItem:
        include = bool(getattr(request, "include_embedding", False))
        labels = self.label_request(request.labels) if request is not None and request.HasField("labels") else None
        assert self.preprocess is not None  # load() ran
        return ImageItem(self.preprocess(image), include, labels)

    # -- texts ------------------------------------------------------------------------------
    def _check_text(self, text: str, field_name: str) -> str:
        if not text.strip():
            raise InvalidInput(f"{field_name} is empty: give words to embed", reason="FIELD_INVALID",
                               field=field_name)
        if len(text) > self.max_text_chars:
            raise InvalidInput(f"{field_name} has {len(text)} characters; at most {self.max_text_chars} "
                               "(ARCHIVETAG_SIGLIP_MAX_TEXT_CHARS; the model reads 64 tokens)",
                               reason="FIELD_INVALID", field=field_name,
                               metadata={"limit": self.max_text_chars, "setting": "ARCHIVETAG_SIGLIP_MAX_TEXT_CHARS"})
        return text

    def _no_text_tower(self) -> str:
        return f"this SigLIP export has no text tower; re-export it with `{layout.EXPORT_COMMAND}`"

    def label_request(self, label_set: Any) -> LabelRequest | None:
        """A LabelSet checked against the limits; None when it holds no labels."""
        if not label_set.labels:
            return None
        if self.text is None:
            raise InvalidInput(f"labels cannot be scored: {self._no_text_tower()}", reason="FIELD_INVALID",
                               field="labels")
        if len(label_set.labels) > self.max_labels:
            raise InvalidInput(f"labels.labels has {len(label_set.labels)} labels; at most {self.max_labels} "
                               "(ARCHIVETAG_SIGLIP_MAX_LABELS)", reason="FIELD_INVALID", field="labels.labels",
                               metadata={"limit": self.max_labels, "setting": "ARCHIVETAG_SIGLIP_MAX_LABELS"})
        template = label_set.template or DEFAULT_TEMPLATE
        if "{}" not in template:
            raise InvalidInput(f"labels.template {template!r} has no {{}} for the label's name",
                               reason="FIELD_INVALID", field="labels.template")
        labels, names, prompt_count = [], set(), 0
        for i, label in enumerate(label_set.labels):
            name = self._check_text(label.name, f"labels.labels[{i}].name").strip()
            if name in names:
                raise InvalidInput(f"labels.labels[{i}].name {name!r} is used twice", reason="FIELD_INVALID",
                                   field=f"labels.labels[{i}].name")
            names.add(name)
            prompts = tuple(self._check_text(p, f"labels.labels[{i}].prompts[{j}]")
                            for j, p in enumerate(label.prompts)) or (template.replace("{}", name),)
            prompt_count += len(prompts)
            labels.append((name, prompts))
        if prompt_count > self.max_texts * 4:
            raise InvalidInput(f"the label set has {prompt_count} prompts; at most {self.max_texts * 4} "
                               "(4 x ARCHIVETAG_SIGLIP_MAX_TEXTS)", reason="FIELD_INVALID", field="labels.labels")
        return LabelRequest(tuple(labels))

    def prepare_text(self, texts: Sequence[str]) -> TextItem:
        """An EmbedText request's texts, checked and tokenized (off the event loop)."""
        if self.text is None:
            raise NotServing(f"EmbedText is unavailable: {self._no_text_tower()}",
                             metadata={"model": self.family, "phase": "no_text_tower"})
        if not texts:
            raise InvalidInput("texts is empty: give at least one text", reason="FIELD_INVALID", field="texts")
        if len(texts) > self.max_texts:
            raise InvalidInput(f"texts has {len(texts)} entries; at most {self.max_texts} per request "
                               "(ARCHIVETAG_SIGLIP_MAX_TEXTS)", reason="FIELD_INVALID", field="texts",
                               metadata={"limit": self.max_texts, "setting": "ARCHIVETAG_SIGLIP_MAX_TEXTS"})
        checked = [self._check_text(text, f"texts[{i}]") for i, text in enumerate(texts)]
        return TextItem(self.text.tokenizer(checked))

    def _label_embeddings(self, requests: list[LabelRequest]) -> dict[str, np.ndarray]:
        """Every prompt's embedding, from the cache or embedded now (one text-tower run for the batch)."""
        assert self.text is not None
        found: dict[str, np.ndarray] = {}
        missing: list[str] = []
        for request in requests:
            for _, prompts in request.labels:
                for prompt in prompts:
                    if prompt in found or prompt in missing:
                        continue
                    row = self.label_cache.get(prompt)
                    if row is None:
                        missing.append(prompt)
                    else:
                        found[prompt] = row
        if missing:
            for prompt, row in zip(missing, self.text.embed(missing)):
                found[prompt] = row
                self.label_cache.put(prompt, row)
        return found

    def infer_batch(self, items: list[Any], abandoned: Callable[[], bool]) -> Sequence[Any]:
        if abandoned():
            return abandoned_batch(len(items))
        results: list[Any] = [None] * len(items)
        images = [i for i, item in enumerate(items) if isinstance(item, ImageItem)]
        texts = [i for i, item in enumerate(items) if isinstance(item, TextItem)]
        if images:
            batch = [items[i] for i in images]
            embeddings = self._embed(np.stack([item.pixels for item in batch]))
            views = view_types(embeddings, self.class_embeddings, self.classes, self.logit_scale, self.logit_bias,
                               self.thresholds)
            asked = [item.labels for item in batch if item.labels is not None]
            prompts = self._label_embeddings(asked) if asked else {}
            for index, item, view, embedding in zip(images, batch, views, embeddings):
                scores = []
                if item.labels is not None:
                    names = [name for name, _ in item.labels.labels]
                    rows = np.stack([normalize(np.mean([prompts[p] for p in ps], axis=0))
                                     for _, ps in item.labels.labels])
                    scores = label_scores(embedding, rows, names, self.logit_scale, self.logit_bias)
                results[index] = SiglipViewResult(view.view_type, view.confidence, view.scores,
                                                  view.embedding if item.include_embedding else [], scores)
            if log.isEnabledFor(logging.DEBUG):  # raw logits: thresholds depend on the checkpoint
                log.debug("siglip batch", extra=fields(
                    size=len(batch), logits=[{n: round(logit, 3) for n, _, logit in r.scores} for r in views]))
        if texts:
            assert self.text is not None  # prepare_text refused otherwise
            counts = [len(items[i].ids) for i in texts]
            embedded = self.text.embed_ids(np.concatenate([items[i].ids for i in texts]))
            start = 0
            for index, count in zip(texts, counts):
                results[index] = TextResult(embedded[start:start + count], self.logit_scale, self.logit_bias)
                start += count
        return results

    # -- identity ---------------------------------------------------------------------------
    def identity(self) -> common_pb2.ModelIdentity:
        model = self.manifest.get("model", {})
        return model_identity(
            self.family, self.folder, default_name=model.get("id", "siglip"),
            default_revision=model.get("revision", ""), weights_sha256=self.onnx_sha256,
            device=self._device_name(), dtype=self._dtype_name(),
        )

    def _dtype_name(self) -> str:
        if self.torch_tower is not None:
            return self.torch_tower.dtype_name
        return "int8" if self.precision == "int8" else "float32"

    def _device_name(self) -> str:
        if self.torch_tower is not None:
            return self.torch_tower.device_name
        if CUDA not in self.providers:
            return "cpu"
        return f"cuda:{self._cuda_options().get('device_id', '0')}"

    def describe(self) -> dict[str, str]:
        return {
            "unknown_threshold": str(self.thresholds.unknown),
            "min_match_probability": str(self.thresholds.min_match),
            "precision": self.precision,
            "runtime": self.runtime,
            "runtime_setting": self.runtime_setting,
            "dtype": self._dtype_name(),
            "providers": ",".join(self.providers),
            "ort_threads": str(self.ort_threads),
            "ort_spinning": str(self.ort_spinning).lower(),
            "probe_cosine": f"{self.probe_cosine:.6f}",
            "probe_tolerance": str(self.probe_tolerance),
            "logit_scale": f"{self.logit_scale:.6f}",
            "logit_bias": f"{self.logit_bias:.6f}",
            "manifest": str(self.folder / layout.MANIFEST),
            "text_padding": "max_length",
            "text_tower": "yes" if self.text is not None else "no (re-export)",
            "text_probe_cosine": f"{self.text_probe_cosine:.6f}",
            "max_texts": str(self.max_texts),
            "max_text_chars": str(self.max_text_chars),
            "max_labels": str(self.max_labels),
            "label_cache_size": str(self.label_cache.size),
        }

    def vocabulary(self) -> list[str]:
        return list(self.classes)


def create_backend(settings) -> SiglipBackend:
    return SiglipBackend(settings)
