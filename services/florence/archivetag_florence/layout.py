"""Florence-2's fixed layout: the files our model folders carry, token ids, and the processor.

One place for the facts the converter (real checkpoints) and the smoke model both rely on
(docs/models/florence.md): `<mask>` 50264, `<loc_0>` 50269, `<image>` 51289, embeddings
padded to 51328, a processor of 768×768 bicubic, ImageNet mean/std, no crop.
"""

from __future__ import annotations

import tempfile

# Files beside the weights in <models>/florence.
VOCABULARY_FILE = "tag_vocabulary.txt"  # the tag vocabulary (pull copies the RAM++ list here)

MASK_ID = 50264  # BART's last token; BART has MASK_ID + 1 tokens
ORIGINAL_VOCAB = 51289  # microsoft/Florence-2-*: BART + Florence-2's 1024 added tokens
IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_ID = 51289
NATIVE_VOCAB = 51328  # 51290 padded to a multiple of 64, as in the native checkpoints

# Florence-2's added tokens, in its order: 4 task markers, 1000 locations, 20 more; then <image>.
_HEAD = ("<od>", "</od>", "<ocr>", "</ocr>")
_TAIL = (
    "<cap>", "</cap>", "<ncap>", "</ncap>", "<dcap>", "</dcap>", "<grounding>", "</grounding>",
    "<seg>", "</seg>", "<sep>", "<region_cap>", "</region_cap>", "<region_to_desciption>",
    "</region_to_desciption>", "<proposal>", "</proposal>", "<poly>", "</poly>", "<and>",
)
EXPECTED_IDS = {"<mask>": MASK_ID, "<loc_0>": 50269, "<and>": IMAGE_TOKEN_ID - 1, IMAGE_TOKEN: IMAGE_TOKEN_ID}

# Every parse task of Florence2PostProcessor, so post_process_generation never says "Unsupported".
POST_PROCESSOR_CONFIG = {
    "ocr": {"PATTERN": r"(.+?)<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>",
            "AREA_THRESHOLD": 0.0},
    "phrase_grounding": {"FILTER_BY_BLACK_LIST": True},
    "pure_text": {},
    "description_with_bboxes": {},
    "description_with_polygons": {},
    "polygons": {},
    "bboxes": {},
    "description_with_bboxes_or_polygons": {},
}
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def special_token_list() -> list[str]:
    return [*_HEAD, *(f"<loc_{i}>" for i in range(1000)), *_TAIL]


def with_florence_tokens(tokenizer):
    """A BartTokenizer with Florence-2's added tokens and `<image>` (added where missing), each at its id.

    Raises ValueError naming the ids when the base vocabulary puts them elsewhere."""
    from transformers import BartTokenizer

    if tokenizer.convert_tokens_to_ids("<loc_0>") in (None, tokenizer.unk_token_id):
        tokenizer.add_special_tokens({"additional_special_tokens": special_token_list()})
    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) in (None, tokenizer.unk_token_id):
        tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    # Round trip so that `image_token` becomes a named special token at its final id.
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        tokenizer = BartTokenizer.from_pretrained(tmp, image_token=IMAGE_TOKEN)
    got = {token: tokenizer.convert_tokens_to_ids(token) for token in EXPECTED_IDS}
    if got != EXPECTED_IDS:
        raise ValueError(
            f"the tokenizer's Florence-2 special tokens are not at the expected ids: {got} != {EXPECTED_IDS}")
    return tokenizer


def build_processor(tokenizer, size: dict | None = None, resample: int = 3, rescale_factor: float = 1 / 255,
                    image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, image_seq_length: int | None = None):
    """A Florence2Processor: CLIP-style image settings (no crop) and every post-processing task."""
    from transformers import CLIPImageProcessor, Florence2Processor

    size = size or {"height": 768, "width": 768}
    image_processor = CLIPImageProcessor(
        do_resize=True, size=size, resample=resample, do_center_crop=False, do_rescale=True,
        rescale_factor=rescale_factor, do_normalize=True, image_mean=image_mean, image_std=image_std,
        do_convert_rgb=True, crop_size=size,
    )
    image_processor.image_seq_length = image_seq_length or (size["height"] // 32) ** 2 + 1
    return Florence2Processor(
        image_processor=image_processor, tokenizer=tokenizer, num_additional_image_tokens=1,
        post_processor_config=POST_PROCESSOR_CONFIG,
    )
