"""RAM++, tags: the one declaration of this model service (runtime/specs.py)."""

from archivetag.runtime.settings import Option, OptionGroup, parse_path
from archivetag.runtime.specs import TAGGER, Deployment, PullSource, ServerSpec

OPTIONS = OptionGroup(
    "rampp",
    (
        Option(
            "rampp_weights", None,
            "RAM++ weights: a converted model.safetensors (fast) or the official ram_plus_swin_large_14m.pth; "
            "default: whichever of the two is in <models>/rampp.", parse_path, metavar="FILE",
        ),
        Option("rampp_tag_list", None,
               "Tag names, one per line; default <models>/rampp/ram_tag_list.txt, "
               "else the official list shipped with archivetag.",
               parse_path, metavar="FILE"),
        Option(
            "rampp_thresholds", None,
            "Per-tag thresholds, one per line; default beside the tag list in use "
            "(<models>/rampp/ram_tag_list_threshold.txt, "
            "or the official thresholds shipped with archivetag).",
            parse_path, metavar="FILE",
        ),
    ),
)


REPO = "xinyu1205/recognize-anything-plus-model"

SPEC = ServerSpec(
    name="rampp",
    title="RAM++",
    capability=TAGGER,
    port=50053,
    metrics_port=9153,
    app="archivetag_rampp.backend:create_backend",
    options=(OPTIONS,),
    distribution="archivetag-rampp",
    needs_torch=True,
    priority=20,  # the fallback tagger: tags without a caption, faster
    smoke="archivetag_rampp.smoke:write_smoke_model",
    commands="archivetag_rampp.commands:add_commands",
    pull=PullSource(
        repo=lambda options: REPO,
        patterns=("ram_plus_swin_large_14m.pth",),
        required=("*.pth",),
        build="archivetag_rampp.commands:build_pulled",
        pinned={REPO: "84d4aee3a0265c4e0df1f714f0572011d1bf2ec3"},
        converted=True,
        needs_tag_data=True,
    ),
    deployment=Deployment(start_seconds=600, memory_request="6Gi", memory_limit="12Gi"),
)
