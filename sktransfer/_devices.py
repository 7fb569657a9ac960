"""Devices and precision: ``device="auto"`` and what a ``precision`` setting
means on a device. Every estimator resolves them here."""

from __future__ import annotations

import contextlib

import torch


def is_auto(device) -> bool:
    """Whether ``device`` is the string ``"auto"`` (not a ``torch.device``)."""
    return isinstance(device, str) and device == "auto"


def resolve_device(device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as torch reads it."""
    if is_auto(device):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"Invalid device {device!r}: {exc}. Use 'auto', 'cpu' or 'cuda[:N]'."
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} but CUDA is not available; use 'auto' or 'cpu'."
        )
    return resolved


PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def autocast_dtype(
    precision: str, device: torch.device, *, training: bool = False
) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; ``None``: float32.

    ``"auto"`` is float32 on the CPU. On CUDA, inference takes float16 (three
    more mantissa bits than bfloat16: embeddings closer to float32's, measured
    in docs/benchmarks.md); training takes bfloat16 where the card supports
    it (no gradient scaling needed), else float16.
    """
    if precision == "float32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision != "auto":
        return getattr(torch, precision)
    # native bfloat16 from Ampere (compute capability 8) on; older cards would
    # emulate it slowly, and take float16 with gradient scaling instead
    if training and torch.cuda.get_device_capability(device)[0] >= 8:
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype``, or nothing for float32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
