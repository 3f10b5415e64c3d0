"""A smoke Florence-2: the real architecture at a tiny size, random weights, offline tokenizer.

The tokenizer is a byte-level BPE trained with `tokenizers` on real words and padded with
filler tokens so that every special id sits where Florence-2 expects it (`<mask>` 50264,
`<loc_0>` 50269, `<image>` 51289). The random model is nudged, through the decoder's last
layer-norm bias and one embedding column, towards the whole-word tokens, so its captions are
real words and some of them are vocabulary tags: the tags are meaningless, the pipeline is real.
"""

from __future__ import annotations

from pathlib import Path

from archivetag.bundled import smoke_vocabulary
from archivetag.runtime.model_card import ModelCard
from archivetag_florence.layout import (
    IMAGE_TOKEN_ID,
    MASK_ID,
    NATIVE_VOCAB,
    VOCABULARY_FILE,
    build_processor,
    with_florence_tokens,
)

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")

SMOKE_IMAGE_EDGE = 768
WORD_BIAS = 6.0  # how strongly the random model prefers whole-word tokens


def build_tokenizer(words: list[str]):
    """A BartTokenizer whose BPE was trained offline on `words`, with Florence-2's special ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import BartTokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=12000, min_frequency=1, special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    corpus = [" " + " ".join(words)] * 4 + [" " + w for w in words] * 2 + [" ".join(words)]
    bpe.train_from_iterator(corpus, trainer)
    vocab = dict(bpe.get_vocab())
    if len(vocab) >= MASK_ID:
        raise ValueError("smoke tokenizer vocabulary too large")
    state = __import__("json").loads(bpe.to_str())
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["model"]["merges"]]
    # Fillers: unreachable by merges, they only move <mask> and the added tokens to the real ids.
    for filler in range(len(vocab), MASK_ID):
        vocab[f"<unused_{filler}>"] = filler
    vocab["<mask>"] = MASK_ID
    return with_florence_tokens(BartTokenizer(vocab=vocab, merges=merges))


def smoke_processor(tokenizer, edge: int = SMOKE_IMAGE_EDGE):
    return build_processor(tokenizer, {"height": edge, "width": edge})


def tiny_config():
    """Florence2Config of the real architecture with tiny dimensions."""
    from transformers import BartConfig, Florence2Config, Florence2VisionConfig

    d_model = 32
    vision = Florence2VisionConfig(
        depths=[1, 1, 1, 1], embed_dim=[8, 16, 16, 32], num_heads=[1, 2, 2, 4], num_groups=[1, 2, 2, 4],
        projection_dim=d_model, window_size=12, drop_path_rate=0.0, max_position_embeddings=50,
    )
    text = BartConfig(
        vocab_size=NATIVE_VOCAB, d_model=d_model, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_position_embeddings=1024, bos_token_id=0, pad_token_id=1, eos_token_id=2,
        decoder_start_token_id=2, forced_bos_token_id=0, forced_eos_token_id=2,
        scale_embedding=False, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
    )
    return Florence2Config(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN_ID,
                           bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2)


# Florence-2-base and -large's published dimensions (docs/models/florence.md).
FULL_SIZES = {
    "base": dict(embed_dim=[128, 256, 512, 1024], heads=[4, 8, 16, 32], d_model=768, layers=6, text_heads=12,
                 ffn=3072),
    "large": dict(embed_dim=[256, 512, 1024, 2048], heads=[8, 16, 32, 64], d_model=1024, layers=12, text_heads=16,
                  ffn=4096),
}


def full_size_config(size: str):
    """Florence2Config of Florence-2-base or -large at full size (for parity, speed and memory checks)."""
    from transformers import BartConfig, Florence2Config, Florence2VisionConfig

    s = FULL_SIZES[size]
    vision = Florence2VisionConfig(embed_dim=s["embed_dim"], num_heads=s["heads"], num_groups=s["heads"],
                                   depths=[1, 1, 9, 1], projection_dim=s["d_model"], drop_path_rate=0.0)
    text = BartConfig(vocab_size=51328, d_model=s["d_model"], encoder_layers=s["layers"], decoder_layers=s["layers"],
                      encoder_attention_heads=s["text_heads"], decoder_attention_heads=s["text_heads"],
                      encoder_ffn_dim=s["ffn"], decoder_ffn_dim=s["ffn"], max_position_embeddings=1024,
                      bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2)
    return Florence2Config(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN_ID,
                           bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2)


def word_token_ids(tokenizer, words: list[str]) -> list[int]:
    """Ids of the tokens that spell the words (with their leading space)."""
    ids: set[int] = set()
    for word in words:
        ids.update(tokenizer(" " + word, add_special_tokens=False)["input_ids"])
    return sorted(ids)


def bias_towards(model, token_ids: list[int], strength: float = WORD_BIAS) -> None:
    """Make the random decoder prefer `token_ids`: a constant hidden unit times an embedding column.

    The last decoder layer-norm's unit 0 is pinned to `strength`; column 0 of the (tied) token
    embedding is +1 for the preferred tokens and -1 elsewhere, so their logits gain 2*strength.
    """
    import torch

    with torch.no_grad():
        norm = model.model.language_model.decoder.layers[-1].final_layer_norm
        norm.weight[0] = 0.0
        norm.bias[0] = strength
        embedding = model.get_input_embeddings().weight
        embedding[:, 0] = -1.0
        embedding[token_ids, 0] = 1.0
        embedding[2, 0] = 0.3  # </s> now and then, so captions have different lengths


def write_random_checkpoint(target: Path, vocabulary: list[str], size: str | None = None,
                            min_new_tokens: int | None = None) -> None:
    """A random Florence-2 with its processor, saved as the hub checkpoints are (native layout): tiny, or at
    a full size (FULL_SIZES) for checks that need the real cost.

    Its tokenizer knows the words of `vocabulary`, so its captions can contain those tags."""
    import torch
    from transformers import Florence2ForConditionalGeneration, GenerationConfig

    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    words = sorted({word for tag in vocabulary for word in tag.split()} | {"a", "the", "of", "with", "and", "in"})
    tokenizer = build_tokenizer(words)
    processor = smoke_processor(tokenizer)

    torch.manual_seed(0)
    config = tiny_config() if size is None else full_size_config(size)
    config._name_or_path = ModelCard.smoke_name("florence") if size is None else full_size_name(size)
    model = Florence2ForConditionalGeneration(config).eval()
    bias_towards(model, word_token_ids(tokenizer, words))
    model.generation_config = GenerationConfig(
        bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2,
        forced_bos_token_id=0, forced_eos_token_id=2, no_repeat_ngram_size=3, num_beams=1,
        max_new_tokens=20, min_new_tokens=min_new_tokens,
    )
    model.save_pretrained(target)
    processor.save_pretrained(target)


def full_size_name(size: str) -> str:
    return f"florence-2-{size}-architecture-random"


def write_full_size_model(target: Path, size: str = "base", min_new_tokens: int | None = None) -> None:
    """Florence-2-base or -large's architecture with random weights, speaking words as the smoke model does, with
    the smoke vocabulary; its model card says smoke (random weights), its name says the size. min_new_tokens:
    every caption at least this long (a speed check's fixed cost; the service's --florence-max-new-tokens caps it)."""
    target = Path(target)
    vocabulary = smoke_vocabulary()
    write_random_checkpoint(target, vocabulary, size, min_new_tokens)
    (target / VOCABULARY_FILE).write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    card = ModelCard(family="florence", name=full_size_name(size), smoke=True, source="archivetag_florence.smoke")
    card.write(target)


def write_smoke_model(target: Path, tag_list: Path | None = None, thresholds: Path | None = None) -> None:
    """Write a tiny random Florence-2 (native layout) with its processor into `target`."""
    target = Path(target)
    if tag_list is not None:
        vocabulary = [line.strip() for line in Path(tag_list).read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        vocabulary = smoke_vocabulary()
    write_random_checkpoint(target, vocabulary)
    (target / VOCABULARY_FILE).write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    ModelCard.for_smoke("florence").write(target)

