"""Device and dtype selection: cuda, then mps, then cpu; half precision on cuda by default."""

from __future__ import annotations

import torch

from raylens.errors import ModelLoadError

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def select_device(preference: str = "auto") -> str:
    """The device to run on. Ray does not schedule MPS as a GPU: a macOS worker asks for 0 GPUs
    and still runs on mps here."""
    if preference == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if _mps_available() else "cpu"
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": _mps_available()}
    if preference not in available:
        raise ModelLoadError(
            f"unknown device {preference!r}; set RAYLENS_CLIP_DEVICE to auto, cuda, mps or cpu"
        )
    if not available[preference]:
        raise ModelLoadError(
            f"RAYLENS_CLIP_DEVICE={preference} but no {preference} device is "
            "available in this worker; use auto or cpu"
        )
    return preference


def select_dtype(device: str, precision: str = "auto") -> torch.dtype:
    """fp16 on cuda, fp32 elsewhere, unless RAYLENS_CLIP_PRECISION says otherwise."""
    if precision == "auto":
        return torch.float16 if device == "cuda" else torch.float32
    if precision not in _DTYPES:
        raise ModelLoadError(
            f"unknown precision {precision!r}; set RAYLENS_CLIP_PRECISION to "
            "auto, fp32, fp16 or bf16"
        )
    if precision == "fp16" and device == "cpu":
        raise ModelLoadError(
            "RAYLENS_CLIP_PRECISION=fp16 is not supported on cpu; use fp32 or bf16 (or auto)"
        )
    return _DTYPES[precision]
