"""A cut's rows for a set of images: each image and view through the frozen
part once, kept by content across fits.

The *views* of an image are fixed functions of the preprocessed image (the
image, its mirror image), so its rows are the same in every fit, whatever
the seed. A store (``cache``: the in-process LRU or a folder) keys a row by
the image's content (:func:`~sktransfer._cache.image_keys`: what decoding
reads) and the view, inside a :func:`namespace` that digests all else that
determines it, so that a hit is the value that computing gives. A chain of
cuts (a fit's frozen groups, then the head's) is computed in one pass, each
cut's rows from the previous cut's, the first from the images.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import math
import os
import tempfile
import weakref
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch

from .. import _cache
from .._devices import autocast
from .._groups import ancestors
from .._images import Images, Preprocessing
from .._pipeline import preprocessed_batches
from .cut import Cut
from .data import channels_last  # the layout of training steps' images
from .fingerprint import (
    class_digest,
    fingerprint,
    is_opaque,
    neutral_hooks,
    settings_of,
)

# A fit's rows larger than this go to a temporary file (memory-mapped).
MEMORY_LIMIT_BYTES = 2 * 1024**3
# The in-process store behind cache="memory" (its own bound: rows of early
# cuts are large and must not evict the embedding cache's).
STORE_BYTES = 2 * 1024**3
# Rows of a lower cut are kept on the way (compute_rows) for sets whose rows
# come to at most a quarter of the store.
LOWER_BYTES = STORE_BYTES // 4

VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "center": lambda batch: batch,
    "flip": lambda batch: batch.flip(-1),
}

_memory = _cache.MemoryCache(STORE_BYTES)


def resolve_store(cache) -> _cache.MemoryCache | _cache.DiskCache | None:
    """``None`` / ``"memory"`` (the process-wide store) / a folder -> a store."""
    return _memory if cache == "memory" else _cache.resolve(cache)


def namespace(cut: Cut, preprocessing: Preprocessing, device, dtype) -> str | None:
    """The store namespace of ``cut``'s rows: a digest of the skipped modules
    and those that run before them (classes and their code, settings, the
    hooks that act on ``device`` under ``dtype``, parameters and buffers),
    the code around them (their ancestors' classes, settings, hooks and own
    tensors), what the boundary gives, the preprocessing, the autocast
    dtype, the device pipeline and the versions of the code that computes;
    ``None`` (no rows stored) where a setting is known by identity alone
    (:class:`~.fingerprint.Opaque`)."""
    module = cut.module
    neutral = neutral_hooks(device, dtype)
    around = sorted({a for name in cut.skipped for a in ancestors(name)})
    names = (*cut.skipped, *cut.before)
    parts = [_structure(module.get_submodule(n).modules(), neutral) for n in names]
    parts.append(_structure((module.get_submodule(a) for a in around), neutral))
    if None in parts:
        return None
    digest = hashlib.blake2b(digest_size=16)
    for name, part in zip(names, parts[:-1], strict=True):
        digest.update(f"{name}:{cut.skipped.get(name, 'before')}".encode())
        digest.update(part)
    digest.update(parts[-1])
    # every tensor, hashed for every call: writes through ``.data`` or numpy
    # move no version counter that a kept digest could watch
    tensors = [
        (f"{name}.{key}", tensor)
        for group, recurse in ((names, True), (around, False))
        for name in group
        for key, tensor in [
            *module.get_submodule(name).named_parameters(recurse=recurse),
            *module.get_submodule(name).named_buffers(recurse=recurse),
        ]
    ]
    digest.update(_cache.tensors_digest(tensors).encode())
    digest.update(f"{preprocessing!r}|{dtype}|{device.type}|{_versions()}".encode())
    return digest.hexdigest()


def _structure(modules, neutral: tuple) -> bytes | None:
    """Classes (and their code) and settings of ``modules``
    (:func:`~.fingerprint.settings_of`; a tensor that is no parameter or buffer by
    its bytes); ``None`` where a setting is known by identity alone."""
    parts = []
    for m in modules:
        settings = [
            (k, fingerprint(v) if isinstance(v, torch.Tensor) else v)
            for k, v in settings_of(m, neutral)
        ]
        code = class_digest(type(m))
        if is_opaque(code) or any(is_opaque(v) for _, v in settings):
            return None
        parts.append(f"{type(m).__module__}.{type(m).__qualname__}:{code}{settings}")
    return "|".join(parts).encode()


@functools.cache
def _versions() -> str:
    """The versions of the code that computes rows, as installed."""
    found = []
    for name in ("torch", "torchvision", "timm", "sktransfer"):
        try:
            found.append(f"{name}={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name}=none")
    return ",".join(found)


class Rows:
    """``(n, views, ...)`` float32 rows of one cut: an array, or a
    memory-mapped temporary file beyond :data:`MEMORY_LIMIT_BYTES`, removed by
    :meth:`release` (or garbage collection, should a fit end in an error)."""

    def __init__(self, shape: tuple[int, ...]):
        self._remove = weakref.finalize(self, lambda: None)
        if 4 * math.prod(shape) <= MEMORY_LIMIT_BYTES:
            self.data = np.empty(shape, np.float32)
            return
        fd, path = tempfile.mkstemp(prefix="sktransfer-rows-", suffix=".npy")
        os.close(fd)
        self._remove = weakref.finalize(self, _remove_file, path)
        self.data = np.lib.format.open_memmap(path, "w+", np.float32, shape)

    def take(self, indices) -> torch.Tensor:
        """The rows at ``indices`` (one gather) as a tensor."""
        rows = self.data[np.asarray(indices, dtype=np.int64)]
        return torch.from_numpy(np.ascontiguousarray(rows))

    def release(self) -> None:
        self.data = None
        self._remove()


class _Run(NamedTuple):
    """How rows are computed."""

    preprocessing: Preprocessing
    batch_size: int
    device: torch.device
    dtype: torch.dtype | None


def compute_rows(
    images: Images,
    cuts: Sequence[Cut],
    views: Sequence[str],
    *,
    preprocessing: Preprocessing,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype | None,
    store=None,
    keys: list[str] | None = None,
    lower: Callable[[], Cut | None] | None = None,
    set_size: int | None = None,
    namespaces: dict | None = None,
) -> list[Rows]:
    """The rows of every image and view for each cut of a chain (each cut's
    boundary after the previous one's), in eval mode: from ``store`` where
    it has them (``keys``: the images' content keys, computed when not
    given), else computed, and put there.

    ``lower()``, asked when images go through the first cut, may give a cut
    whose boundary that pass goes through (the neighbouring cut point of a
    grid search): its rows go to the store on the way, at no cost, when the
    whole set's (``set_size`` images, of which ``images`` are a part) come to
    at most :data:`LOWER_BYTES`. ``namespaces`` keeps the cuts' namespaces
    across calls (the batches of one prediction)."""
    run = _Run(preprocessing, batch_size, device, dtype)
    namespaces = {} if namespaces is None else namespaces

    def space_of(cut: Cut) -> str | None:  # None: not stored
        nonlocal keys
        if store is None:
            return None
        if cut not in namespaces:
            namespaces[cut] = namespace(cut, preprocessing, device, dtype)
        if namespaces[cut] is not None and keys is None:  # read once, if needed
            keys = _cache.image_keys(images)
        return namespaces[cut]

    out: list[Rows] = []
    for index, cut in enumerate(cuts):
        shape = cut.activation.shape
        rows = Rows((len(images), len(views), *shape))
        missing = list(range(len(images)))
        space = space_of(cut)
        if space is not None:
            width = len(views)
            found = store.get(space, _row_keys(keys, views), shape)
            missing = []
            for i in range(len(images)):
                mine = found[i * width : (i + 1) * width]
                if any(row is None for row in mine):
                    missing.append(i)
                else:
                    rows.data[i] = np.stack(mine)
        if missing and index == 0:
            by = lower() if lower is not None and store is not None else None
            size = (set_size or len(images)) * len(views) * 4
            on_the_way = None
            if by is not None and size * math.prod(by.activation.shape) <= LOWER_BYTES:
                if (lower_space := space_of(by)) is not None:
                    on_the_way = (by, store, lower_space, keys)
            _from_images(rows, cut, images, missing, views, run, on_the_way)
        elif missing:
            _from_rows(rows, cut, out[-1], cuts[index - 1], missing, run)
        if missing and space is not None:
            for i in missing:
                store.put(space, _row_keys([keys[i]], views), rows.data[i])
        out.append(rows)
    return out


def _row_keys(keys: list[str], views) -> list[str]:
    return [f"{key}-{view}" for key in keys for view in views]


def _from_images(rows, cut, images, missing, views, run: _Run, on_the_way) -> None:
    """Rows ``missing`` of ``cut`` from the images; with ``on_the_way``
    (another cut whose boundary the pass goes through, a store, its
    namespace, the images' keys), that cut's rows are put in the store too."""
    todo = images if len(missing) == len(images) else images.subset(missing)
    batches = preprocessed_batches(todo, run.preprocessing, run.batch_size, run.device)
    captured: list[torch.Tensor] = []
    hook = None
    if on_the_way is not None:
        tap = cut.module.get_submodule(on_the_way[0].boundary)
        hook = tap.register_forward_hook(
            lambda m, a, out: captured.append(out.float().cpu())
        )
    start = 0
    try:
        with (
            cut.lock,  # the hook above fires in every thread's pass
            contextlib.closing(batches),
            torch.inference_mode(),
            autocast(run.device, run.dtype),
        ):
            for batch in batches:
                batch = batch.to(run.device, non_blocking=True)
                block = torch.stack(
                    [
                        cut.rows(channels_last(VIEWS[v](batch))).float().cpu()
                        for v in views
                    ],
                    dim=1,
                )
                chunk = missing[start : start + len(batch)]
                rows.data[chunk] = block.numpy()
                if on_the_way is not None and len(captured) == len(views):
                    _, store, space, keys = on_the_way
                    lower = torch.stack(captured, dim=1).numpy()
                    for i, row in zip(chunk, lower, strict=True):
                        store.put(space, _row_keys([keys[i]], views), row)
                    captured.clear()
                start += len(batch)
    finally:
        if hook is not None:
            hook.remove()


def _from_rows(rows, cut, lower: Rows, lower_cut: Cut, missing, run: _Run) -> None:
    tap = cut.module.get_submodule(cut.boundary)
    with torch.inference_mode(), autocast(run.device, run.dtype):
        for start in range(0, len(missing), run.batch_size):
            chunk = missing[start : start + run.batch_size]
            block = lower.take(chunk).to(run.device, non_blocking=True)
            out = [lower_cut(block[:, v], tap) for v in range(block.shape[1])]
            rows.data[chunk] = torch.stack(out, dim=1).float().cpu().numpy()


def _remove_file(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)
