"""A cut's rows for a set of images: each image and view through the frozen
part once, kept by content across fits.

The *views* of an image are fixed functions of the preprocessed image (the
image, its mirror image), so its rows are the same in every fit. A store
(``cache``: the in-process LRU or a folder) keys a row by the image's
content (:func:`~sktransfer._cache.image_keys`: what decoding reads) and the
view, inside a :func:`namespace` that digests all else that determines it:
a hit is the value that computing gives. In a chain of cuts (a fit's frozen
groups, then the head's), each cut's rows come from the previous cut's.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import math
import tempfile
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .. import _cache
from .._devices import autocast
from .._groups import ancestors
from .._images import Images, Preprocessing
from .._pipeline import preprocessed_batches
from .cut import Cut
from .data import channels_last  # the layout of training steps' images
from .fingerprint import class_digest, is_opaque, neutral_hooks, settings_of

MEMORY_LIMIT_BYTES = 2 * 1024**3  # a fit's rows beyond: in a temporary file
# The in-process store behind cache="memory" (its own bound: rows of early
# cuts are large and must not evict the embedding cache's).
STORE_BYTES = 2 * 1024**3
# The most of a set's rows a group below the head's cut stored (feeding._rows).
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
    """The store namespace of ``cut``'s rows: a digest of the modules that
    run before the boundary (classes and code, settings, the hooks that act
    on ``device`` under ``dtype``, parameters and buffers), their ancestors'
    (the same but submodules), what the boundary gives, the preprocessing,
    the autocast dtype, the device and the versions of the code that
    computes; ``None`` (no rows stored) where a setting is known by identity
    alone (:class:`~.fingerprint.Opaque`)."""
    module, neutral = cut.module, neutral_hooks(device, dtype)
    around = sorted({a for name in cut.skipped for a in ancestors(name)})
    roles = [*cut.skipped.items(), *((n, "before") for n in cut.before)]
    digest, tensors = hashlib.blake2b(digest_size=16), []
    for name, role in [*roles, *((a, "around") for a in around)]:
        sub, whole = module.get_submodule(name), role != "around"
        part = _structure(sub.modules() if whole else [sub], neutral)
        if part is None:
            return None
        digest.update(f"{name}:{role}".encode() + part)
        own = [*sub.named_parameters(recurse=whole), *sub.named_buffers(recurse=whole)]
        tensors += [(f"{name}.{key}", tensor) for key, tensor in own]
    # every tensor, hashed for every call: writes through ``.data`` or numpy
    # move no version counter that a kept digest could watch
    digest.update(_cache.tensors_digest(tensors).encode())
    digest.update(f"{preprocessing!r}|{dtype}|{device.type}|{_versions()}".encode())
    return digest.hexdigest()


def _structure(modules, neutral: tuple) -> bytes | None:
    """Classes (and their code) and settings of ``modules``
    (:func:`~.fingerprint.settings_of`); ``None`` where a setting is known by
    identity alone."""
    parts = []
    for m in modules:
        settings, code = settings_of(m, neutral), class_digest(type(m))
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
    """``(n, views, ...)`` float32 rows of one cut: an array, or beyond
    :data:`MEMORY_LIMIT_BYTES` a memory-mapped temporary file, which goes
    with it (unlinked at once on POSIX, when closed on Windows)."""

    def __init__(self, shape: tuple[int, ...]):
        if 4 * math.prod(shape) <= MEMORY_LIMIT_BYTES:
            self.data = np.empty(shape, np.float32)
        else:
            file = tempfile.TemporaryFile(prefix="sktransfer-rows-")
            self.data = np.memmap(file, np.float32, "w+", shape=shape)

    def take(self, indices) -> torch.Tensor:
        """The rows at ``indices`` (one gather) as a tensor."""
        rows = self.data[np.asarray(indices, dtype=np.int64)]
        return torch.from_numpy(np.ascontiguousarray(rows))

    def release(self) -> None:
        self.data = None


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
    namespaces: dict | None = None,
    through_first: bool = False,
) -> list[Rows]:
    """The rows of every image and view for each cut of a chain (each cut's
    boundary after the previous one's), in eval mode: from ``store`` where
    it has them, else computed (the first cut's from the images, each
    other's from the previous cut's rows) and put there. ``through_first``:
    the first cut's rows only serve the next cut's, for the images whose rows
    that one misses (the others' are left unset). ``namespaces`` keeps the
    cuts' namespaces across calls (the batches of one prediction)."""
    namespaces = {} if namespaces is None else namespaces
    keys = None  # the images' content keys, read once if a cut is stored

    def look_up(cut: Cut, wanted) -> tuple[Rows, list[int], str | None]:
        """``cut``'s rows, those of ``wanted`` filled from the store; the
        ones of ``wanted`` it misses; the namespace."""
        nonlocal keys
        rows = Rows((len(images) if wanted else 0, len(views), *cut.activation.shape))
        if wanted and store is not None and cut not in namespaces:
            namespaces[cut] = namespace(cut, preprocessing, device, dtype)
        space = namespaces.get(cut) if wanted else None
        if space is None:
            return rows, list(wanted), None
        keys = _cache.image_keys(images) if keys is None else keys
        asked = _row_keys([keys[i] for i in wanted], views)
        found = store.get(space, asked, cut.activation.shape)
        missing = []
        for n, i in enumerate(wanted):
            mine = found[n * len(views) : (n + 1) * len(views)]
            if any(row is None for row in mine):
                missing.append(i)
            else:
                rows.data[i] = np.stack(mine)
        return rows, missing, space

    everything = range(len(images))
    chain = [look_up(cut, everything) for cut in cuts[1:]]
    first = chain[0][1] if through_first else everything  # the rows it serves
    chain.insert(0, look_up(cuts[0], first))
    run = dict(batch_size=batch_size, device=device, dtype=dtype)
    for index, (cut, (rows, missing, space)) in enumerate(
        zip(cuts, chain, strict=True)
    ):
        if missing and index == 0:
            _from_images(rows, cut, images, missing, views, preprocessing, **run)
        elif missing:
            lower = chain[index - 1][0]
            _from_rows(rows, cut, lower, cuts[index - 1], missing, **run)
        if missing and space is not None:
            for i in missing:
                store.put(space, _row_keys([keys[i]], views), rows.data[i])
    return [rows for rows, _, _ in chain]


def _row_keys(keys: list[str], views) -> list[str]:
    return [f"{key}-{view}" for key in keys for view in views]


def _from_images(rows, cut, images, missing, views, preprocessing, **run) -> None:
    """Rows ``missing`` of ``cut`` from the images."""
    device, dtype = run["device"], run["dtype"]
    todo = images if len(missing) == len(images) else images.subset(missing)
    batches = preprocessed_batches(todo, preprocessing, run["batch_size"], device)
    start = 0
    with contextlib.closing(batches), torch.inference_mode(), autocast(device, dtype):
        for batch in batches:
            batch = batch.to(device, non_blocking=True)
            block = [cut.rows(channels_last(VIEWS[v](batch))).float() for v in views]
            chunk = missing[start : start + len(batch)]
            rows.data[chunk] = torch.stack(block, dim=1).cpu().numpy()
            start += len(batch)


def _from_rows(rows, cut, lower: Rows, lower_cut: Cut, missing, **run) -> None:
    """Rows ``missing`` of ``cut`` from the rows of the cut before it."""
    device, size = run["device"], run["batch_size"]
    tap = cut.module.get_submodule(cut.boundary)
    with torch.inference_mode(), autocast(device, run["dtype"]):
        for start in range(0, len(missing), size):
            chunk = missing[start : start + size]
            block = lower.take(chunk).to(device, non_blocking=True)
            out = [lower_cut(block[:, v], tap) for v in range(block.shape[1])]
            rows.data[chunk] = torch.stack(out, dim=1).float().cpu().numpy()
