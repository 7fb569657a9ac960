"""Devices and precision: ``device="auto"`` and what a ``precision`` setting
means on a device. Every estimator resolves them here."""

from __future__ import annotations

import contextlib
import functools
import sys
import threading

import torch
from torch import nn


def is_auto(device) -> bool:
    """Whether ``device`` is the string ``"auto"`` (not a ``torch.device``)."""
    return isinstance(device, str) and device == "auto"


def resolve_device(device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as torch reads it.

    A CUDA device always comes back with its index (``"cuda"`` -> ``cuda:0``
    when device 0 is current): tensors report ``cuda:0``, and
    ``torch.device("cuda") != torch.device("cuda:0")``, so an index-less device
    would never match the network's parameters.
    """
    if is_auto(device):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"Invalid device {device!r}: {exc}. Use 'auto', 'cpu' or 'cuda[:N]'."
        ) from exc
    if resolved.type != "cuda":
        return resolved
    if not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} but CUDA is not available; use 'auto' or 'cpu'."
        )
    if resolved.index is None:
        # Before CUDA starts (warm_up starts it in the background) the current
        # device is 0; asking torch for it would start CUDA here and now.
        index = torch.cuda.current_device() if torch.cuda.is_initialized() else 0
        return torch.device("cuda", index)
    count = torch.cuda.device_count()
    if resolved.index >= count:
        raise ValueError(
            f"device={device!r} but this machine has {count} CUDA device(s), "
            f"numbered 0 to {count - 1}; use 'cuda' (the current one) or 'cuda:N'."
        )
    return resolved


PRECISIONS = ("auto", "float32", "bfloat16", "float16")

# CPU instruction sets that compute in bfloat16 natively: AVX512-BF16 (AMD Zen 4
# on, Intel Cooper Lake) and AMX-BF16 (Intel Sapphire Rapids on). Elsewhere
# oneDNN emulates bfloat16, slower than float32.
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

# Networks whose CPU forward is no faster under bfloat16 autocast even where
# the CPU runs it natively (module class names; benchmarks/bench_precision.py
# and docs/benchmarks.md): "auto" keeps float32 for them. None of the
# families measured is one.
CPU_FLOAT32_NETWORKS: frozenset[str] = frozenset()


@functools.cache
def cpu_bfloat16() -> bool:
    """Whether this CPU runs bfloat16 natively (probed once per process).

    torch >= 2.8 reports the instruction sets (``torch.cpu.get_capabilities``);
    older torch (the project admits 2.4) is asked through the kernel's CPU
    flags on Linux; anywhere else the answer is ``False``: float32 is never
    the slow choice. Without oneDNN the bfloat16 convolutions are not the
    native ones either, nor where torch's kernels are held below AVX-512
    (``ATEN_CPU_CAPABILITY=avx2``).
    """
    if not torch.backends.mkldnn.is_available():
        return False
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()
    if capability in ("DEFAULT", "AVX2", "NO AVX"):
        return False
    probe = getattr(torch.cpu, "get_capabilities", None)
    if probe is not None:
        try:
            capabilities = probe()
        except Exception:  # a probe of the machine: failing means "not known"
            capabilities = {}
        return any(capabilities.get(flag) for flag in _NATIVE_BF16_FLAGS)
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
                flags = next(
                    (line for line in info if line.startswith("flags")), ""
                ).split()
        except OSError:
            return False
        return any(flag in flags for flag in _NATIVE_BF16_FLAGS)
    return False


def autocast_dtype(
    precision: str,
    device: torch.device,
    *,
    training: bool = False,
    network: nn.Module | None = None,
) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; ``None``: float32.

    ``"auto"`` on the CPU is bfloat16 where the CPU runs it natively
    (:func:`cpu_bfloat16`), for inference and training alike, unless
    ``network`` is one of :data:`CPU_FLOAT32_NETWORKS`; float32 elsewhere
    (emulated bfloat16 is slower than float32). Trained grouped (depthwise)
    convolutions, whose bfloat16 backward pass is slower than float32's on
    CPUs, step in float32 inside it: see :func:`float32_grouped_convolutions`.
    ``training``: the precision of a fine-tuned network, for its training
    steps and its predictions alike (predictions see what training saw).

    On CUDA, inference takes float16 (three more mantissa bits than bfloat16:
    embeddings closer to float32's, measured in docs/benchmarks.md); training
    takes bfloat16 where the card supports it (no gradient scaling needed),
    else float16.
    """
    if precision == "float32":
        return None
    if precision != "auto":
        return getattr(torch, precision)
    if device.type == "cpu":
        if not cpu_bfloat16():
            return None
        if network is not None and type(network).__name__ in CPU_FLOAT32_NETWORKS:
            return None
        return torch.bfloat16
    if device.type != "cuda":
        return None
    # native bfloat16 from Ampere (compute capability 8) on; older cards would
    # emulate it slowly, and take float16 with gradient scaling instead
    if training and torch.cuda.get_device_capability(device)[0] >= 8:
        return torch.bfloat16
    return torch.float16


def float32_grouped_convolutions(network: nn.Module) -> None:
    """Run the trainable grouped (depthwise) convolutions of ``network`` in
    float32 under CPU autocast, the rest of it in the autocast dtype.

    Their bfloat16 backward pass is slower than float32's on CPUs: bfloat16
    throughout made a training step of EfficientNet-Lite0's top two or three
    groups 1.15x slower than float32 (the whole network's 1.7x), while the
    dense convolutions around them gain from bfloat16; with the grouped ones
    in float32, steps of the top one to three groups ran 1.3-1.6x faster than
    float32 throughout (docs/benchmarks.md). Frozen ones, which only run
    forward, are left alone; so is every convolution on other devices or
    outside autocast. Idempotent.
    """
    for module in network.modules():
        if not (
            isinstance(module, nn.Conv2d)
            and module.groups > 1
            and module.weight.requires_grad
        ):
            continue
        if _leave_cpu_autocast not in module._forward_pre_hooks.values():
            module.register_forward_pre_hook(_leave_cpu_autocast)
            module.register_forward_hook(_resume_cpu_autocast, always_call=True)


_left = threading.local()  # per thread: the autocast states left, innermost last


def _leave_cpu_autocast(module, args):
    stack = _left.__dict__.setdefault("stack", [])
    x = args[0]
    if not (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")):
        stack.append(None)
        return None
    state = torch.autocast("cpu", enabled=False)
    state.__enter__()
    stack.append(state)
    return (x.float(), *args[1:])


def _resume_cpu_autocast(module, args, output):
    state = _left.stack.pop()
    if state is not None:
        state.__exit__(None, None, None)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype``, or nothing for float32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


_WARMED: set[str] = set()
_WARM_LOCK = threading.Lock()


def warm_up(device: torch.device) -> threading.Thread | None:
    """Start CUDA, cuDNN and the GPU JPEG decoder on ``device`` in the background.

    Each starts lazily and serially on first use (the CUDA context, loading
    cuDNN and its handle, nvJPEG's probe: together seconds on a cold
    process); ``fit`` calls this first, so that they start while the network
    is built. Once per process and device; nothing happens off CUDA. Errors
    are left for the first real use to report. Returns the thread started.
    """
    if device.type != "cuda":
        return None
    with _WARM_LOCK:
        if str(device) in _WARMED:
            return None
        _WARMED.add(str(device))
    thread = threading.Thread(
        target=_warm, args=(device,), daemon=True, name="sktransfer-warm-up"
    )
    thread.start()
    return thread


def _warm(device: torch.device) -> None:
    from ._gpu_decode import gpu_decoder

    try:
        with torch.cuda.device(device):
            # a tiny half-precision channels-last convolution loads cuDNN
            x = torch.zeros((1, 8, 8, 8), device=device, dtype=torch.float16)
            weight = torch.zeros((8, 8, 3, 3), device=device, dtype=torch.float16)
            torch.nn.functional.conv2d(
                x.contiguous(memory_format=torch.channels_last),
                weight.contiguous(memory_format=torch.channels_last),
            )
            torch.cuda.synchronize(device)
        gpu_decoder(device)  # probed once per process and device, then cached
    except Exception:  # the first real use reports it
        return


# The hooks of float32_grouped_convolutions: they act under CPU autocast only.
CPU_AUTOCAST_HOOKS = (_leave_cpu_autocast, _resume_cpu_autocast)
