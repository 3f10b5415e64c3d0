"""The exporter, and the checks the service makes on an export before it serves."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from archivetag.stack import archivetag_command
from archivetag.cli import parse_serve_settings
from archivetag.runtime.errors import ModelLoadError
from archivetag.runtime.model_card import ModelCard
from archivetag_siglip import layout
from archivetag_siglip.backend import SiglipBackend
from archivetag.runtime.checksums import sha256_file
from archivetag_siglip.layout import read_json, write_json
from tests.siglip import tiny_exports


@pytest.fixture(scope="module")
def tiny():
    return tiny_exports()


def loaded(folder: Path, precision: str = "fp32") -> SiglipBackend:
    """The backend serving `folder` (through a models directory that links it as siglip/)."""
    import tempfile

    models = Path(tempfile.mkdtemp(prefix="siglip-models-"))
    (models / "siglip").symlink_to(Path(folder).resolve(), target_is_directory=True)
    backend = SiglipBackend(parse_serve_settings("siglip", "--models", str(models), "--device", "cpu",
                                                 "--siglip-precision", precision))
    backend.load()
    return backend


def copy_export(tmp_path: Path, export: Path) -> Path:
    folder = tmp_path / "siglip"
    shutil.copytree(export, folder)
    return folder


def test_onnx_image_embeddings_match_torch_within_1e_4(tiny):
    import onnxruntime as ort
    import torch
    from transformers import SiglipModel

    model = SiglipModel.from_pretrained(str(tiny.a.checkpoint)).eval()
    session = ort.InferenceSession(str(tiny.a.export / layout.VISION_ONNX), providers=["CPUExecutionProvider"])
    size = read_json(tiny.a.export / layout.MANIFEST)["image"]["size"]
    for batch in (1, 5):  # the batch axis is dynamic
        pixels = torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(batch)) * 2 - 1
        with torch.no_grad():
            expected = model.get_image_features(pixel_values=pixels).pooler_output.numpy()
        got = session.run(None, {"pixel_values": pixels.numpy()})[0]
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-4


def test_manifest_stamps_identity_hashes_classes_and_probe(tiny):
    manifest = read_json(tiny.a.export / layout.MANIFEST)
    assert ModelCard.read(tiny.a.export).smoke is True
    assert manifest["vision"]["sha256"] == sha256_file(tiny.a.export / layout.VISION_ONNX)
    assert manifest["text"]["sha256"] == sha256_file(tiny.a.export / layout.TEXT_EMBEDDINGS)
    assert manifest["text"]["tokenizer"]["padding"] == "max_length"
    assert manifest["text"]["tokenizer"]["max_length"] == 64
    assert list(manifest["classes"]) == ["interior", "exterior", "aerial", "detail"]
    assert all(len(prompts) >= 3 for prompts in manifest["classes"].values())
    assert manifest["image"]["resample"] == "bicubic"
    assert manifest["image"]["mean"] == [0.5, 0.5, 0.5]
    assert manifest["logit_scale"] == pytest.approx(np.log(112.0), abs=1e-5)
    assert manifest["logit_bias"] == -10.0
    text = read_json(tiny.a.export / layout.TEXT_EMBEDDINGS)
    assert text["model"] == manifest["model"]
    assert np.linalg.norm(manifest["probe"]["embedding"]) == pytest.approx(1.0, abs=1e-6)


def test_the_cli_exports_custom_classes_and_an_int8_tower_served_on_request(tiny, tmp_path):
    classes = tmp_path / "classes.yaml"
    classes.write_text("indoor:\n  - a photo of a room.\n  - a photo inside a house.\n"
                       "outdoor:\n  - a photo of a street.\nother:\n  - a photo of a cat.\n")
    out = tmp_path / "siglip"
    done = subprocess.run(
        archivetag_command("models", "export-siglip", "--model", str(tiny.a.checkpoint),
         "--out", str(out), "--classes", str(classes), "--int8"),
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    manifest = read_json(out / layout.MANIFEST)
    assert list(manifest["classes"]) == ["indoor", "outdoor", "other"]
    assert manifest["vision_int8"]["probe_cosine_to_fp32"] > 0.99
    assert loaded(out).vocabulary() == ["indoor", "outdoor", "other"]
    int8 = loaded(out, precision="int8")
    assert int8.identity().dtype == "int8"
    image, request = int8.warmup_input()
    result = int8.infer_batch([int8.prepare(image, request)], lambda: False)[0]
    assert {name for name, _, _ in result.scores} == {"indoor", "outdoor", "other"}


def test_int8_asked_for_but_not_exported_is_refused_with_the_command(tiny):
    with pytest.raises(ModelLoadError, match="--int8"):
        loaded(tiny.a.export, precision="int8")


def test_a_good_export_loads_with_its_identity(tiny):
    backend = loaded(tiny.a.export)
    identity = backend.identity()
    manifest = read_json(tiny.a.export / layout.MANIFEST)
    card = ModelCard.read(tiny.a.export)
    assert identity.family == "siglip"
    assert identity.smoke
    assert identity.name == card.name == "archivetag/siglip-smoke"
    assert manifest["model"]["id"].startswith(identity.name)
    assert identity.revision == card.revision
    assert identity.weights_sha256 == manifest["vision"]["sha256"]
    assert identity.device == "cpu"
    assert identity.dtype == "float32"
    assert backend.probe_cosine > 0.9999


def test_text_embeddings_from_another_model_are_refused(tiny, tmp_path):
    folder = copy_export(tmp_path, tiny.a.export)
    shutil.copyfile(tiny.b.export / layout.TEXT_EMBEDDINGS, folder / layout.TEXT_EMBEDDINGS)
    with pytest.raises(ModelLoadError, match="text embeddings .* do not match the manifest"):
        loaded(folder)


def test_text_embeddings_from_another_model_are_refused_even_with_the_manifest_hash_edited(tiny, tmp_path):
    folder = copy_export(tmp_path, tiny.a.export)
    shutil.copyfile(tiny.b.export / layout.TEXT_EMBEDDINGS, folder / layout.TEXT_EMBEDDINGS)
    manifest = read_json(folder / layout.MANIFEST)
    manifest["text"]["sha256"] = sha256_file(folder / layout.TEXT_EMBEDDINGS)
    write_json(folder / layout.MANIFEST, manifest)
    with pytest.raises(ModelLoadError, match="stamped with model"):
        loaded(folder)
    # Even with the stamp forged too, the probe's recorded logits give the other model away.
    text = read_json(folder / layout.TEXT_EMBEDDINGS)
    text["model"] = manifest["model"]
    write_json(folder / layout.TEXT_EMBEDDINGS, text)
    manifest["text"]["sha256"] = sha256_file(folder / layout.TEXT_EMBEDDINGS)
    write_json(folder / layout.MANIFEST, manifest)
    with pytest.raises(ModelLoadError, match="probe's class logits"):
        loaded(folder)


def test_an_onnx_file_from_another_model_is_refused_by_hash_and_by_the_probe(tiny, tmp_path):
    folder = copy_export(tmp_path, tiny.a.export)
    shutil.copyfile(tiny.b.export / layout.VISION_ONNX, folder / layout.VISION_ONNX)
    with pytest.raises(ModelLoadError, match="SHA-256"):
        loaded(folder)
    manifest = read_json(folder / layout.MANIFEST)
    manifest["vision"]["sha256"] = sha256_file(folder / layout.VISION_ONNX)
    write_json(folder / layout.MANIFEST, manifest)
    with pytest.raises(ModelLoadError, match="probe image's embedding does not match"):
        loaded(folder)


def test_the_old_apps_file_trio_is_refused_naming_the_export_command(tmp_path):
    folder = tmp_path / "siglip"
    folder.mkdir()
    (folder / "siglip-base-patch16-224.onnx").write_bytes(b"onnx")
    (folder / "siglip-base-patch16-224-text-embeddings.json").write_text(json.dumps({"interior": [0.1]}))
    (folder / "siglip-base-patch16-224-info.json").write_text("{}")
    with pytest.raises(ModelLoadError) as info:
        loaded(folder)
    message = str(info.value)
    assert "old app" in message
    assert "padding" in message
    assert "logit_bias" in message
    assert "archivetag models export-siglip" in message
    assert "archivetag models pull" in message


def test_a_missing_model_folder_says_how_to_get_one(tmp_path):
    with pytest.raises(ModelLoadError, match="export-siglip"):
        loaded(tmp_path / "nothing-here")
