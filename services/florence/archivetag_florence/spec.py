"""Florence-2, caption and tags: the one declaration of this model service (runtime/specs.py)."""

from archivetag.runtime.settings import Option, OptionGroup, parse_path
from archivetag.runtime.specs import TAGGER, Deployment, PullSource, ServerSpec

# Tasks whose answer is plain text: the ones a caption (and so tags) can come from.
CAPTION_TASKS = ("<MORE_DETAILED_CAPTION>", "<DETAILED_CAPTION>", "<CAPTION>")

OPTIONS = OptionGroup(
    "florence",
    (
        Option("florence_task", "<MORE_DETAILED_CAPTION>", "Florence-2 caption task prompt.", choices=CAPTION_TASKS),
        Option("florence_max_new_tokens", 64, "Most tokens generated per caption.", int),
        Option("florence_ocr_max_new_tokens", 256,
               "Most tokens generated per OCR answer (a request's ocr option; each region also takes 8 location "
               "tokens).", int),
        Option("florence_num_beams", 0,
               "Beam search width; 1 is greedy (fastest). 0: 3 on a GPU, 1 on a CPU, where greedy search tags "
               "about 1.3x the photos an hour of 3 beams (docs/models/cpu.md).", int),
        Option(
            "florence_tag_vocabulary", None,
            "Tag vocabulary, one tag per line. Default: <models>/florence/tag_vocabulary.txt, "
            "else RAM++'s <models>/rampp/ram_tag_list.txt, else the RAM++ list shipped with archivetag "
            "(so both taggers speak the same tags).",
            parse_path, metavar="FILE",
        ),
        Option("florence_min_confidence", 0.0,
               "Tags at or below this confidence are left out unless a request sets its own threshold.", float),
        Option("florence_attn_implementation", "sdpa", "Attention kernel (never needs flash_attn).",
               choices=("sdpa", "eager")),
    ),
)


# Both sizes in the native transformers layout; the original microsoft/Florence-2-* layout converts
# offline (`archivetag models convert-florence`). Not pinned to a commit yet: pulled at `main`, and
# the commit that resolves to is recorded in the model card.
REPOS = {"base": "florence-community/Florence-2-base", "large": "florence-community/Florence-2-large"}
PULL_OPTIONS = OptionGroup("florence", (
    Option("florence_variant", "base", "Florence-2 size to pull.", choices=tuple(REPOS)),
))

SPEC = ServerSpec(
    name="florence",
    title="Florence-2",
    capability=TAGGER,
    port=50052,
    metrics_port=9152,
    app="archivetag_florence.backend:create_backend",
    options=(OPTIONS,),
    distribution="archivetag-florence",
    needs_torch=True,
    priority=10,  # the primary tagger: captions and tags
    smoke="archivetag_florence.smoke:write_smoke_model",
    commands="archivetag_florence.commands:add_commands",
    pull=PullSource(
        repo=lambda options: REPOS[options.florence_variant],
        patterns=("*.json", "*.txt", "*.safetensors"),
        required=("config.json", "*.safetensors"),
        build="archivetag_florence.commands:build_pulled",
        needs_tag_data=True,
        options=(PULL_OPTIONS,),
    ),
    deployment=Deployment(start_seconds=900, memory_request="8Gi", memory_limit="16Gi"),
)
