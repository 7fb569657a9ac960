"""Image input: validation, decoding and preprocessing.

Every estimator takes the same inputs (see :func:`check_images`) and turns them
into normalised float32 ``NCHW`` batches with the backbone's own preprocessing.
Files are decoded lazily, in a thread pool, so memory depends on the batch size
and not on the number of images.
"""

from __future__ import annotations

import dataclasses
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from ._decode import decode_file, pil_to_tensor
from .exceptions import InvalidImageError

_CHANNELS = (1, 3, 4)


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to ``resize_size``, centre-crop ``crop_size``,
    scale to [0, 1] and normalise with ``mean``/``std`` (per channel, RGB)."""

    resize_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    @classmethod
    def from_torchvision(cls, transform) -> Preprocessing:
        """From torchvision's ``ImageClassification`` (``weights.transforms()``)."""
        return cls(
            resize_size=int(transform.resize_size[0]),
            crop_size=int(transform.crop_size[0]),
            mean=tuple(float(m) for m in transform.mean),
            std=tuple(float(s) for s in transform.std),
            interpolation=InterpolationMode(transform.interpolation).value,
        )

    @classmethod
    def from_timm(cls, config: dict) -> Preprocessing:
        """From timm's resolved data config (``input_size``, ``crop_pct``, ...)."""
        crop = int(config["input_size"][-1])
        return cls(
            resize_size=int(np.floor(crop / float(config.get("crop_pct", 0.875)))),
            crop_size=crop,
            mean=tuple(float(m) for m in config["mean"]),
            std=tuple(float(s) for s in config["std"]),
            interpolation=str(config.get("interpolation", "bilinear")),
        )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` uint8 (or float in [0, 1]) -> normalised float32."""
        mode = InterpolationMode(self.interpolation)
        images = F.resize(
            images, [self.resize_size], interpolation=mode, antialias=True
        )
        images = F.center_crop(images, [self.crop_size, self.crop_size])
        return self.normalize(images)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The ``(height, width)`` that resizing an image of this size gives
        (as torchvision's ``resize(image, [resize_size])``), before the crop."""
        if height <= width:
            return self.resize_size, int(self.resize_size * width / height)
        return int(self.resize_size * height / width), self.resize_size

    def at_size(self, crop_size: int | None) -> Preprocessing:
        """The same preprocessing cropping ``crop_size`` (resized alike);
        ``None``: as it is."""
        if crop_size is None:
            return self
        ratio = self.resize_size / self.crop_size
        return dataclasses.replace(
            self, crop_size=int(crop_size), resize_size=round(crop_size * ratio)
        )

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or float in [0, 1]) -> float32 scaled to [0, 1], then mean/std."""
        if images.dtype == torch.uint8:
            images = images.float().div_(255.0)
        else:
            images = images.float().clamp(0.0, 1.0)  # may be the caller's memory
        return F.normalize(images, list(self.mean), list(self.std))


class Images(Sequence):
    """A validated collection of images: an array, a list of arrays, file paths
    or PIL images.

    Indexing gives one image as a ``(3, H, W)`` uint8 (or float in [0, 1])
    tensor; :meth:`batches` streams preprocessed batches.
    """

    def __init__(self, kind: str, data, n_channels: int | None, scale: float = 1.0):
        # "array": one ndarray; "arrays": a list of one-image "array" Images
        # (sizes may differ); "paths"; "pil".
        self.kind = kind
        self.data = data
        self.n_channels = n_channels  # of the input; None for files and PIL images
        self.scale = scale  # float arrays given in [0, 255] are divided by 255

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.image(index)

    def image(self, index: int, draft: int | None = None) -> torch.Tensor:
        """One image as ``(3, H, W)`` uint8 (or float in [0, 1]); JPEG files
        decode in the DCT domain to at least ``draft`` pixels a side."""
        if self.kind == "array":
            return self.rows(slice(index, index + 1))[0]
        if self.kind == "paths":
            return decode_file(self.data[index], draft=draft)
        if self.kind == "arrays":
            return self.data[index][0]
        return pil_to_tensor(self.data[index], name=f"PIL image at index {index}")

    def subset(self, indices) -> Images:
        """The images at ``indices``, same kind and scale."""
        if self.kind == "array":
            return Images(
                self.kind, self.data[np.asarray(indices)], self.n_channels, self.scale
            )
        return Images(
            self.kind, [self.data[i] for i in indices], self.n_channels, self.scale
        )

    def rows(self, index) -> torch.Tensor:
        """Rows of an array (a slice or index array) as ``(n, 3, H, W)`` uint8,
        or float in [0, 1]."""
        batch = self._stored_rows(index)
        if batch.dtype != torch.uint8:
            # Out of place: ``batch`` may share memory with the caller's array.
            batch = batch.float() * self.scale if self.scale != 1.0 else batch.float()
        return to_rgb(batch)

    def host_rows(self, start: int, stop: int) -> torch.Tensor:
        """Array rows as stored (uint8 or float32, unscaled), RGBA cut to RGB:
        what crosses to a GPU, where scaling and preprocessing happen."""
        return self._stored_rows(slice(start, stop))[:, :3]

    def _stored_rows(self, index) -> torch.Tensor:
        """``(n, C, H, W)`` rows as stored, sharing the array's memory."""
        rows = self.data[index]
        # read-only memmaps and mirrored views (negative strides, e.g.
        # X[:, :, ::-1]): torch takes neither, so they are copied
        if not rows.flags.writeable or any(step < 0 for step in rows.strides):
            rows = rows.copy()
        # NHWC input stays a channels-last view (no copy): torchvision's uint8
        # resize is fastest on that layout.
        batch = torch.from_numpy(rows)
        return batch.unsqueeze(1) if batch.ndim == 3 else batch  # (n, H, W) grey

    def _load(self, index: int, preprocessing: Preprocessing) -> torch.Tensor:
        # JPEGs decode straight to >= the resize size
        image = self.image(index, draft=preprocessing.resize_size)
        return preprocessing(image.unsqueeze(0))[0]

    def batches(
        self, preprocessing: Preprocessing, batch_size: int, n_jobs: int | None = None
    ) -> Iterator[torch.Tensor]:
        """Yield preprocessed float32 ``(b, 3, crop, crop)`` batches in order (CPU).

        Decoding and resizing run in a thread pool (PIL and torch release the
        GIL), two batches ahead of the caller's forward pass; memory holds at
        most three batches whatever the number of images.
        """
        for batch in self.read_ahead(
            lambda i: self._load(i, preprocessing),
            lambda start, stop: preprocessing(self.rows(slice(start, stop))),
            batch_size,
            n_jobs,
        ):
            yield batch if isinstance(batch, torch.Tensor) else torch.stack(batch)

    def read_ahead(
        self,
        load_item: Callable[[int], object],
        load_rows: Callable[[int, int], object],
        batch_size: int,
        n_jobs: int | None = None,
        ahead: int = 2,
    ) -> Iterator:
        """Yield each batch, loaded in a thread pool ``ahead`` batches ahead,
        in order.

        An array's batch is ``load_rows(start, stop)``; other kinds give the
        list ``[load_item(i) for i in batch]``, one pool task per image.
        """
        workers = n_jobs or min(4, os.cpu_count() or 1)
        starts = list(range(0, len(self), batch_size))

        def submit(pool: ThreadPoolExecutor, start: int) -> list[Future]:
            stop = min(start + batch_size, len(self))
            if self.kind == "array":
                return [pool.submit(load_rows, start, stop)]
            return [pool.submit(load_item, i) for i in range(start, stop)]

        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending = deque(submit(pool, start) for start in starts[:ahead])
            later = iter(starts[ahead:])
            try:
                while pending:
                    futures = pending.popleft()
                    following = next(later, None)
                    if following is not None:
                        pending.append(submit(pool, following))
                    results = [future.result() for future in futures]
                    yield results[0] if self.kind == "array" else results
            finally:  # a stopped consumer or an error: drop queued work
                for futures in pending:
                    for future in futures:
                        future.cancel()


def to_rgb(batch: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)``, C in 1/3/4 -> 3 channels (grey copied, alpha dropped)."""
    channels = batch.shape[1]
    if channels == 1:
        return batch.expand(-1, 3, -1, -1)
    if channels == 4:
        return batch[:, :3]
    return batch


def check_images(X, *, n_channels: int | None = None) -> Images:
    """Validate image input and wrap it as :class:`Images`.

    Parameters
    ----------
    X : array-like, list of arrays, list of paths or list of PIL images
        A uint8/integer/float array ``(n, H, W, C)``, ``(n, C, H, W)`` or
        ``(n, H, W)`` with C in 1, 3, 4; a list of such single images (sizes
        may differ); a list, 1-D array or pandas Series of ``str`` /
        ``pathlib.Path``, or one column of them (an ``(n, 1)`` array or a
        one-column DataFrame, as ``ColumnTransformer`` passes ``["path"]``); or
        a list of ``PIL.Image.Image``. Float arrays must lie
        in [0, 1] (scaled by 255) or, when their maximum exceeds 1, in [0, 255].
    n_channels : int, default=None
        The channel count seen in ``fit``; array input with another count is an error.
    """
    if isinstance(X, Images) and n_channels in (None, X.n_channels):
        return X  # checked already
    if isinstance(X, (str, Path)):
        raise InvalidImageError(
            f"Expected a collection of images, got a single path {str(X)!r}; wrap it "
            "in a list."
        )
    if isinstance(X, Image.Image):
        raise InvalidImageError(
            "Expected a collection of images, got one PIL image; wrap it in a list."
        )
    if hasattr(X, "to_numpy") and not isinstance(X, np.ndarray):
        X = X.to_numpy()  # a pandas Series or DataFrame
    if isinstance(X, np.ndarray) and X.dtype.kind in "OUS" and X.ndim == 1:
        X = list(X)
    elif _is_path_column(X):
        X = list(X[:, 0])
    if isinstance(X, (list, tuple)):
        return _check_list(list(X), n_channels)
    return _check_array(X, n_channels)


def _is_path_column(X) -> bool:
    """An ``(n, 1)`` array of paths: what ``ColumnTransformer`` passes for a list
    of one column (``["path"]``) of a DataFrame."""
    if not isinstance(X, np.ndarray) or X.ndim != 2 or X.shape[1] != 1:
        return False
    if X.dtype.kind in "US":
        return True
    return X.dtype.kind == "O" and all(
        _item_kind(item) == "paths" for item in X[:, 0].tolist()
    )


def _check_list(items: list, n_channels: int | None) -> Images:
    if not items:
        raise InvalidImageError("Got an empty list of images; need at least one image.")
    kinds = {_item_kind(item) for item in items}
    if len(kinds) > 1 or None in kinds:
        seen = sorted({type(item).__name__ for item in items})
        raise InvalidImageError(
            "A list of images must hold only file paths (str/pathlib.Path), only "
            f"PIL images or only arrays; got mixed types {seen}."
        )
    kind = kinds.pop()
    if kind == "arrays":
        return _check_array_list(items, n_channels)
    if kind == "paths":
        for item in items:
            if not os.path.exists(item):
                raise FileNotFoundError(f"Image file {str(item)!r} does not exist.")
        return Images("paths", [os.fspath(item) for item in items], n_channels=None)
    return Images("pil", items, n_channels=None)


def _item_kind(item) -> str | None:
    if isinstance(item, (str, Path, np.str_)):
        return "paths"
    if isinstance(item, Image.Image):
        return "pil"
    if isinstance(item, np.ndarray):
        return "arrays"
    return None


def _check_array_list(items: list, n_channels: int | None) -> Images:
    """A list of single-image arrays ``(H, W[, C])`` or ``(C, H, W)``, any sizes
    (e.g. ``load_sample_images().images``); each is validated like an array."""
    singles = []
    for index, item in enumerate(items):
        if item.ndim not in (2, 3):
            raise InvalidImageError(
                f"Image {index} of the list has shape {item.shape}; each array in a "
                "list must be one image, (H, W), (H, W, C) or (C, H, W)."
            )
        singles.append(_check_array(item[None], n_channels))
    channels = sorted({single.n_channels for single in singles})
    if len(channels) > 1:
        raise InvalidImageError(
            f"The images of the list have different channel counts {channels}; "
            "convert them to one (e.g. all RGB)."
        )
    # Like a single array, the [0, 1] / [0, 255] rule holds for the whole list.
    scale = min(single.scale for single in singles)
    for single in singles:
        if single.data.dtype.kind == "f":
            single.scale = scale
    return Images("arrays", singles, n_channels=channels[0])


def _check_array(X, n_channels: int | None) -> Images:
    if hasattr(X, "tocsr") or hasattr(X, "todense"):
        raise InvalidImageError(
            "Sparse input is not supported: pass images as a dense array, file paths "
            "or PIL images."
        )
    try:
        array = np.asarray(X)
    except Exception as exc:
        raise InvalidImageError(
            f"Cannot convert input of type {type(X).__name__} to an array: {exc}"
        ) from exc
    if array.dtype.kind == "c":
        raise InvalidImageError("Complex data not supported: images are real-valued.")
    if array.dtype.kind not in "uif" or array.dtype == np.bool_:
        raise InvalidImageError(
            f"Image arrays must be uint8, integer or float, got dtype {array.dtype}."
        )
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidImageError("Float images contain NaN or infinity.")
    if array.ndim not in (3, 4):
        raise InvalidImageError(
            f"Expected images as a 3-D (n, H, W) or 4-D (n, H, W, C) / (n, C, H, W) "
            f"array, got shape {array.shape} ({array.ndim}-D). A 2-D (n_samples, "
            "n_features) table is not an image batch; reshape it to (n, H, W[, C])."
        )
    if array.shape[0] == 0:
        raise InvalidImageError(
            f"Got an empty image array of shape {array.shape}; need at least one image."
        )
    if array.ndim == 4:
        if array.shape[-1] in _CHANNELS:
            array = array.transpose(0, 3, 1, 2)  # NHWC view -> NCHW, copied per batch
        elif array.shape[1] not in _CHANNELS:
            raise InvalidImageError(
                f"Cannot find the channel axis of images of shape {array.shape}: "
                "expected "
                f"1, 3 or 4 channels in the last (NHWC) or second (NCHW) axis."
            )
    channels = 1 if array.ndim == 3 else array.shape[1]
    if min(array.shape[-2:]) < 1:
        raise InvalidImageError(f"Images of shape {array.shape} have no pixels.")
    if n_channels is not None and channels != n_channels:
        raise InvalidImageError(
            f"Images have {channels} channel(s) but the estimator was fitted on "
            f"{n_channels}-channel images; the image size may change, the channel "
            "count may not."
        )
    scale = 1.0
    if array.dtype.kind == "f":
        scale = _float_scale(array)
        array = array.astype(np.float32, copy=False)
    elif array.dtype != np.uint8:
        low, high = array.min(), array.max()
        if low < 0 or high > 255:
            raise InvalidImageError(
                f"Integer images must lie in [0, 255], got values in [{low}, {high}]."
            )
        array = array.astype(np.uint8)
    return Images("array", array, n_channels=channels, scale=scale)


def _float_scale(array: np.ndarray) -> float:
    """Float images in [0, 1] are used as is; in [0, 255] (max > 1) scaled by 1/255."""
    low, high = float(array.min()), float(array.max())
    if low >= 0 and high <= 1:
        return 1.0
    if low >= 0 and high <= 255:
        return 1.0 / 255.0
    raise InvalidImageError(
        f"Float images must lie in [0, 1] or in [0, 255], got values in [{low:g}, "
        f"{high:g}]. "
        "Undo any normalisation first: sktransfer applies the backbone's own mean/std."
    )
