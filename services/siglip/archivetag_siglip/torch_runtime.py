"""SigLIP's vision tower on torch (`--siglip-runtime torch`): for a CUDA box whose ONNX Runtime has no CUDA
provider (the CPU-only `onnxruntime` wheel beside the box's own CUDA torch; `onnxruntime-gpu` is several
hundred MB and often cannot be installed there).

The same export, the same checks: the exporter writes, beside vision.onnx, the checkpoint's own vision model
(transformers' SiglipVisionModel, the module vision.onnx is exported from) as vision_torch/config.json +
model.safetensors, and their SHA-256 in the manifest's "vision_torch". This runtime loads those files only
if their hashes match, and the backend then re-embeds the probe image through it and refuses to serve unless
it gives the manifest's embedding (cosine >= --siglip-probe-tolerance), exactly as for the ONNX tower. The
preprocessing (layout.Preprocessor), the class embeddings, the text tower (ONNX Runtime on the CPU) and the
scoring are shared: only the image embedding is computed by another engine. Parity with the ONNX tower:
tests/siglip/test_torch_runtime.py.

Needs torch and transformers (the service's [export] extra, or a box's own); the ONNX path imports neither.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from archivetag.runtime.checksums import sha256_file
from archivetag.runtime.errors import ModelLoadError
from archivetag_siglip import layout

ORT_CUDA = "CUDAExecutionProvider"  # ONNX Runtime's name for its CUDA provider; the backend uses this one too


def torch_installed() -> bool:
    """torch and transformers can be imported (found, not imported: importing torch costs about 1 GB)."""
    return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None


def torch_sees_cuda() -> bool:
    """torch is installed and sees a CUDA device. Imports torch only where an NVIDIA driver is present: a CPU-only
    SigLIP host serves without torch in memory (about 1 GB), even where torch is installed."""
    if not any(Path(p).exists() for p in ("/proc/driver/nvidia/version", "/dev/nvidiactl")):
        return False
    if not torch_installed():
        return False
    import torch

    return bool(torch.cuda.is_available())


def choose_runtime(setting: str, device_setting: str, ort_providers: list[str], manifest: dict[str, Any]) -> str:
    """onnx or torch. auto: ONNX Runtime, unless the device may be CUDA (auto, cuda, cuda:N), ONNX Runtime has
    no CUDA provider, torch sees a CUDA device and the export has the torch weights."""
    if setting != "auto":
        return setting
    if not (device_setting == "auto" or device_setting.startswith("cuda")):
        return "onnx"
    if ORT_CUDA in ort_providers or "vision_torch" not in manifest:
        return "onnx"
    return "torch" if torch_sees_cuda() else "onnx"


class TorchVisionTower:
    """pixel_values (N, 3, H, W) -> the image embedding (pooler_output), as vision.onnx computes it."""

    def __init__(self, folder: Path, manifest: dict[str, Any], device_setting: str, dtype_setting: str,
                 threads: int = 0):
        entry = manifest.get("vision_torch")
        if entry is None:
            raise ModelLoadError(f"--siglip-runtime torch asked for, but this export has no {layout.VISION_TORCH}/ "
                                 f"(exports before it was added); re-export with `{layout.EXPORT_COMMAND}`")
        if not torch_installed():
            raise ModelLoadError("--siglip-runtime torch needs torch and transformers (the archivetag-siglip[export] "
                                 "extra); use --siglip-runtime onnx")
        import torch
        from transformers import SiglipVisionModel

        from archivetag.runtime.device import dtype_name, pick_device, pick_dtype, set_threads

        target = Path(folder) / entry["folder"]
        for name, expected in entry["files"].items():
            path = target / name
            if not path.exists() or sha256_file(path) != expected:
                raise ModelLoadError(f"{entry['folder']}/{name} is missing or does not match the manifest's SHA-256: "
                                     f"the torch weights are not the ones exported with this model; re-export with "
                                     f"`{layout.EXPORT_COMMAND}`")
        try:
            self.device = pick_device(device_setting)
            self.dtype = pick_dtype(dtype_setting, self.device)  # --dtype int8 (torch taggers on a CPU) is refused
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from None
        self.dtype_name = dtype_name(self.dtype)
        set_threads(threads)
        try:
            model = SiglipVisionModel.from_pretrained(str(target), dtype=self.dtype)
        except Exception as exc:  # noqa: BLE001 - transformers raises many kinds for a bad folder
            raise ModelLoadError(f"transformers cannot load {entry['folder']}/: {type(exc).__name__}: {exc}; "
                                 f"re-export with `{layout.EXPORT_COMMAND}`") from None
        self.model = model.to(self.device).eval()
        self._torch = torch

    @property
    def device_name(self) -> str:
        device = self.device
        if device.type == "cuda":
            return f"cuda:{device.index if device.index is not None else self._torch.cuda.current_device()}"
        return device.type

    def embed_tensor(self, pixels):
        """A torch tensor of pixel values (any device, any float dtype) -> (N, D) embeddings on the device, float32.
        For callers that preprocess on the device themselves (benchmarks/gpu_check.py: nvJPEG decode)."""
        with self._torch.inference_mode():
            pixels = pixels.to(self.device, self.dtype, non_blocking=True)
            return self.model(pixel_values=pixels).pooler_output.float()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        tensor = self._torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
        if self.device.type == "cuda":
            tensor = tensor.pin_memory()
        return self.embed_tensor(tensor).cpu().numpy()
