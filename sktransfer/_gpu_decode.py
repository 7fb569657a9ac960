"""Batched JPEG decoding on a CUDA device (nvJPEG), with a CPU fallback per file.

Backend: ``torchcodec.decoders.decode_jpeg`` when torchcodec is installed with
CUDA support, else ``torchvision.io.decode_jpeg(..., device="cuda")``. Both
take a list of encoded byte tensors and decode the whole batch in one nvJPEG
call. torchvision's CUDA wheels ship nvJPEG, so GPU decoding needs no new
dependency; torchvision deprecates its decoders from 0.29 in favour of
torchcodec, whose PyPI wheels are CPU-only (CUDA builds come from PyTorch's
own index), hence torchcodec first where it works and torchvision otherwise.
Which backend works is probed once per process and device with a tiny JPEG.

Files the GPU decoder does not take (not a JPEG, CMYK, 12-bit, corrupt, or a
batch it rejects) are decoded by Pillow one by one (:mod:`sktransfer._decode`),
which names the file when it cannot read it either.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ._decode import ORIENTATION_TAG, Encoded, decode_encoded, orient


@dataclass(frozen=True)
class Backend:
    """A batched GPU JPEG decoder, and whether it applies EXIF orientation
    itself (torchcodec's CUDA decoder does; torchvision's does not)."""

    decode: Callable[[list[torch.Tensor], str, torch.device], list[torch.Tensor]]
    orients: bool = False


def _torchcodec(blobs, mode, device):
    from torchcodec.decoders import decode_jpeg

    return decode_jpeg(blobs, mode=mode, device=device)


def _torchvision(blobs, mode, device):
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(blobs, mode=ImageReadMode[mode], device=device)


TORCHVISION = Backend(_torchvision)
_BACKENDS: dict[str, Backend | None] = {}  # str(device) -> working backend or None
_PROBE_LOCK = threading.Lock()


def _probe_jpeg() -> torch.Tensor:
    """A 16x8 JPEG tagged "stored rotated" (orientation 6): upright it is 8x16."""
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6
    image = Image.fromarray(np.full((16, 8, 3), 128, np.uint8))
    image.save(buffer, "JPEG", exif=exif.tobytes())
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def _probe(decode, device: torch.device) -> Backend | None:
    try:
        (out,) = decode([_probe_jpeg()], "RGB", device)
    except Exception:  # not installed, no CUDA build, no nvJPEG
        return None
    if out.device.type != "cuda" or out.ndim != 3 or out.shape[0] != 3:
        return None
    if tuple(out.shape[1:]) not in ((16, 8), (8, 16)):
        return None
    return Backend(decode, orients=tuple(out.shape[1:]) == (8, 16))


def gpu_decoder(device: torch.device) -> Backend | None:
    """The backend that decodes JPEGs on ``device``, or ``None`` (none works).

    Probed once per process and device, torchcodec first: which one works
    and whether it turns images upright itself.
    """
    if device.type != "cuda":
        return None
    key = str(device)
    with _PROBE_LOCK:
        if key not in _BACKENDS:
            found = _probe(_torchcodec, device) or _probe(_torchvision, device)
            _BACKENDS[key] = found
    return _BACKENDS[key]


def check_decoder(decoder: str, device: torch.device) -> bool:
    """Whether JPEGs are decoded on ``device`` for ``decoder`` ("auto"/"cpu"/"gpu")."""
    if decoder == "cpu":
        return False
    available = gpu_decoder(device) is not None
    if decoder == "gpu" and not available:
        why = (
            "no GPU JPEG decoder works here (torchvision's nvJPEG or a CUDA build of "
            "torchcodec)"
            if device.type == "cuda"
            else f"the network runs on {str(device)!r}, not on a CUDA device"
        )
        raise ValueError(f"decoder='gpu' but {why}; use decoder='auto' or 'cpu'.")
    return available


def decode_batch(
    encoded: list[Encoded | torch.Tensor],
    device: torch.device,
    backend: Backend | None = None,
) -> list[torch.Tensor]:
    """Decode a batch to upright ``(3, H, W)`` uint8 tensors on ``device``.

    Items already decoded (tensors: files the reading threads gave to Pillow)
    are moved to ``device``; GPU-decodable JPEGs are decoded in one call per
    colour mode, falling back to one-by-one GPU and then CPU decoding.
    ``backend`` defaults to the device's GPU decoder.
    """
    out: list[torch.Tensor | None] = [None] * len(encoded)
    by_mode: dict[str, list[int]] = {}
    for i, item in enumerate(encoded):
        if isinstance(item, torch.Tensor):
            out[i] = item.to(device, non_blocking=True)
        else:
            by_mode.setdefault(item.gpu_mode or "", []).append(i)
    if by_mode:
        backend = backend or gpu_decoder(device)
    for mode, indices in by_mode.items():
        items = [encoded[i] for i in indices]
        if backend is None or not mode:
            decoded = [decode_encoded(item).to(device) for item in items]
        else:
            decoded = _decode_jpegs(backend, items, mode, device)
        for i, image in zip(indices, decoded, strict=True):
            out[i] = image
    return out


def _decode_jpegs(backend: Backend, items: list[Encoded], mode: str, device) -> list:
    blobs = [
        torch.frombuffer(bytearray(item.data), dtype=torch.uint8) for item in items
    ]
    try:
        images = backend.decode(blobs, mode, device)
    except Exception:  # one bad file fails the batch: find it, decode the rest
        images = []
        for blob in blobs:
            try:
                (image,) = backend.decode([blob], mode, device)
            except Exception:
                image = None
            images.append(image)
    decoded = []
    for item, image in zip(items, images, strict=True):
        if image is None or image.ndim != 3 or image.shape[0] not in (1, 3):
            decoded.append(decode_encoded(item).to(device))
            continue
        if image.shape[0] == 1:  # grey: replicated, as Pillow's convert("RGB")
            image = image.expand(3, -1, -1)
        decoded.append(image if backend.orients else orient(image, item.orientation))
    return decoded
