"""SigLIP's vision tower on torch (--siglip-runtime torch): the same export's vision_torch/ weights give the
ONNX tower's embeddings and view types (on the CPU here; on CUDA at fp16 in benchmarks/gpu_check.sh), under
the same hash and probe checks. And the ONNX runtime's own thread option (--siglip-ort-spinning)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from archivetag.cli import parse_serve_settings
from archivetag.runtime.errors import ModelLoadError
from archivetag.v1 import view_type_pb2
from archivetag_siglip import layout
from archivetag_siglip.backend import SiglipBackend
from archivetag_siglip.layout import read_json, write_json
from archivetag_siglip.torch_runtime import choose_runtime
from tests.siglip import full_size_export, tiny_exports


def backend_for(export: Path, *args: str) -> SiglipBackend:
    models = Path(tempfile.mkdtemp(prefix="siglip-models-"))
    (models / "siglip").symlink_to(Path(export).resolve(), target_is_directory=True)
    backend = SiglipBackend(parse_serve_settings("siglip", "--models", str(models), *args))
    try:
        backend.load()
    finally:
        (models / "siglip").unlink()
        models.rmdir()
    return backend


def photos(count: int, size: tuple[int, int] = (320, 240)) -> list[Image.Image]:
    """Photo-like images (smooth colour fields and noise): random noise alone puts every view type near chance."""
    rng = np.random.default_rng(5)
    images = []
    for _ in range(count):
        y, x = np.mgrid[0:size[1], 0:size[0]].astype(np.float32)
        base = rng.uniform(0, 255, size=3)
        slope = rng.uniform(-1, 1, size=(2, 3))
        pixels = base + x[..., None] * slope[0] / 2 + y[..., None] * slope[1] / 2 + rng.normal(0, 15, (*x.shape, 3))
        images.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))
    return images


def classify(backend: SiglipBackend, images: list[Image.Image]):
    request = view_type_pb2.ClassifyRequest(include_embedding=True)
    return backend.infer_batch([backend.prepare(image, request) for image in images], lambda: False)


def assert_parity(onnx: SiglipBackend, torch_backend: SiglipBackend, images: list[Image.Image]) -> None:
    expected, got = classify(onnx, images), classify(torch_backend, images)
    for a, b in zip(expected, got):
        ea, eb = np.asarray(a.embedding, np.float64), np.asarray(b.embedding, np.float64)
        cosine = float(ea @ eb / (np.linalg.norm(ea) * np.linalg.norm(eb)))
        assert cosine >= 0.9999, cosine
        assert b.view_type == a.view_type
        assert abs(b.confidence - a.confidence) <= 1e-3


def test_the_torch_tower_gives_the_onnx_towers_embeddings_and_view_types_on_the_tiny_model():
    export = tiny_exports().a.export
    onnx = backend_for(export, "--device", "cpu", "--siglip-runtime", "onnx")
    torch_backend = backend_for(export, "--device", "cpu", "--siglip-runtime", "torch")
    assert onnx.runtime == "onnx" and torch_backend.runtime == "torch"
    assert_parity(onnx, torch_backend, photos(12))
    assert torch_backend.probe_cosine >= 0.9999
    identity = torch_backend.identity()
    assert (identity.device, identity.dtype) == ("cpu", "float32")
    assert identity.weights_sha256 == onnx.identity().weights_sha256  # one export, one identity
    described = torch_backend.describe()
    assert (described["runtime"], described["providers"]) == ("torch", "torch:cpu")
    assert onnx.describe()["runtime"] == "onnx"
    # the text tower stays on ONNX Runtime, shared by both
    texts = torch_backend.infer_batch([torch_backend.prepare_text(["a hospital corridor"])], lambda: False)[0]
    same = onnx.infer_batch([onnx.prepare_text(["a hospital corridor"])], lambda: False)[0]
    assert np.allclose(texts.embeddings, same.embeddings, atol=1e-6)


def test_the_torch_tower_matches_onnx_on_the_full_size_model():
    """siglip-base-patch16-224's architecture (random weights): 86 M vision parameters, fp32 on the CPU."""
    export = full_size_export("siglip").export
    onnx = backend_for(export, "--device", "cpu", "--siglip-runtime", "onnx")
    torch_backend = backend_for(export, "--device", "cpu", "--siglip-runtime", "torch")
    assert_parity(onnx, torch_backend, photos(4))


def test_auto_is_onnx_unless_onnx_runtime_lacks_cuda_and_torch_has_it(monkeypatch):
    from archivetag_siglip import torch_runtime

    manifest = {"vision_torch": {}}
    cpu_only = ["CPUExecutionProvider"]
    with_cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_runtime("onnx", "cuda", cpu_only, manifest) == "onnx"
    assert choose_runtime("torch", "cpu", cpu_only, manifest) == "torch"
    monkeypatch.setattr(torch_runtime, "torch_sees_cuda", lambda: True)  # the decision, not a model
    assert choose_runtime("auto", "cuda", cpu_only, manifest) == "torch"
    assert choose_runtime("auto", "auto", cpu_only, manifest) == "torch"
    assert choose_runtime("auto", "cuda:1", with_cuda, manifest) == "onnx"
    assert choose_runtime("auto", "cpu", cpu_only, manifest) == "onnx"
    assert choose_runtime("auto", "cuda", cpu_only, {}) == "onnx"  # an export without vision_torch/
    monkeypatch.setattr(torch_runtime, "torch_sees_cuda", lambda: False)
    assert choose_runtime("auto", "auto", cpu_only, manifest) == "onnx"


def test_auto_on_this_cpu_machine_serves_onnx():
    backend = backend_for(tiny_exports().a.export, "--device", "auto")
    assert backend.runtime == "onnx" and backend.identity().device == "cpu"


def test_torch_weights_that_do_not_match_the_manifest_are_refused(tmp_path):
    folder = tmp_path / "siglip"
    shutil.copytree(tiny_exports().a.export, folder)
    # the other model's weights, same architecture and file names: refused by hash ...
    for name in ("model.safetensors",):
        shutil.copy(tiny_exports().b.export / layout.VISION_TORCH / name, folder / layout.VISION_TORCH / name)
    with pytest.raises(ModelLoadError, match="does not match the manifest"):
        backend_for(folder, "--device", "cpu", "--siglip-runtime", "torch")
    # ... and, with the hash edited to match, by the probe image
    manifest = read_json(folder / layout.MANIFEST)
    manifest["vision_torch"]["files"] = read_json(tiny_exports().b.export / layout.MANIFEST)["vision_torch"]["files"]
    write_json(folder / layout.MANIFEST, manifest)
    with pytest.raises(ModelLoadError, match="probe image"):
        backend_for(folder, "--device", "cpu", "--siglip-runtime", "torch")


def test_an_export_without_torch_weights_or_int8_with_torch_is_refused_with_the_fix(tmp_path):
    folder = tmp_path / "siglip"
    shutil.copytree(tiny_exports().a.export, folder)
    with pytest.raises(ModelLoadError, match="int8 is an ONNX Runtime tower"):
        backend_for(folder, "--device", "cpu", "--siglip-runtime", "torch", "--siglip-precision", "int8")
    with pytest.raises(ModelLoadError, match="--dtype int8: this model has no int8 path"):
        backend_for(folder, "--device", "cpu", "--siglip-runtime", "torch", "--dtype", "int8")
    manifest = read_json(folder / layout.MANIFEST)
    del manifest["vision_torch"]
    write_json(folder / layout.MANIFEST, manifest)
    shutil.rmtree(folder / layout.VISION_TORCH)
    with pytest.raises(ModelLoadError, match="re-export"):
        backend_for(folder, "--device", "cpu", "--siglip-runtime", "torch")
    assert backend_for(folder, "--device", "cpu").runtime == "onnx"  # auto: an older export still serves


@pytest.mark.cuda
def test_on_cuda_the_torch_tower_at_float16_agrees_with_onnx_on_the_cpu():
    """Runs on a CUDA machine (benchmarks/gpu_check.sh): fp16 on the GPU vs fp32 ONNX on the CPU (the full-size
    model's fp16 parity is measured by benchmarks/gpu_check.py, which builds it anyway)."""
    export = tiny_exports().a.export
    onnx = backend_for(export, "--device", "cpu", "--siglip-runtime", "onnx")
    gpu = backend_for(export, "--device", "cuda", "--dtype", "float16", "--siglip-runtime", "torch")
    assert gpu.identity().device.startswith("cuda") and gpu.identity().dtype == "float16"
    expected, got = classify(onnx, photos(16)), classify(gpu, photos(16))
    cosines = []
    for a, b in zip(expected, got):
        ea, eb = np.asarray(a.embedding, np.float64), np.asarray(b.embedding, np.float64)
        cosines.append(float(ea @ eb / (np.linalg.norm(ea) * np.linalg.norm(eb))))
    assert min(cosines) >= 0.999, cosines
    assert sum(a.view_type == b.view_type for a, b in zip(expected, got)) >= 15


def test_onnx_runtime_threads_sleep_unless_spinning_is_asked_for_and_the_answers_stay_the_same():
    export = tiny_exports().a.export
    sleeping = backend_for(export, "--device", "cpu")
    spinning = backend_for(export, "--device", "cpu", "--siglip-ort-spinning")
    for backend, expected in ((sleeping, "0"), (spinning, "1")):
        options = backend.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == expected
        assert backend.describe()["ort_spinning"] == {"0": "false", "1": "true"}[expected]  # in GetModelInfo
    assert [r.view_type for r in classify(sleeping, photos(4))] == [r.view_type for r in classify(spinning, photos(4))]
