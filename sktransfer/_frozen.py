"""Outputs of a network's frozen prefix, computed once for every view of every image.

The frozen groups of a fine-tuned network see the same input in every epoch,
so their output is computed once per image and *view* (the image as
preprocessed, its mirror image), and the rest of the network trains on those
outputs: an epoch picks one view of each image at random, which is the
augmentation. Views are fixed functions of the preprocessed image, not random
draws, so they are the same in every fit whatever its seed.

Across fits (``GridSearchCV`` candidates and folds, refits, predictions), the
outputs are kept in a store (:mod:`sktransfer._cache`: a bounded in-process LRU
or a folder) under the image's content hash, in a namespace keyed by the
network, its weights, the cut point, the preprocessing, the precision and the
device pipeline; each image then goes through the frozen prefix once per cut
point and view, however many fits use it.

Neighbouring cut points share that work (:class:`Via`): a cut's outputs are
computed through the cut one group nearer the input, whose outputs are kept
too (within :data:`LOWER_LIMIT_BYTES`) or taken from the store. A grid search
over ``frozen_layers=["all", <top group>]`` then runs each image's frozen
part once, in either order.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from . import _cache
from ._devices import autocast
from ._finetune_data import channels_last
from ._images import Images, Preprocessing
from ._pipeline import preprocessed_batches
from ._prefix import NotSplittableError, PrefixSplit

# A fit's outputs larger than this go to a temporary file (memory-mapped).
MEMORY_LIMIT_BYTES = 2 * 1024**3
# The in-process store behind cache="memory" (its own bound: prefix outputs of
# early cut points are large and must not evict the embedding cache's rows).
DEFAULT_MEMORY_BYTES = 2 * 1024**3
# The lower cut's outputs computed on the way (see Via) are kept only for sets
# of images (a fit's, a prediction's) whose come to at most this: a quarter of
# the memory store, so that a large set's do not crowd the cut's own out of it.
LOWER_LIMIT_BYTES = DEFAULT_MEMORY_BYTES // 4

VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "center": lambda batch: batch,
    "flip": lambda batch: batch.flip(-1),
}

_memory = _cache.MemoryCache(DEFAULT_MEMORY_BYTES)


@dataclass(frozen=True)
class Via:
    """A cut point one group nearer the input, which a cut's outputs are
    computed through: its split (input -> its boundary), the ``segment`` on
    to the cut's boundary (:func:`~sktransfer._prefix.segment`), and the store
    namespace of its outputs."""

    split: PrefixSplit
    segment: torch.nn.Module
    space: str


class Lent:
    """One fit's frozen outputs after ``cut`` groups, lent to another fit (its
    head's twin, on images ``keys``: rows ``indices`` of ``outputs``) as a
    store: rows of the namespace ``space`` come from ``outputs`` (read
    only); other namespaces are ``store``'s (none without one). ``keys`` are
    the images' content keys, or any keys unique to them without a store."""

    def __init__(self, outputs, indices, cut: int, space: str, keys, store):
        self.outputs, self.cut, self.space, self.store = outputs, cut, space, store
        self.keys = list(keys)
        self.index = dict(zip(self.keys, indices, strict=True))

    def get(self, space, keys, shape, dtype=np.float32) -> list:
        if space != self.space:
            return (
                [None] * len(keys)
                if self.store is None
                else self.store.get(space, keys, shape, dtype)
            )
        views = self.outputs.views
        rows = []
        for row_key in keys:
            key, _, view = row_key.rpartition("-")
            i = self.index.get(key)
            row = None
            if i is not None and view in views:
                row = np.asarray(self.outputs.features[i, views.index(view)])
            rows.append(_cache.checked(row, shape, dtype))
        return rows

    def put(self, space, keys, rows) -> None:
        if self.store is not None and space != self.space:
            self.store.put(space, keys, rows)


def memory_store() -> _cache.MemoryCache:
    """The process-wide store behind ``cache="memory"`` of FineTuneClassifier."""
    return _memory


def resolve_store(cache) -> _cache.MemoryCache | _cache.DiskCache | None:
    """``None`` / ``"memory"`` / a folder -> a store of prefix outputs."""
    if cache == "memory":
        return _memory
    return _cache.resolve(cache)


class FrozenOutputs:
    """The prefix's outputs of ``n`` images under ``views``: ``(n, k, ...)`` float32.

    Computed under autocast to ``dtype`` (as training runs the network),
    batch by batch, each image decoded and preprocessed once for all its
    views; with a ``store``, rows found there are taken and the others put
    there, and with ``via`` (a callable, asked when rows are missing) they
    are computed through a lower cut (:class:`Via`), whose outputs are kept
    too when the whole set's (``set_size`` images, of which ``images`` are a
    batch; all of them by default) come to at most
    :data:`LOWER_LIMIT_BYTES`. ``keys``: the images' store keys, when the
    caller has them. Kept in a CPU tensor, or in a memory-mapped temporary file beyond
    :data:`MEMORY_LIMIT_BYTES`; :meth:`release` frees it and removes the file
    (so does garbage collection, should a fit end in an error).
    """

    def __init__(
        self,
        split: PrefixSplit,
        images: Images,
        preprocessing: Preprocessing,
        views: Sequence[str],
        *,
        batch_size: int,
        device: torch.device,
        dtype: torch.dtype | None,
        store=None,
        space: str = "",
        via: Callable[[], Via | None] | None = None,
        keys: list[str] | None = None,
        set_size: int | None = None,
    ):
        self.views = tuple(views)
        self.features = None
        self._remove = weakref.finalize(self, lambda: None)
        self.n_computed = 0
        shape = output_shape(split, preprocessing, device, dtype)
        n = len(images)
        self.features = self._allocate((n, len(self.views), *shape))
        if keys is None and store is not None:
            keys = _cache.image_keys(images)
        self.keys = keys  # content hashes of the images (with a store)
        missing = list(range(n))
        if store is not None:
            missing = self._take_stored(store, space, keys, shape)
        new = missing
        lower = None  # where the lower cut's outputs computed on the way go
        via = via() if missing and via is not None else None
        if via is not None:
            try:  # a lower cut that gives no row per image is not gone through
                lower_shape, lower_dtype = _probe(
                    via.split, preprocessing, device, dtype
                )
            except NotSplittableError:
                via = None
        if via is not None and store is not None:
            missing = self._through_stored(
                via,
                store,
                keys,
                missing,
                (lower_shape, lower_dtype),
                batch_size,
                device,
                dtype,
            )
            row_bytes = 4 * len(self.views) * int(np.prod(lower_shape))
            if (set_size or n) * row_bytes <= LOWER_LIMIT_BYTES:
                lower = (store, via.space, [keys[i] for i in missing])
        if missing:
            todo = images if len(missing) == n else images.subset(missing)
            self._compute(
                split,
                todo,
                missing,
                preprocessing,
                batch_size,
                device,
                dtype,
                via=via,
                lower=lower,
            )
        if store is not None:
            self._put_stored(store, space, keys, new)
        self.n_computed = len(missing)

    # -------------------------------------------------------------- the store
    def _row_keys(self, key: str) -> list[str]:
        return [f"{key}-{view}" for view in self.views]

    def _take_stored(self, store, space, keys, shape) -> list[int]:
        row_keys = [k for key in keys for k in self._row_keys(key)]
        rows = store.get(space, row_keys, shape)
        missing = []
        width = len(self.views)
        for i in range(len(keys)):
            found = rows[i * width : (i + 1) * width]
            if any(row is None for row in found):
                missing.append(i)
            else:
                self._write(i, np.stack(found))
        return missing

    def _through_stored(
        self, via, store, keys, missing, lower, batch_size, device, dtype
    ) -> list[int]:
        """Rows of the ``missing`` images whose lower-cut outputs are stored,
        computed from those through ``via.segment`` a batch at a time;
        ``lower``: those outputs' shape and the dtype the lower prefix gives
        them in, which the segment is fed in (as when it runs on). Returns
        the others."""
        shape, raw = lower
        width = len(self.views)
        rest = []
        with torch.inference_mode():
            for start in range(0, len(missing), batch_size):
                chunk = missing[start : start + batch_size]
                row_keys = [k for i in chunk for k in self._row_keys(keys[i])]
                rows = store.get(via.space, row_keys, shape)
                found = []
                for j, i in enumerate(chunk):
                    views = rows[j * width : (j + 1) * width]
                    if any(row is None for row in views):
                        rest.append(i)
                    else:
                        found.append((i, np.stack(views)))
                if not found:
                    continue
                block = torch.as_tensor(np.stack([row for _, row in found]))
                block = block.to(device, non_blocking=True).to(raw)
                out = torch.stack(
                    [
                        _run(via.segment, block[:, v], device, dtype).float().cpu()
                        for v in range(width)
                    ],
                    dim=1,
                )
                for (i, _), row in zip(found, out, strict=True):
                    self._write(i, row)
        return rest

    def _put_stored(self, store, space, keys, indices: list[int]) -> None:
        for i in indices:
            row = self.features[i]
            row = row.numpy() if isinstance(row, torch.Tensor) else np.asarray(row)
            store.put(space, self._row_keys(keys[i]), row)

    # ------------------------------------------------------------ computing
    def _compute(
        self,
        split,
        images,
        indices,
        preprocessing,
        batch_size,
        device,
        dtype,
        via=None,
        lower=None,
    ):
        """The prefix's outputs of ``images`` (rows ``indices``); with ``via``,
        through the lower cut, whose outputs go to ``lower`` (a store, its
        namespace and the images' keys) when given."""
        batches = preprocessed_batches(images, preprocessing, batch_size, device)
        start = 0
        with contextlib.closing(batches), torch.inference_mode():
            for batch in batches:
                batch = batch.to(device, non_blocking=True)
                per_view, per_view_lower = [], []
                for view in self.views:
                    x = VIEWS[view](batch)
                    if via is not None:  # as one graph: x stays in its dtype
                        x = _run(via.split.prefix, x, device, dtype)
                        if lower is not None:
                            per_view_lower.append(x.float().cpu())
                        x = _run(via.segment, x, device, dtype)
                        per_view.append(x.float().cpu())
                    else:
                        per_view.append(run_prefix(split, x, device, dtype))
                block = torch.stack(per_view, dim=1)
                for offset, row in enumerate(block):
                    self._write(indices[start + offset], row)
                if lower is not None:
                    store, space, keys = lower
                    rows = torch.stack(per_view_lower, dim=1).numpy()
                    for offset, row in enumerate(rows):
                        store.put(space, self._row_keys(keys[start + offset]), row)
                start += len(batch)

    def _write(self, index: int, row) -> None:
        if isinstance(self.features, torch.Tensor):
            self.features[index] = torch.as_tensor(row)
        else:
            self.features[index] = np.asarray(row)

    def _allocate(self, shape: tuple):
        if 4 * int(np.prod(shape)) <= MEMORY_LIMIT_BYTES:
            return torch.empty(shape, dtype=torch.float32)
        fd, path = tempfile.mkstemp(prefix="sktransfer-prefix-", suffix=".npy")
        os.close(fd)
        self._remove = weakref.finalize(self, _remove_file, path)
        return np.lib.format.open_memmap(path, "w+", np.float32, shape)

    def release(self) -> None:
        self.features = None
        self._remove()


def run_prefix(
    split: PrefixSplit,
    batch: torch.Tensor,
    device: torch.device,
    dtype: torch.dtype | None,
) -> torch.Tensor:
    """The prefix's float32 CPU output for a preprocessed ``batch``."""
    return _run(split.prefix, batch, device, dtype).float().cpu()


def _run(graph, batch, device, dtype) -> torch.Tensor:
    """``graph``'s output for ``batch`` (rows of images) under autocast, on
    ``device``, in the dtype it comes out in."""
    with autocast(device, dtype):
        out = graph(channels_last(batch))
    if not isinstance(out, torch.Tensor) or out.shape[0] != len(batch):
        raise NotSplittableError
    return out


def _probe(split, preprocessing, device, dtype) -> tuple[tuple, torch.dtype]:
    """The shape of one image's prefix output and the dtype it comes out in
    under autocast to ``dtype`` (one blank image, once per size, dtype and
    device kind)."""
    crop = preprocessing.crop_size
    key = (crop, str(dtype), device.type)
    if key not in split.shapes:
        with torch.inference_mode():
            blank = torch.zeros(1, 3, crop, crop, device=device)
            out = _run(split.prefix, blank, device, dtype)
        split.shapes[key] = (tuple(out.shape[1:]), out.dtype)
    return split.shapes[key]


def output_shape(split, preprocessing, device, dtype) -> tuple[int, ...]:
    """The shape of one image's prefix output."""
    return _probe(split, preprocessing, device, dtype)[0]


def namespace(**identity) -> str:
    """The store namespace of one cut point's outputs (see the module docstring)."""
    return _cache.namespace(kind="frozen-prefix", **identity)


def _remove_file(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)
