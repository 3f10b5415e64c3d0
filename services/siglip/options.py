"""Settings of the siglip service (flags and ARCHIVETAG_* variables)."""

from archivetag.runtime.settings import Option, OptionGroup

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
            "siglip_precision", "fp32",
            "Vision tower to run: fp32 (vision.onnx) or int8 (vision-int8.onnx, made by "
            "`archivetag models export-siglip --int8`; faster on CPU, check it on your checkpoint first).",
            choices=("fp32", "int8"),
        ),
        Option(
            "siglip_probe_tolerance", 0.995,
            "At start the probe image is re-embedded; refuse to serve when its cosine to the exported "
            "embedding is below this (fp16 on a GPU still passes).",
            float,
        ),
    ),
)

OPTION_GROUPS = [OPTIONS]
