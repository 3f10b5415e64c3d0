"""A smoke SigLIP: the real architecture at a tiny size, random weights, built offline.

A SentencePiece tokenizer is trained here on the prompts and a building vocabulary, wrapped
as transformers' SiglipTokenizer; the checkpoint is saved in the official on-disk format and
exported by the same exporter as real checkpoints, with "smoke": true in the manifest.
"""

from __future__ import annotations

import io
import json
import math
import tempfile
from pathlib import Path

from archivetag.bundled import smoke_vocabulary
from archivetag.runtime.model_card import ModelCard
from archivetag_siglip.prompts import DEFAULT_CLASSES

IMAGE_SIZE = 64
# Realistic scoring parameters (google/siglip-base-patch16-224 has exp(scale) ≈ 112, bias ≈ -17):
# a fresh SiglipModel has 0 and 0, which makes every sigmoid 0.5.
LOGIT_SCALE = math.log(112.0)
LOGIT_BIAS = -10.0


def train_tokenizer(folder: Path, extra_text: list[str] | None = None) -> Path:
    """A SentencePiece unigram model with SigLIP's special tokens (pad 0, eos 1, unk 2)."""
    import sentencepiece as spm

    corpus = [p for prompts in DEFAULT_CLASSES.values() for p in prompts] + smoke_vocabulary() + (extra_text or [])
    corpus = [line.lower() for line in corpus]
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus * 4), model_writer=buffer, vocab_size=400, hard_vocab_limit=False,
        model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", minloglevel=2, num_threads=1,
    )
    path = folder / "spiece.model"
    path.write_bytes(buffer.getvalue())
    return path


GEMMA_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")  # ids 0-4, as in Gemma's vocabulary


def train_gemma_tokenizer(folder: Path, extra_text: list[str] | None = None, model_max_length: int = 64):
    """A small Gemma-style tokenizer (BPE with byte fallback, "▁" for spaces, Gemma's special ids) saved as
    transformers' GemmaTokenizer with SigLIP 2's settings: no <bos>, <eos> appended, padded on the right
    (how google/siglip2-* checkpoints were converted). The vocabulary is ours and small; ids stay < 256000."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import GemmaTokenizer

    corpus = [p for prompts in DEFAULT_CLASSES.values() for p in prompts] + smoke_vocabulary() + (extra_text or [])
    corpus += ["Ein Foto eines Krankenhauses.", "une photo d'une église.", "una foto de una fábrica.", "病院の写真"]
    trainer_model = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    trainer_model.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(" ", "\u2581")])
    trainer_model.pre_tokenizer = pre_tokenizers.Split(pattern="\u2581", behavior="merged_with_next")
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=[*GEMMA_SPECIALS, *byte_tokens],
                                  show_progress=False, min_frequency=1)
    trainer_model.train_from_iterator(corpus * 4, trainer=trainer)
    trained = json.loads(trainer_model.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tokenizer = GemmaTokenizer(vocab=trained["vocab"], merges=merges, add_bos_token=False, add_eos_token=True,
                               padding_side="right", model_max_length=model_max_length)
    tokenizer.save_pretrained(str(folder))
    return tokenizer


TINY_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
TINY_VISION = {"patch_size": 16, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4}


def write_random_checkpoint(folder: Path, seed: int = 0, image_size: int = IMAGE_SIZE,
                          extra_text: list[str] | None = None, full_size: bool = False, siglip2: bool = False) -> Path:
    """A random-weight SiglipModel with tokenizer and image processor, saved like a hub checkpoint.

    full_size: siglip-base-patch16-224's architecture (transformers' defaults) instead of the tiny one.
    siglip2: a SigLIP 2 FixRes checkpoint (google/siglip2-base-patch16-224's layout: model_type "siglip",
    Gemma tokenizer, 256000-token vocabulary when full size)."""
    import torch
    from transformers import SiglipConfig, SiglipModel, SiglipTokenizer
    from transformers.models.siglip.image_processing_siglip import SiglipImageProcessor

    folder.mkdir(parents=True, exist_ok=True)
    text: dict[str, int | None]
    if siglip2:
        tokenizer = train_gemma_tokenizer(folder, extra_text)
        text = {"vocab_size": 256000 if full_size else len(tokenizer), "max_position_embeddings": 64,
                "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2, **({} if full_size else TINY_TEXT)}
    else:
        tokenizer = SiglipTokenizer(vocab_file=str(train_tokenizer(folder, extra_text)), model_max_length=64)
        text = {"vocab_size": len(tokenizer), "max_position_embeddings": 64, "pad_token_id": 1, "eos_token_id": 1,
                "bos_token_id": None, **({} if full_size else TINY_TEXT)}
    vision = {"image_size": image_size, **({} if full_size else TINY_VISION)}
    torch.manual_seed(seed)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()
    with torch.no_grad():
        model.logit_scale.fill_(LOGIT_SCALE)
        model.logit_bias.fill_(LOGIT_BIAS)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    SiglipImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(str(folder))
    return folder


def write_smoke_model(target: Path, tag_list: Path | None = None, thresholds: Path | None = None) -> None:
    """Write the smoke model's exported folder into target (<models>/siglip). tag_list is not used."""
    from transformers.utils import logging as transformers_logging

    from archivetag_siglip.export import export_folder

    transformers_logging.set_verbosity_error()  # config and progress chatter about a throwaway checkpoint
    transformers_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_random_checkpoint(Path(tmp) / "checkpoint")
        export_folder(str(checkpoint), Path(target), model_id=ModelCard.smoke_name("siglip"))
    ModelCard.for_smoke("siglip").write(Path(target))


def write_full_size_model(target: Path, int8: bool = False, text_tower: bool = False) -> None:
    """siglip-base-patch16-224's architecture with random weights, exported as the service exports it (vision
    tower; the int8 one and the text tower when asked): for checks that need the real cost."""
    from archivetag_siglip.export import export_folder

    name = "siglip-base-patch16-224-architecture-random"
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_random_checkpoint(Path(tmp) / "checkpoint", image_size=224, full_size=True)
        export_folder(str(checkpoint), Path(target), model_id=name, int8=int8, text_tower=text_tower)
    ModelCard(family="siglip", name=name, smoke=True, source="archivetag_siglip.smoke").write(Path(target))
