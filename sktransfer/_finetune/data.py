"""The data of a fit: datasets, batches and the preprocessing of images.

A batch is ``({"images" or "rows": ..., ["sample_weight": ...]}, labels)``.
Images take the input path of :class:`~sktransfer.CNNFeatureExtractor`
(:func:`~sktransfer._images.check_images`, the weights' own preprocessing);
rows are a cut's stored activations (:mod:`.rows`), one per view of each
image. The collate function turns class indices back into the labels of
``y``, so that skorch's scoring callbacks compare labels.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import nn
from torchvision.transforms import InterpolationMode, v2

from .. import _device_transforms as transforms
from .._images import Images, Preprocessing

AUGMENT_SCALE = (0.25, 1.0)  # random-resized-crop area range (ImageNet's is 0.08-1)

IMAGES = "images"
ROWS = {"train": "rows", "head": "head_rows"}  # (b, views, ...): a phase's cut
WEIGHTS = "sample_weight"


class FitData(torch.utils.data.Dataset):
    """A fit's images, class indices and weights, and, where they were
    computed once, the rows of each phase's cut (``rows[phase]``): an item
    is an image's rows in the current ``phase``, else the image."""

    def __init__(
        self,
        images: Images,
        y_index: np.ndarray | None,
        weights: np.ndarray | None = None,
        *,
        draft: int | dict | None = None,
    ):
        self.images = images
        self.y_index = y_index
        self.weights = weights
        self.rows: dict = {}  # set by the fit: rows of the phases' cuts
        # JPEGs decode in the DCT domain to at least this (per phase)
        self.drafts = draft if isinstance(draft, dict) else {"train": draft}
        self.phase = "train"

    def __len__(self) -> int:
        return len(self.images)

    def release(self) -> None:
        """Free the rows (and remove their temporary files)."""
        for rows in self.rows.values():
            rows.release()
        self.rows = {}

    def __getitem__(self, i: int):
        return self.__getitems__([i])[0]

    def __getitems__(self, indices) -> Fetched:
        """A whole batch at once (``DataLoader`` asks for it): rows and array
        rows in one gather, files decoded in a thread pool."""
        indices = [int(i) for i in indices]
        key, xs = IMAGES, self._stored(indices)
        if xs is not None:
            key = ROWS[self.phase]
        elif self.images.kind == "array":
            xs = self.images.rows(np.asarray(indices))
        else:
            draft = self.drafts.get(self.phase, self.drafts["train"])
            load = functools.partial(self.images.image, draft=draft)
            if self.images.kind == "paths" and len(indices) > 1:
                with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
                    xs = list(pool.map(load, indices))
            else:
                xs = [load(i) for i in indices]
        targets = [
            -1 if self.y_index is None else int(self.y_index[i]) for i in indices
        ]
        columns = [[{key: x} for x in xs], targets]
        if self.weights is not None:
            columns.append([float(self.weights[i]) for i in indices])
        block = {key: xs} if isinstance(xs, torch.Tensor) else None
        return Fetched(list(zip(*columns, strict=True)), block)

    def _stored(self, indices: list[int]) -> torch.Tensor | None:
        """The rows of ``indices`` in this phase, where computed once."""
        rows = self.rows.get(self.phase)
        return None if rows is None else rows.take(indices)


class PredictData(FitData):
    """Images to predict; with ``fetch`` (a function of a batch of images),
    fetched as the training cut's rows, batch by batch (memory holds one)."""

    def __init__(self, images: Images, fetch: Callable | None, draft: int | None):
        super().__init__(images, None, draft=draft)
        self.fetch = fetch

    def _stored(self, indices: list[int]) -> torch.Tensor | None:
        return None if self.fetch is None else self.fetch(self.images.subset(indices))


class Fetched(list):
    """``(x, target[, weight])`` items, as any collate function expects, and
    their inputs as gathered (``stacked``), which :class:`Collate` takes:
    stacking them again (ops per image, each through the fit's mode) made a
    head's step in a fit 3.0x a bare step's time, not 1.5-1.7x."""

    def __init__(self, items: list, stacked: dict | None = None):
        super().__init__(items)
        self.stacked = stacked


class ImageBatch:
    """Images of different sizes: a batch that cannot be stacked."""

    def __init__(self, images: list[torch.Tensor]):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)


class Collate:
    """Items -> ``({IMAGES or ROWS: batch[, WEIGHTS: (b,)]}, labels)``: images of
    one size stacked (else an :class:`ImageBatch`), class indices -> labels."""

    def __init__(self, classes: np.ndarray):
        self.classes = classes

    def __call__(self, items):
        columns = list(zip(*items, strict=True))
        xs, targets = columns[0], columns[1]
        x = getattr(items, "stacked", None)
        if x is None:
            key = next(iter(xs[0]))
            parts = [item[key] for item in xs]
            same = all(p.shape == parts[0].shape for p in parts)
            x = {key: torch.stack(parts) if same else ImageBatch(parts)}
        if len(columns) == 3:
            x = {**x, WEIGHTS: torch.tensor(columns[2], dtype=torch.float32)}
        index = np.asarray(targets, dtype=np.int64)  # -1: no label (predictions)
        return x, self.classes[np.clip(index, 0, len(self.classes) - 1)]


def split_batch(x) -> tuple[str | None, object, torch.Tensor | None]:
    """A collated batch -> ``(phase of its rows or None for images, the
    rows or images, sample weights)``."""
    if not isinstance(x, Mapping):  # a user's own collate function: images
        return None, x, None
    for phase, key in ROWS.items():
        if key in x:
            return phase, x[key], x.get(WEIGHTS)
    return None, x[IMAGES], x.get(WEIGHTS)


def default_augmentation(preprocessing: Preprocessing) -> Callable:
    """Random-resized-crop to the crop size and a horizontal flip (one image)."""
    mode = InterpolationMode(preprocessing.interpolation)
    crop = v2.RandomResizedCrop(
        preprocessing.crop_size, scale=AUGMENT_SCALE, interpolation=mode, antialias=True
    )
    return v2.Compose([crop, v2.RandomHorizontalFlip()])


def prepare_batch(
    x, preprocessing: Preprocessing, augment: Callable | None, builtin: bool
) -> torch.Tensor:
    """Images -> normalised float32 ``(b, 3, crop, crop)``, augmented or not.

    ``builtin``: ``augment`` already outputs the crop size (the default
    augmentation); a user's callable is followed by the usual preprocessing.
    """
    images = x.images if isinstance(x, ImageBatch) else x
    if augment is None and isinstance(images, torch.Tensor):
        return channels_last(preprocessing(images))
    augment = augment or (lambda image: image)
    one = lambda image: preprocessing(image[None])[0]  # noqa: E731
    finish = preprocessing.normalize if builtin else one
    return channels_last(torch.stack([finish(augment(image)) for image in images]))


def prepare_on_device(
    x, preprocessing: Preprocessing, augment: Callable | bool, device: torch.device
) -> torch.Tensor:
    """Images -> normalised float32 batch, on ``device`` (uint8 crosses).

    ``augment``: ``False``, ``True`` (batched random-resized-crop and flip,
    per-image parameters) or a callable applied to each image on the device.
    """
    images = x.images if isinstance(x, ImageBatch) else x
    if isinstance(images, torch.Tensor):
        images = images.to(device, non_blocking=True)
    else:
        images = [image.to(device, non_blocking=True) for image in images]
    if augment is True:
        return transforms.augment(images, preprocessing, AUGMENT_SCALE)
    if augment is not False:
        images = [augment(image) for image in images]
    return transforms.preprocess(images, preprocessing)


def channels_last(batch: torch.Tensor) -> torch.Tensor:
    """Channels-last maps: faster training steps on CPU (measured by
    benchmarks/bench_layout.py), and the tensor-core layout on GPUs."""
    if batch.ndim != 4:
        return batch
    return batch.contiguous(memory_format=torch.channels_last)


def channels_last_gradients(network: nn.Module) -> None:
    """Give the gradient into each global average pooling of ``network`` the
    channels-last layout of the maps before it. The mean's backward pass
    broadcasts it in the default layout, and the BatchNorm and activation
    before the pooling then take their slow mixed-layout path (Lite0's top
    group stepped 1.29x slower in bfloat16: ``bench_tail_precision.py``).
    Forward outputs are untouched. Idempotent."""
    for module in network.modules():
        hooks = module._forward_pre_hooks.values()
        if isinstance(module, nn.AdaptiveAvgPool2d) and gradient_as_input not in hooks:
            module.register_forward_pre_hook(gradient_as_input)


def gradient_as_input(module, args):
    """The hook of :func:`channels_last_gradients` (no forward output changes)."""
    x = args[0] if args else None
    if isinstance(x, torch.Tensor) and x.requires_grad and x.ndim == 4:
        if x.is_contiguous(memory_format=torch.channels_last):
            x.register_hook(channels_last)
