"""Mixed precision: which autocast dtype a precision setting means on a device."""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def autocast_dtype(
    precision: str, device: torch.device, *, training: bool = False
) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; ``None``: float32.

    ``"auto"`` is float32 on the CPU. On CUDA, inference takes float16 (three
    more mantissa bits than bfloat16: EfficientNet-Lite0 embeddings reach
    cosine 0.9999 to float32 against 0.98); training takes bfloat16 where the
    card supports it (no gradient scaling needed), else float16.
    """
    if precision == "float32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision != "auto":
        return getattr(torch, precision)
    if training and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype``, or nothing for float32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
