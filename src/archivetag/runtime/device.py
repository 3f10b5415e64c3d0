"""Device and dtype choice for torch models, one rule for every service."""

from __future__ import annotations

import torch

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def pick_device(setting: str = "auto") -> torch.device:
    """auto: cuda if present, then mps, then cpu. Anything else is taken as given."""
    if setting == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {setting!r} asked for, but CUDA is not available on this machine")
    return device


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    """auto: float32 on CPU and MPS; on CUDA bfloat16 where supported, else float16."""
    if setting != "auto":
        return _DTYPES[setting]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)
