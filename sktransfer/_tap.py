"""Layer taps and pooling: what the default embedding or ``layer=`` takes, as a vector.

The tap stops the forward pass right after the tapped layer; pooling turns a
feature map or token sequence into one vector per image.
"""

from __future__ import annotations

import threading

import torch
from torch import nn

from ._suggest import did_you_mean
from .exceptions import UnknownLayerError


def find_layer(module: nn.Module, layer: str) -> nn.Module:
    """The submodule called ``layer``, or an error naming the closest names."""
    modules = dict(module.named_modules())
    modules.pop("", None)
    if layer not in modules:
        raise UnknownLayerError(
            f"Unknown layer {layer!r} for "
            f"{type(module).__name__}.{did_you_mean(layer, modules, n=5)} "
            "Valid names are those of dict(model.named_modules()), e.g. "
            f"{', '.join(repr(n) for n in list(modules)[:4])}, ..."
        )
    return modules[layer]


class _Captured(Exception):
    """Raised by a hook once the tapped activation is captured: skips the rest."""


# Tap hooks are installed once per module and act only for the thread that
# asked for a capture: registering hooks per call would fire them in other
# threads' forward passes through the same module (joblib threads, servers).
_request = threading.local()
_install_lock = threading.Lock()


def _capture_input(module: nn.Module, args) -> None:
    if getattr(_request, "tap", None) is module and _request.take_input:
        _request.captured = args[0]
        raise _Captured


def _capture_output(module: nn.Module, _args, output) -> None:
    if getattr(_request, "tap", None) is module and not _request.take_input:
        _request.captured = output
        raise _Captured


# They change no output (they only stop the pass that asked for a capture).
OUTPUT_NEUTRAL_HOOKS = (_capture_input, _capture_output)


def _install_tap_hooks(tap: nn.Module) -> None:
    with _install_lock:
        if not getattr(tap, "_sktransfer_tap_hooks", False):
            tap.register_forward_pre_hook(_capture_input)
            tap.register_forward_hook(_capture_output)
            tap._sktransfer_tap_hooks = True


def forward_tap(
    module: nn.Module, x: torch.Tensor, tap: nn.Module, *, take_input: bool
) -> torch.Tensor:
    """Run ``module(x)`` up to ``tap`` and return its input or output.

    The forward stops right after the tap, so layers after it cost nothing.
    Thread-safe: concurrent calls on one module capture their own tensors.
    """
    _install_tap_hooks(tap)
    _request.tap, _request.take_input, _request.captured = tap, take_input, None
    try:
        module(x)
    except _Captured:
        pass
    finally:
        out, _request.tap, _request.captured = _request.captured, None, None
    if out is None:
        raise UnknownLayerError(
            f"Layer {type(tap).__name__} was never called in the forward pass; choose "
            "a layer that the network's forward() uses."
        )
    if isinstance(out, (tuple, list)):  # e.g. an attention block returning (x, weights)
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise UnknownLayerError(f"Layer {type(tap).__name__} does not output a tensor.")
    return out


def pool(features: torch.Tensor, pooling: str | None) -> torch.Tensor:
    """``(N, C, H, W)`` or ``(N, L, D)`` -> ``(N, d)``: avg, max, avgmax or flatten."""
    if features.ndim == 2:
        return features
    if pooling is None:
        return features.flatten(1)
    if features.ndim == 4:  # channels first
        flat = features.flatten(2)
        axis = 2
    else:  # (N, L, D) token sequences, or (N, C, L)
        flat = features.flatten(1, -2) if features.ndim > 3 else features
        axis = 1
    mean, top = flat.mean(axis), flat.amax(axis)
    if pooling == "avg":
        return mean
    if pooling == "max":
        return top
    return torch.cat([mean, top], dim=1)
