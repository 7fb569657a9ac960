"""Datasets, batching and augmentation for FineTuneClassifier.

Images go through the same input path as :class:`~sktransfer.CNNFeatureExtractor`
(:func:`~sktransfer._images.check_images`, the weights' own preprocessing).
Datasets yield ``(image, class index)``; the collate function turns the class
indices of a batch back into the labels of ``y``, so that skorch's scoring
callbacks compare ``predict``'s labels with labels.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torchvision.transforms import InterpolationMode, v2

from . import _device_transforms as transforms
from ._images import Images, Preprocessing
from ._pipeline import Prefetcher, pinned

FEATURES_KEY = "frozen_features"
AUGMENT_SCALE = (0.25, 1.0)  # random-resized-crop area range (ImageNet's is 0.08-1)


class ImageDataset(torch.utils.data.Dataset):
    """Validated images and their class indices (``-1`` when predicting).

    ``draft``: JPEG files decode in the DCT domain to at least this size.
    """

    def __init__(
        self, images: Images, y_index: np.ndarray | None, draft: int | None = None
    ):
        self.images = images
        self.y_index = y_index
        self.draft = draft

    def __len__(self) -> int:
        return len(self.images)

    def _target(self, i: int) -> int:
        return -1 if self.y_index is None else int(self.y_index[i])

    def __getitem__(self, i: int):
        return self.images.image(i, self.draft), self._target(i)

    def __getitems__(self, indices: list[int]) -> Fetched:
        """A whole batch at once (``DataLoader`` asks for it): array rows in one
        copy, files decoded in a thread pool."""
        indices = [int(i) for i in indices]
        targets = [self._target(i) for i in indices]
        if self.images.kind == "array":
            stacked = self.images.rows(np.asarray(indices))
            return Fetched(list(zip(stacked, targets, strict=True)), stacked)

        def load(i: int) -> torch.Tensor:
            return self.images.image(i, self.draft)

        if self.images.kind == "paths" and len(indices) > 1:
            images = list(_pool().map(load, indices))
        else:
            images = [load(i) for i in indices]
        return Fetched(list(zip(images, targets, strict=True)))


class Fetched(list):
    """A fetched batch: ``(image, target)`` pairs, as any collate function
    expects, plus the stacked images when they came as one array slice."""

    def __init__(self, items: list, stacked: torch.Tensor | None = None):
        super().__init__(items)
        self.stacked = stacked


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(
            max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="sktransfer"
        )
    return _POOL


class FeatureDataset(torch.utils.data.Dataset):
    """Precomputed frozen-prefix outputs (tensor or memory-mapped array)."""

    def __init__(self, features, y_index: np.ndarray | None):
        self.features = features
        self.y_index = y_index

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int):
        row = self.features[i]
        if not isinstance(row, torch.Tensor):
            row = torch.from_numpy(np.array(row))
        target = -1 if self.y_index is None else int(self.y_index[i])
        return {FEATURES_KEY: row}, target


class PrefixFeatures:
    """Marks precomputed prefix outputs passed through skorch's fit loop."""

    def __init__(self, features):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)


class ImageBatch:
    """Images of different sizes: a batch that cannot be stacked."""

    def __init__(self, images: list[torch.Tensor]):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)


class Collate:
    """Stack images (or keep an :class:`ImageBatch`), class indices -> labels."""

    def __init__(self, classes: np.ndarray):
        self.classes = classes

    def __call__(self, items):
        xs, targets = zip(*items, strict=True)
        first = xs[0]
        if getattr(items, "stacked", None) is not None:
            x = items.stacked
        elif isinstance(first, Mapping):  # frozen-prefix outputs
            x = {
                key: _channels_last(torch.stack([item[key] for item in xs]))
                for key in first
            }
        elif all(item.shape == first.shape for item in xs):
            x = torch.stack(xs)
        else:
            x = ImageBatch(list(xs))
        index = np.asarray(targets, dtype=np.int64)
        labels = self.classes[np.clip(index, 0, len(self.classes) - 1)]
        return x, labels


def default_augmentation(preprocessing: Preprocessing) -> Callable:
    """Random-resized-crop to the crop size and a horizontal flip (one image)."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(
                preprocessing.crop_size,
                scale=AUGMENT_SCALE,
                interpolation=InterpolationMode(preprocessing.interpolation),
                antialias=True,
            ),
            v2.RandomHorizontalFlip(),
        ]
    )


def prepare_batch(
    x, preprocessing: Preprocessing, augment: Callable | None, builtin: bool
) -> torch.Tensor:
    """Images -> normalised float32 ``(b, 3, crop, crop)``, augmented or not.

    ``builtin``: ``augment`` already outputs the crop size (the default
    augmentation); a user's callable is followed by the usual preprocessing.
    """
    images = x.images if isinstance(x, ImageBatch) else x
    if augment is None:
        if isinstance(images, torch.Tensor):
            batch = preprocessing(images)
        else:
            batch = torch.stack([preprocessing(image[None])[0] for image in images])
    else:
        out = []
        for image in images:
            image = augment(image)
            if builtin:
                out.append(preprocessing.normalize(image))
            else:
                out.append(preprocessing(image[None])[0])
        batch = torch.stack(out)
    return _channels_last(batch)


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


class DeviceLoader:
    """Iterate a ``DataLoader`` two batches ahead in a thread, copying each
    batch's tensors to a CUDA device on a side stream from pinned memory, so
    that loading the next batches overlaps the training step of this one."""

    def __init__(self, loader, device: torch.device):
        self.loader = loader
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        stream = torch.cuda.Stream(self.device)
        consumer = torch.cuda.current_stream(self.device)

        def copied():
            for x, y in self.loader:
                with torch.cuda.stream(stream):
                    x = _map_tensors(
                        lambda t: pinned(t).to(self.device, non_blocking=True), x
                    )
                    ready = torch.cuda.Event()
                    ready.record(stream)
                yield x, y, ready

        for x, y, ready in Prefetcher(copied()):
            consumer.wait_event(ready)
            _map_tensors(lambda t: t.record_stream(consumer), x)
            yield x, y


def _map_tensors(fn, x):
    """``fn`` over the tensors of a batch: a tensor, an ImageBatch or a dict."""
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, ImageBatch):
        return ImageBatch([fn(image) for image in x.images])
    if isinstance(x, Mapping):
        return {key: _map_tensors(fn, value) for key, value in x.items()}
    return x


def _channels_last(batch: torch.Tensor) -> torch.Tensor:
    """Channels-last maps: faster training steps on CPU (measured by
    benchmarks/bench_layout.py), and the tensor-core layout on GPUs.
    Images and frozen-prefix outputs get the same layout, so the cached and
    uncached paths compute alike."""
    if batch.ndim != 4:
        return batch
    return batch.contiguous(memory_format=torch.channels_last)
