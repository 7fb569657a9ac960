"""Datasets, batching and augmentation for FineTuneClassifier.

Images go through the same input path as :class:`~sktransfer.CNNFeatureExtractor`
(:func:`~sktransfer._images.check_images`, the weights' own preprocessing).
Datasets yield ``(image, class index)``; the collate function turns the class
indices of a batch back into the labels of ``y``, so that skorch's scoring
callbacks compare ``predict``'s labels with labels.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torchvision.transforms import InterpolationMode, v2

from . import _device_transforms as transforms
from ._images import Images, Preprocessing, to_rgb
from ._pipeline import Prefetcher, pinned

AUGMENT_SCALE = (0.25, 1.0)  # random-resized-crop area range (ImageNet's is 0.08-1)


FEATURES_KEY = "frozen_features"  # a batch of frozen-prefix outputs, (b, views, ...)
IMAGES_KEY = "images"  # a batch of images, when it travels with sample weights
WEIGHTS_KEY = "sample_weight"


class _Weighted:
    """Class indices (``-1`` when predicting) and optional sample weights;
    items are ``(x, target)``, or ``(x, target, weight)`` with weights."""

    def __init__(self, y_index: np.ndarray | None, weights: np.ndarray | None):
        self.y_index = y_index
        self.weights = weights

    def _target(self, i: int) -> int:
        return -1 if self.y_index is None else int(self.y_index[i])

    def _item(self, x, i: int) -> tuple:
        if self.weights is None:
            return x, self._target(i)
        return x, self._target(i), float(self.weights[i])


class ImageDataset(_Weighted, torch.utils.data.Dataset):
    """Validated images, their class indices and optional sample weights.

    ``draft``: JPEG files decode in the DCT domain to at least this size.
    ``pin``: batches of uint8 array rows are gathered straight into
    page-locked memory (they are bound for a CUDA device).
    """

    def __init__(
        self,
        images: Images,
        y_index: np.ndarray | None,
        draft: int | None = None,
        weights: np.ndarray | None = None,
        pin: bool = False,
    ):
        super().__init__(y_index, weights)
        self.images = images
        self.draft = draft
        self.pin = pin

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self._item(self.images.image(i, self.draft), i)

    def __getitems__(self, indices: list[int]) -> Fetched:
        """A whole batch at once (``DataLoader`` asks for it): array rows in one
        copy, files decoded in a thread pool."""
        indices = [int(i) for i in indices]
        if self.images.kind == "array":
            if self.images.data.dtype == np.uint8:
                stacked = gather_rows(self.images, indices, pin=self.pin)
            else:
                stacked = self.images.rows(np.asarray(indices))
            items = [self._item(x, i) for x, i in zip(stacked, indices, strict=True)]
            return Fetched(items, stacked)

        def load(i: int) -> torch.Tensor:
            return self.images.image(i, self.draft)

        if self.images.kind == "paths" and len(indices) > 1:
            images = list(_pool().map(load, indices))
        else:
            images = [load(i) for i in indices]
        return Fetched([self._item(x, i) for x, i in zip(images, indices, strict=True)])


class Fetched(list):
    """A fetched batch: ``(x, target[, weight])`` items, as any collate
    function expects, plus the stacked inputs when they came as one gather
    (array rows, or ``{FEATURES_KEY: rows}``)."""

    def __init__(self, items: list, stacked: torch.Tensor | dict | None = None):
        super().__init__(items)
        self.stacked = stacked


def gather_rows(images: Images, indices: list[int], pin: bool) -> torch.Tensor:
    """uint8 rows of an array as ``Images.rows`` gives them, copied once.

    Numpy's fancy indexing then pinning copied each batch twice, on the
    loading thread; here the rows go straight into their (page-locked, with
    ``pin`` where CUDA is) batch, in the memory layout of the array (an NHWC
    array's rows stay one block each), in the thread pool (numpy releases
    the GIL while it copies). RGBA loses alpha in the copy.
    """
    data = images.data  # (n, C, H, W), possibly a view of NHWC, or (n, H, W)
    grey = data.ndim == 3
    channels = 1 if grey else min(data.shape[1], 3)
    nhwc = not grey and data.strides[1] < data.strides[-1]
    out = torch.empty(
        (len(indices), channels, *data.shape[-2:]),
        dtype=torch.uint8,
        memory_format=torch.channels_last if nhwc else torch.contiguous_format,
        pin_memory=pin and torch.cuda.is_available(),
    )
    target = out.numpy()[:, 0] if grey else out.numpy()
    source = data if grey else data[:, :channels]

    def copy(rows: np.ndarray) -> None:
        for row in rows:
            target[row] = source[indices[row]]

    parts = np.array_split(np.arange(len(indices)), _POOL_WORKERS)
    list(_pool().map(copy, [part for part in parts if len(part)]))
    return to_rgb(out)


_POOL: ThreadPoolExecutor | None = None
_POOL_WORKERS = min(8, os.cpu_count() or 1)


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(
            max_workers=_POOL_WORKERS, thread_name_prefix="sktransfer"
        )
    return _POOL


class FeatureDataset(_Weighted, torch.utils.data.Dataset):
    """Frozen-prefix outputs ``(n, views, ...)`` (tensor or memory-mapped array):
    an item is one image's outputs under every view."""

    def __init__(
        self,
        features,
        y_index: np.ndarray | None,
        weights: np.ndarray | None = None,
    ):
        super().__init__(y_index, weights)
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int):
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> Fetched:
        """A batch at once: one gather of the rows (``DataLoader`` asks for it)."""
        rows = self.features[np.asarray(indices, dtype=np.int64)]
        if not isinstance(rows, torch.Tensor):  # a memory-mapped file's rows
            rows = torch.from_numpy(np.ascontiguousarray(rows))
        items = [
            self._item({FEATURES_KEY: row}, i)
            for row, i in zip(rows, indices, strict=True)
        ]
        return Fetched(items, {FEATURES_KEY: rows})


class StoredPrefixDataset(torch.utils.data.Dataset):
    """Images to predict, fetched as frozen-prefix outputs batch by batch:
    ``outputs(images)`` takes them from the ``cache`` store or computes them
    (memory holds a batch, whatever the number of images)."""

    def __init__(self, images: Images, outputs: Callable):
        self.images = images
        self.outputs = outputs

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list:
        frozen = self.outputs(self.images.subset([int(i) for i in indices]))
        return [({FEATURES_KEY: row}, -1) for row in frozen.features]


class ImageBatch:
    """Images of different sizes: a batch that cannot be stacked."""

    def __init__(self, images: list[torch.Tensor]):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)


class Collate:
    """Stack images (or keep an :class:`ImageBatch`) or prefix outputs; class
    indices -> labels; sample weights, when given, travel beside the inputs
    (``{IMAGES_KEY or FEATURES_KEY: ..., WEIGHTS_KEY: (b,) tensor}``)."""

    def __init__(self, classes: np.ndarray):
        self.classes = classes

    def __call__(self, items):
        columns = list(zip(*items, strict=True))
        xs, targets = columns[0], columns[1]
        first = xs[0]
        if getattr(items, "stacked", None) is not None:
            x = items.stacked
        elif isinstance(first, Mapping):  # frozen-prefix outputs
            x = {key: torch.stack([item[key] for item in xs]) for key in first}
        elif all(item.shape == first.shape for item in xs):
            x = torch.stack(xs)
        else:
            x = ImageBatch(list(xs))
        if len(columns) == 3:
            weights = torch.tensor(columns[2], dtype=torch.float32)
            x = (
                {**x, WEIGHTS_KEY: weights}
                if isinstance(x, dict)
                else {
                    IMAGES_KEY: x,
                    WEIGHTS_KEY: weights,
                }
            )
        index = np.asarray(targets, dtype=np.int64)
        labels = self.classes[np.clip(index, 0, len(self.classes) - 1)]
        return x, labels


def unpack(x) -> tuple[object, torch.Tensor | None]:
    """A collated batch -> (images or ``{FEATURES_KEY: ...}``, sample weights)."""
    if not isinstance(x, Mapping) or WEIGHTS_KEY not in x:
        return x, None
    if IMAGES_KEY in x:
        return x[IMAGES_KEY], x[WEIGHTS_KEY]
    return {FEATURES_KEY: x[FEATURES_KEY]}, x[WEIGHTS_KEY]


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


def flip_augmentation() -> Callable:
    """A horizontal flip of half the training images, at random."""
    return v2.RandomHorizontalFlip()


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
    return channels_last(batch)


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
    that loading the next batches overlaps the training step of this one.

    skorch iterates one loader every epoch. With ``next_epoch`` (training),
    the next epoch's first batches start loading as soon as this epoch's are
    all used, while validation and callbacks run: no epoch starts by waiting
    for its first batch. Each epoch's order is drawn from the sampler in the
    iterating thread, before the loading thread starts (:func:`epoch_batches`):
    with a ``random_state`` a fit draws its random numbers (shuffling here,
    augmentation in the training step) in the same order every time.
    Runs on the CPU too (no streams, no pinning), which is how tests check it.
    """

    def __init__(self, loader, device: torch.device, *, next_epoch: bool = False):
        self.loader = loader
        self.device = torch.device(device)
        self.next_epoch = next_epoch
        self._ahead: Prefetcher | None = None
        self._stop_ahead: weakref.finalize | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        cuda = self.device.type == "cuda"
        prefetcher, self._ahead = self._ahead or self._start(), None
        if self._stop_ahead is not None:
            self._stop_ahead.detach()  # it is this epoch's now
        consumer = torch.cuda.current_stream(self.device) if cuda else None
        with contextlib.closing(prefetcher):
            for x, y, ready in prefetcher:
                if cuda:
                    consumer.wait_event(ready)
                    _map_tensors(lambda t: t.record_stream(consumer), x)
                yield x, y
        if self.next_epoch:
            self._ahead = self._start()
            # An epoch loaded ahead that never comes (the fit ended) stops
            # when this loader goes (the thread holds no reference to it).
            self._stop_ahead = weakref.finalize(self, self._ahead.close, False)

    def _start(self) -> Prefetcher:
        batches = epoch_batches(self.loader)
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        return Prefetcher(_copied(batches, self.device, stream))


def epoch_batches(loader) -> Iterator:
    """One epoch of ``loader``'s batches, its order drawn now, in the caller's
    thread; loading and collating happen where the result is iterated.

    For a map-style dataset loaded in-process (``num_workers=0``, batches
    from a ``batch_sampler``), what ``DataLoader`` would do; otherwise the
    loader's own iterator (created here; its workers start now).
    """
    dataset = loader.dataset
    if (
        loader.num_workers
        or loader.batch_sampler is None
        or isinstance(dataset, torch.utils.data.IterableDataset)
    ):
        return iter(loader)
    plan = list(loader.batch_sampler)
    return _fetched(dataset, loader.collate_fn, plan)


def _fetched(dataset, collate: Callable, plan: list) -> Iterator:
    getitems = getattr(dataset, "__getitems__", None)
    for indices in plan:
        items = getitems(indices) if getitems else [dataset[i] for i in indices]
        yield collate(items)


def _copied(batches: Iterator, device: torch.device, stream) -> Iterator:
    """``(x, y, ready)``: x's tensors copied to ``device`` on ``stream``
    (``None``: the CPU), ``ready`` the event that marks the copy done."""
    for x, y in batches:
        if stream is None:
            yield _map_tensors(lambda t: t.to(device), x), y, None
            continue
        with torch.cuda.stream(stream):
            x = _map_tensors(lambda t: pinned(t).to(device, non_blocking=True), x)
            ready = torch.cuda.Event()
            ready.record(stream)
        yield x, y, ready


def _map_tensors(fn, x):
    """``fn`` over the tensors of a batch: a tensor, an ImageBatch or a dict."""
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, ImageBatch):
        return ImageBatch([fn(image) for image in x.images])
    if isinstance(x, Mapping):
        return {key: _map_tensors(fn, value) for key, value in x.items()}
    return x


def channels_last(batch: torch.Tensor) -> torch.Tensor:
    """Channels-last maps: faster training steps on CPU (measured by
    benchmarks/bench_layout.py), and the tensor-core layout on GPUs.
    Images and frozen-prefix outputs get the same layout, so the cached and
    uncached paths compute alike."""
    if batch.ndim != 4:
        return batch
    return batch.contiguous(memory_format=torch.channels_last)
