"""Settings of the rampp service (flags and ARCHIVETAG_* variables)."""

from archivetag.runtime.settings import Option, OptionGroup, parse_path

OPTIONS = OptionGroup(
    "rampp",
    (
        Option(
            "rampp_weights", None,
            "RAM++ weights: a converted model.safetensors (fast) or the official ram_plus_swin_large_14m.pth; "
            "default: whichever of the two is in <models>/rampp.", parse_path, metavar="FILE",
        ),
        Option("rampp_tag_list", None, "Tag names, one per line; default <models>/rampp/ram_tag_list.txt, else the official list shipped with archivetag.",
               parse_path, metavar="FILE"),
        Option(
            "rampp_thresholds", None,
            "Per-tag thresholds, one per line; default beside the tag list in use (<models>/rampp/ram_tag_list_threshold.txt, "
            "or the official thresholds shipped with archivetag).",
            parse_path, metavar="FILE",
        ),
    ),
)

OPTION_GROUPS = [OPTIONS]
