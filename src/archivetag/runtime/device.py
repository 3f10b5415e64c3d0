"""Device, dtype and precision choice for torch models, one rule for every service."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TypeVar

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
    if setting == INT8:
        raise ValueError("--dtype int8: this model has no int8 path (docs/models/cpu.md lists the ones that do); it "
                         "runs in float32, float16 or bfloat16")
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


INT8 = "int8"
M = TypeVar("M", bound=torch.nn.Module)


@dataclass(frozen=True)
class Precision:
    """How a torch model runs: its compute dtype, and whether its linear layers hold int8 weights."""

    dtype: torch.dtype
    int8: bool = False

    @property
    def name(self) -> str:
        """What the model identity (and so the result cache's key) says: float32, bfloat16, int8, ..."""
        return INT8 if self.int8 else dtype_name(self.dtype)


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere torch emulates it, slower
    than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


def pick_precision(setting: str, device: torch.device, cpu_default: str = "float32") -> Precision:
    """--dtype for a model that can also run int8 on a CPU. auto: the model's own `cpu_default` on a CPU (what
    its measured agreement allows, docs/models/cpu.md), else as pick_dtype."""
    if setting == "auto" and device.type == "cpu":
        setting = cpu_default
    if setting != INT8:
        return Precision(pick_dtype(setting, device))
    if device.type != "cpu":
        raise ValueError(f"--dtype int8 runs on a CPU only (dynamic quantisation); on {device} use auto, "
                         "float16 or bfloat16")
    return Precision(torch.float32, int8=True)


def quantize_int8(module: M) -> M:
    """The module with int8 weights in its linear layers, one scale per output channel, and activations
    quantised per call (dynamic quantisation: no calibration data). Per channel, not per tensor: per tensor
    lost too much agreement on RAM++ (docs/models/cpu.md). torch.ao's eager API is deprecated in favour of
    torchao but still the one that runs on every torch this project supports without compiling."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notice, on every call
        return quantize_dynamic(module, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)


def probe_photo():
    """A real photo shipped with archivetag, decoded as every request's image is, on which int8 is checked against
    float32 at load."""
    from importlib import resources

    from archivetag.runtime.images import decode_image

    return decode_image(resources.files("archivetag").joinpath("samples", "coffee-table.jpg").read_bytes())


def int8_kept(explicit: bool, agreement: float, minimum: float, what: str, log) -> bool:
    """Whether int8 weights stay after their check on the served weights (a trained model's activation outliers
    can make int8 worse than on the random weights docs/models/cpu.md measured): below `minimum`, --dtype auto
    goes back to float32 and says so; an explicit --dtype int8 is kept, with a warning."""
    from archivetag.runtime.logs import fields

    measured = fields(measure=what, agreement=round(agreement, 5), minimum=minimum)
    if agreement >= minimum:
        log.info("int8 checked against float32 on the probe photo", extra=measured)
        return True
    outcome = "kept, as --dtype int8 asks" if explicit else "serving float32 instead (--dtype auto)"
    log.warning(f"int8 disagrees with float32 on the probe photo: {outcome}", extra=measured)
    return explicit
