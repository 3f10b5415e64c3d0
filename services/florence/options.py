"""Settings of the florence service (flags and ARCHIVETAG_* variables)."""

from archivetag.runtime.settings import Option, OptionGroup, parse_path

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
        Option("florence_num_beams", 3, "Beam search width; 1 is greedy (fastest).", int),
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

OPTION_GROUPS = [OPTIONS]
