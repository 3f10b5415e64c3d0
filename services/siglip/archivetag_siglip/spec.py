"""SigLIP, view type: the one declaration of this model service (runtime/specs.py)."""

from archivetag.runtime.settings import Option, OptionGroup, parse_bool
from archivetag.runtime.specs import VIEW_TYPE, Deployment, PullSource, ServerSpec

OPTIONS = OptionGroup(
    "siglip",
    (
        Option(
            "siglip_unknown_threshold", 0.4,
            "Answer 'unknown' when the top class's softmax probability is below this (ambiguous photo; "
            "chance is 1 / number of classes). 0 turns it off.",
            float,
        ),
        Option(
            "siglip_min_match_probability", 0.0,
            "Answer 'unknown' when the top class's sigmoid probability (does the description fit at all) "
            "is below this. Depends on the checkpoint; 0 turns it off.",
            float,
        ),
        Option("siglip_ort_threads", 0, "ONNX Runtime intra-op threads; 0: the library's default.", int),
        Option(
            "siglip_ort_spinning", False,
            "Let ONNX Runtime's CPU threads spin while they wait for work (its own default: lower latency on "
            "cores nobody else needs). Off: they sleep, and leave the cores to the taggers beside them "
            "(docs/models/cpu.md).",
            parse_bool,
        ),
        Option(
            "siglip_precision", "auto",
            "Vision tower to run: fp32 (vision.onnx) or int8 (vision-int8.onnx, made by `models pull` and "
            "`archivetag models export-siglip --int8`; about 2x faster on a CPU, check it on your checkpoint "
            "first). auto: int8 when the tower runs on a CPU and the export has it, else fp32 (docs/models/cpu.md).",
            choices=("auto", "fp32", "int8"),
        ),
        Option(
            "siglip_runtime", "auto",
            "What runs the vision tower: onnx (ONNX Runtime, vision.onnx), torch (torch and transformers over the "
            "same export's vision_torch/ weights, at --dtype; for a CUDA box whose onnxruntime has no CUDA "
            "provider) or auto: onnx, unless ONNX Runtime has no CUDA provider, --device is auto or cuda and "
            "torch sees a CUDA device. Either way the probe image must re-embed to the export's embedding; the "
            "text tower stays on ONNX Runtime (docs/models/siglip.md).",
            choices=("auto", "onnx", "torch"),
        ),
        Option("siglip_max_texts", 64,
               "Most texts one EmbedText request may carry (and a quarter of the prompts one label set may); "
               "beyond: INVALID_ARGUMENT.", int),
        Option("siglip_max_text_chars", 1000,
               "Longest text (characters) EmbedText or a label accepts; beyond: INVALID_ARGUMENT. The model "
               "reads 64 tokens of it.", int),
        Option("siglip_max_labels", 256, "Most labels one request's label set may hold; beyond: INVALID_ARGUMENT.",
               int),
        Option("siglip_label_cache_size", 4096,
               "Label prompt embeddings kept in memory (least recently used dropped; 4096 of 768 floats is "
               "about 12 MiB); 0: embed every request's labels again.", int),
        Option(
            "siglip_probe_tolerance", 0.995,
            "At start the probe image is re-embedded; refuse to serve when its cosine to the exported "
            "embedding is below this (fp16 on a GPU still passes).",
            float,
        ),
    ),
)


DEFAULT_MODEL = "google/siglip-base-patch16-224"
PULL_OPTIONS = OptionGroup("siglip", (
    Option("siglip_model", DEFAULT_MODEL,
           "SigLIP checkpoint (hub id) to pull and export: a SigLIP or a SigLIP 2 FixRes one, e.g. "
           "google/siglip2-base-patch16-224 (multilingual, Gemma tokenizer; docs/search.md). Only the default "
           "is pinned; another is pulled at its main branch unless --revision siglip=COMMIT.", metavar="REPO"),
))

SPEC = ServerSpec(
    name="siglip",
    title="SigLIP",
    capability=VIEW_TYPE,
    port=50054,
    metrics_port=9154,
    app="archivetag_siglip.backend:create_backend",
    options=(OPTIONS,),
    distribution="archivetag-siglip",
    smoke="archivetag_siglip.smoke:write_smoke_model",
    commands="archivetag_siglip.commands:add_commands",
    pull=PullSource(
        repo=lambda options: options.siglip_model,
        patterns=("*.json", "*.model", "*.safetensors"),
        required=("config.json", "*.safetensors"),
        build="archivetag_siglip.commands:build_pulled",
        pinned={DEFAULT_MODEL: "7fd15f0689c79d79e38b1c2e2e2370a7bf2761ed"},
        converted=True,
        options=(PULL_OPTIONS,),
    ),
    deployment=Deployment(start_seconds=300, memory_request="2Gi", memory_limit="4Gi"),
    extras=("export",),
)
