"""Preprocessing and augmentation as batched tensor operations on any device.

On CUDA, images cross to the device as uint8 (a quarter of float32's bytes)
and are resized, cropped and normalised there, with the same antialiased
interpolation as the CPU path (:class:`~sktransfer._images.Preprocessing`).
The CPU path keeps resizing uint8 images in its thread pool, which is faster
on a CPU; these functions run on CPU tensors too, which is how the tests
check them against it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torchvision.ops import roi_align
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from ._images import Preprocessing, to_rgb

# Float working memory of one resize call: full-size photos (nvJPEG decodes
# at full size) are resized a few at a time, not a whole batch at once.
_CHUNK_BYTES = 1 << 30
# CUDA's antialiased resize keeps every output pixel's filter weights in a
# block's 48 KiB of shared memory: it fails ("Too much shared memory
# required") above a shrink factor of about 47 for bicubic, 94 for bilinear.
# Larger shrinks (photos with sides near 10,000 px) go in equal antialiased
# steps of at most this much: within one uint8 level of one step
# (tests/test_device.py). Averaging k x k blocks first would be cheaper but
# shifts the image where a side is not a multiple of k (up to 3 levels).
MAX_RESIZE_FACTOR = 24


def preprocess(
    images: torch.Tensor | Sequence[torch.Tensor], preprocessing: Preprocessing
) -> torch.Tensor:
    """Resize, centre-crop and normalise images already on their device.

    ``images``: a ``(N, C, H, W)`` batch or a list of ``(C, H, W)`` images of
    any sizes, C in 1/3/4, uint8 or float in [0, 1]. Images of one size are
    resized together. Returns normalised float32 ``(N, 3, crop, crop)``,
    channels-last.
    """
    if isinstance(images, torch.Tensor):
        images = list(images)
    groups: dict[tuple, list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault((tuple(image.shape), image.dtype), []).append(i)
    out: list[torch.Tensor | None] = [None] * len(images)
    for (shape, dtype), indices in groups.items():
        for chunk in _chunks(indices, shape):
            batch = torch.stack([images[i] for i in chunk])
            rows = _normalize(_resize_crop(batch, preprocessing), dtype, preprocessing)
            for i, row in zip(chunk, rows, strict=True):
                out[i] = row
    return torch.stack(out).contiguous(memory_format=torch.channels_last)


def _chunks(indices: list[int], shape: tuple) -> list[list[int]]:
    """``indices`` in runs whose float copies fit :data:`_CHUNK_BYTES`."""
    per_image = 4 * 3 * shape[-2] * shape[-1]
    step = max(1, _CHUNK_BYTES // per_image)
    return [indices[i : i + step] for i in range(0, len(indices), step)]


def _resize_crop(batch: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """``(N, C, H, W)`` -> float ``(N, 3, crop, crop)`` on the 0-255 or 0-1 scale."""
    batch = to_rgb(batch).float()
    height, width = batch.shape[-2:]
    size = preprocessing.resized_size(height, width)
    factor = min(height / size[0], width / size[1])
    steps = 1
    if factor > MAX_RESIZE_FACTOR:
        steps = math.ceil(math.log(factor) / math.log(MAX_RESIZE_FACTOR))
    ratio = factor ** (1 / steps)
    mode = InterpolationMode(preprocessing.interpolation)
    for step in range(steps - 1, -1, -1):
        target = [round(size[0] * ratio**step), round(size[1] * ratio**step)]
        batch = F.resize(batch, target, interpolation=mode, antialias=True)
    return F.center_crop(batch, [preprocessing.crop_size, preprocessing.crop_size])


@functools.lru_cache(maxsize=32)
def _scale_shift(
    device: torch.device, full: float, mean: tuple, std: tuple
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``1 / (full * std)`` and ``mean / std`` on ``device``, made
    once (a copy to the device waits for it)."""
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)
    return (1.0 / (full * std_t)).to(device), (mean_t / std_t).to(device)


def _normalize(
    batch: torch.Tensor, source_dtype: torch.dtype, preprocessing: Preprocessing
) -> torch.Tensor:
    """Clamp to the source's range (bicubic overshoots, as uint8 results cannot)
    and normalise with mean/std in one multiply-add."""
    full = 255.0 if source_dtype == torch.uint8 else 1.0
    scale, shift = _scale_shift(
        batch.device, full, preprocessing.mean, preprocessing.std
    )
    out = batch.clamp(0.0, full) * scale - shift
    return out.contiguous(memory_format=torch.channels_last)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small tensor (parameters, labels) to ``device`` without waiting for
    it: from pageable memory, a copy to CUDA blocks until the GPU has done
    all the work queued before it."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def random_crop_boxes(
    sizes: torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-image random-resized-crop boxes ``(N, 4)`` as ``(top, left, h, w)``.

    The distribution of :class:`torchvision.transforms.v2.RandomResizedCrop`:
    an area fraction uniform in ``scale``, a log-uniform aspect ratio in
    ``ratio``, up to 10 tries per image, else the largest centred crop of an
    allowed ratio. ``sizes`` holds each image's ``(H, W)``.
    """
    n, tries = len(sizes), 10
    heights, widths = sizes[:, 0:1].double(), sizes[:, 1:2].double()
    area = heights * widths
    u = torch.rand((n, tries, 3), generator=generator, dtype=torch.float64)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (h > 0) & (w <= widths) & (h <= heights)
    first = torch.where(fits.any(1), fits.int().argmax(1), -1)
    pick = first.clamp(min=0).unsqueeze(1)
    h = h.gather(1, pick).squeeze(1)
    w = w.gather(1, pick).squeeze(1)
    top = torch.floor(u[..., 2].gather(1, pick).squeeze(1) * (heights[:, 0] - h + 1))
    # a second draw for ``left``, as RandomResizedCrop draws top and left apart
    v = torch.rand(n, generator=generator, dtype=torch.float64)
    left = torch.floor(v * (widths[:, 0] - w + 1))
    # fallback: whole image cut to the allowed ratio range, centred
    H, W = heights[:, 0], widths[:, 0]
    in_ratio = W / H
    fb_w = torch.where(
        in_ratio < ratio[0],
        W,
        torch.where(in_ratio > ratio[1], torch.round(H * ratio[1]), W),
    )
    fb_h = torch.where(
        in_ratio < ratio[0],
        torch.round(W / ratio[0]),
        torch.where(in_ratio > ratio[1], H, H),
    )
    missed = first < 0
    h = torch.where(missed, fb_h, h)
    w = torch.where(missed, fb_w, w)
    top = torch.where(missed, torch.floor((H - fb_h) / 2), top)
    left = torch.where(missed, torch.floor((W - fb_w) / 2), left)
    return torch.stack([top, left, h, w], dim=1).long()


def augment(
    images: torch.Tensor | Sequence[torch.Tensor],
    preprocessing: Preprocessing,
    scale: tuple[float, float],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random-resized-crop and horizontal flip, each image its own parameters.

    Batched crop-and-resize (``roi_align`` with adaptive sampling, which
    averages several bilinear samples per output pixel when shrinking: an
    antialiased resize) and a batched flip, on the images' device. Images of
    different sizes are placed on a zero canvas; their boxes stay inside
    each image. Returns normalised float32 ``(N, 3, crop, crop)``, channels-last.
    """
    stacked = isinstance(images, torch.Tensor)
    if not stacked:
        images = list(images)
    sizes = torch.tensor([tuple(image.shape[-2:]) for image in images])
    boxes = random_crop_boxes(sizes, scale, generator=generator)
    flips = torch.rand(len(images), generator=generator) < 0.5
    device, dtype = images[0].device, images[0].dtype
    height, width = int(sizes[:, 0].max()), int(sizes[:, 1].max())
    parts = []
    for chunk in _chunks(list(range(len(images))), (height, width)):
        if stacked:  # one size: the batch is its own canvas
            canvas = to_rgb(images[chunk[0] : chunk[-1] + 1]).float()
        else:
            canvas = images[0].new_zeros(
                (len(chunk), 3, height, width), dtype=torch.float32
            )
            for row, i in enumerate(chunk):
                image = to_rgb(images[i][None])[0]
                canvas[row, :, : image.shape[-2], : image.shape[-1]] = image
        parts.append(crop_resize(canvas, boxes[chunk], preprocessing.crop_size))
    out = torch.cat(parts)
    flips = to_device(flips, device).view(-1, 1, 1, 1)
    out = torch.where(flips, out.flip(-1), out)
    return _normalize(out, dtype, preprocessing)


def crop_resize(batch: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop ``boxes[i] = (top, left, h, w)`` of image i and resize it to
    ``size x size``, for the whole float batch in one ``roi_align`` call."""
    top, left, h, w = boxes.double().unbind(1)
    index = torch.arange(len(boxes), dtype=torch.float64)
    rois = torch.stack([index, left, top, left + w, top + h], dim=1)
    rois = to_device(rois.to(batch.dtype), batch.device)
    return roi_align(
        batch.contiguous(), rois, (size, size), sampling_ratio=-1, aligned=True
    )
