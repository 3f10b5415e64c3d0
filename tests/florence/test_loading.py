"""Loading through the service's own code: native checkpoints load, anything that would be random is refused."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from archivetag.stack import archivetag_command
from archivetag.runtime.errors import ModelLoadError
from archivetag_florence.convert import ORIGINAL_VOCAB, to_original_state_dict
from archivetag_florence.loading import load_florence
from tests.florence import tiny_models_dir

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def native_dir() -> Path:
    return tiny_models_dir() / "florence"


def inputs(processor, seed: int = 0):
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(48, 64, 3, generator=g) * 255).to(torch.uint8).numpy()
    batch = processor(text=["<CAPTION>"], images=[Image.fromarray(pixels)], return_tensors="pt")
    batch["decoder_input_ids"] = torch.tensor([[2, 0, 600, 601, 602]])
    return batch


def logits(loaded, batch):
    with torch.no_grad():
        return loaded.model(**batch).logits


def write_original_layout(native: Path, target: Path) -> None:
    """What a microsoft/Florence-2-* folder of the same weights looks like (inverse mapping)."""
    target.mkdir(parents=True)
    config = json.loads((native / "config.json").read_text())
    vision, text = config["vision_config"], dict(config["text_config"])
    text.update(vocab_size=ORIGINAL_VOCAB, forced_bos_token_id=0, no_repeat_ngram_size=3, num_beams=3)
    original = {
        "architectures": ["Florence2ForConditionalGeneration"], "model_type": "florence2",
        "auto_map": {"AutoConfig": "configuration_florence2.Florence2Config",
                     "AutoModelForCausalLM": "modeling_florence2.Florence2ForConditionalGeneration"},
        "projection_dim": vision["projection_dim"], "vocab_size": ORIGINAL_VOCAB, "text_config": text,
        "vision_config": {
            "model_type": "davit", "dim_embed": vision["embed_dim"], "num_heads": vision["num_heads"],
            "num_groups": vision["num_groups"], "depths": vision["depths"], "patch_size": vision["patch_size"],
            "patch_stride": vision["patch_stride"], "patch_padding": vision["patch_padding"],
            "patch_prenorm": vision["patch_prenorm"], "window_size": vision["window_size"],
            "projection_dim": vision["projection_dim"], "drop_path_rate": 0.0,
            "visual_temporal_embedding": {"type": "COSINE", "max_temporal_embeddings": vision["max_temporal_embeddings"]},
            "image_pos_embed": {"type": "learned_abs_2d", "max_pos_embeddings": vision["max_position_embeddings"]},
            "image_feature_source": ["spatial_avg_pool", "temporal_avg_pool"],
        },
    }
    (target / "config.json").write_text(json.dumps(original, indent=2))
    save_file(to_original_state_dict(load_file(str(native / "model.safetensors"))), str(target / "model.safetensors"))
    # The original ships BART's plain tokenizer; its remote processor added Florence's tokens at run time.
    tokenizer = json.loads((native / "tokenizer.json").read_text())
    (target / "vocab.json").write_text(json.dumps(tokenizer["model"]["vocab"]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    (target / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    processor = json.loads((native / "processor_config.json").read_text())["image_processor"]
    (target / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "processor_class": "Florence2Processor",
        "auto_map": {"AutoProcessor": "processing_florence2.Florence2Processor"},
        "size": processor["size"], "image_seq_length": processor.get("image_seq_length", 577),
        "image_mean": processor["image_mean"], "image_std": processor["image_std"], "resample": 3,
        "do_center_crop": False, "rescale_factor": 1 / 255,
    }))


def test_a_saved_tiny_model_loads_through_the_service_code_without_the_hub(native_dir):
    loaded = load_florence(native_dir, torch.device("cpu"), torch.float32)
    assert type(loaded.model).__name__ == "Florence2ForConditionalGeneration"
    assert type(loaded.processor).__name__ == "Florence2Processor"
    assert loaded.model.config._attn_implementation == "sdpa"
    assert logits(loaded, inputs(loaded.processor)).shape[-1] == 51328


def test_a_checkpoint_missing_a_weight_is_refused_naming_it(native_dir, tmp_path):
    broken = tmp_path / "florence"
    shutil.copytree(native_dir, broken)
    weights = load_file(str(broken / "model.safetensors"))
    del weights["model.multi_modal_projector.image_proj_norm.weight"]
    save_file(weights, str(broken / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="missing keys.*image_proj_norm.weight"):
        load_florence(broken, torch.device("cpu"), torch.float32)


def test_an_original_layout_checkpoint_is_refused_with_the_convert_command(native_dir, tmp_path):
    original = tmp_path / "original"
    write_original_layout(native_dir, original)
    with pytest.raises(ModelLoadError, match="archivetag models convert-florence SRC DST"):
        load_florence(original, torch.device("cpu"), torch.float32)


def test_an_original_layout_checkpoint_whose_config_was_made_native_is_still_refused_by_the_load_report(native_dir, tmp_path):
    original = tmp_path / "original"
    write_original_layout(native_dir, original)
    shutil.copyfile(native_dir / "config.json", original / "config.json")  # only the weights are original now
    with pytest.raises(ModelLoadError, match=r"missing keys.*unexpected keys"):
        load_florence(original, torch.device("cpu"), torch.float32)


def test_convert_florence_makes_an_original_checkpoint_load_with_the_same_logits(native_dir, tmp_path):
    original, converted = tmp_path / "original", tmp_path / "converted"
    write_original_layout(native_dir, original)
    names = set(load_file(str(original / "model.safetensors")))
    assert {"vision_tower.convs.0.proj.weight", "image_projection", "language_model.lm_head.weight",
            "vision_tower.blocks.0.0.spatial_block.window_attn.fn.qkv.weight",
            "vision_tower.blocks.0.0.channel_block.ffn.fn.net.fc1.weight",
            "vision_tower.blocks.0.0.spatial_block.conv1.fn.dw.weight", "image_pos_embed.row_embeddings.weight"} <= names
    run = subprocess.run(archivetag_command("models", "convert-florence", str(original), str(converted)),
                         cwd=REPO, capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr
    before = load_florence(native_dir, torch.device("cpu"), torch.float32)
    after = load_florence(converted, torch.device("cpu"), torch.float32)
    batch = inputs(before.processor, seed=3)
    assert after.processor(text=["<CAPTION>"], images=[__import__("PIL.Image").Image.new("RGB", (8, 8))],
                           return_tensors="pt")["input_ids"].tolist() == \
        before.processor(text=["<CAPTION>"], images=[__import__("PIL.Image").Image.new("RGB", (8, 8))],
                         return_tensors="pt")["input_ids"].tolist()
    torch.testing.assert_close(logits(after, batch)[..., :ORIGINAL_VOCAB], logits(before, batch)[..., :ORIGINAL_VOCAB],
                               rtol=0, atol=1e-5)
