"""Embedding cache: each image goes through the backbone once.

Rows are keyed by the image's content hash inside a namespace keyed by
everything that changes an embedding (model, weights identity, layer, pooling,
normalisation, preprocessing). Two stores:

* :class:`MemoryCache` (``cache="memory"``): in-process, shared by every clone
  of an extractor (``GridSearchCV``), least-recently-used rows are evicted past
  ``max_bytes`` (default 1 GiB).
* :class:`DiskCache` (``cache="/some/dir"``): one ``.npy`` file per row, written
  atomically (temporary file + ``os.replace``), so threads, processes and later
  runs share it safely; no size bound (delete the folder to clear it).

Both take the shape and dtype a row must have: a row read back that has
another shape or dtype, or a non-finite value (a file from another version, a
damaged disk), counts as missing and is computed again.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from ._images import Images
from ._lru import LRU

DEFAULT_MEMORY_BYTES = 1 << 30


def namespace(**identity) -> str:
    """A stable hex digest of what determines an embedding."""
    text = repr(sorted((k, repr(v)) for k, v in identity.items()))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def module_digest(module) -> str:
    """A digest of a module's parameters and buffers (names, shapes, values)."""
    return tensors_digest([*module.named_parameters(), *module.named_buffers()])


def tensors_digest(named) -> str:
    """A digest of ``(name, tensor)`` pairs: names, shapes, dtypes, values."""
    digest = hashlib.sha256()  # hardware-accelerated on most CPUs
    for name, tensor in named:
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(  # the tensor's bytes, not a copy of them
            tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
        )
    return digest.hexdigest()[:32]


def image_keys(images: Images) -> list[str]:
    """Content hashes of every image: of all that decoding reads (a file's
    bytes; an array's bytes, dtype, shape and scale; a PIL image's upright
    RGB pixels, which its mode, palette and EXIF orientation decide)."""
    return [_image_key(images, i) for i in range(len(images))]


def _image_key(images: Images, index: int) -> str:
    digest = hashlib.sha256()
    if images.kind == "paths":
        with open(images.data[index], "rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
    elif images.kind == "pil":  # what decoding makes of it: palette, EXIF, ...
        pixels = images.image(index).numpy()
        digest.update(f"pil{pixels.shape}".encode())
        digest.update(pixels.tobytes())
    else:
        array, scale = images.data, images.scale
        if images.kind == "arrays":  # a list of one-image collections
            array, scale, index = array[index].data, array[index].scale, 0
        row = np.ascontiguousarray(array[index])
        digest.update(f"{row.dtype}{row.shape}{scale}".encode())
        digest.update(row.tobytes())
    return digest.hexdigest()[:32]


class MemoryCache:
    """An in-process LRU of embedding rows bounded by ``max_bytes``."""

    def __init__(self, max_bytes: int = DEFAULT_MEMORY_BYTES):
        self.max_bytes = max_bytes
        self._rows: LRU[np.ndarray] = LRU(max_size=max_bytes, size=_nbytes)

    def get(
        self, space: str, keys: list[str], shape: tuple, dtype=np.float32
    ) -> list[np.ndarray | None]:
        return [checked(self._rows.get((space, key)), shape, dtype) for key in keys]

    def put(self, space: str, keys: list[str], rows: np.ndarray) -> None:
        for key, row in zip(keys, rows, strict=True):
            if (space, key) not in self._rows:
                self._rows.put((space, key), row.copy())  # never alias the output

    @property
    def nbytes(self) -> int:
        return int(self._rows.total_size)

    def clear(self) -> None:
        self._rows.clear()


def _nbytes(row: np.ndarray) -> int:
    return row.nbytes


def checked(row: np.ndarray | None, shape: tuple, dtype) -> np.ndarray | None:
    """``row`` when it has the expected shape and dtype and is finite, else
    ``None`` (to be computed again)."""
    if row is None or row.shape != tuple(shape) or row.dtype != np.dtype(dtype):
        return None
    return row if np.isfinite(row).all() else None


class DiskCache:
    """Embedding rows as ``<root>/<namespace>/<key[:2]>/<key>.npy`` files."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()

    def _path(self, space: str, key: str) -> Path:
        return self.root / space / key[:2] / f"{key}.npy"

    def get(
        self, space: str, keys: list[str], shape: tuple, dtype=np.float32
    ) -> list[np.ndarray | None]:
        rows = []
        for key in keys:
            try:
                row = np.load(self._path(space, key), allow_pickle=False)
            except (FileNotFoundError, ValueError, OSError):  # absent or half-written
                row = None
            rows.append(checked(row, shape, dtype))
        return rows

    def put(self, space: str, keys: list[str], rows: np.ndarray) -> None:
        for key, row in zip(keys, rows, strict=True):
            path = self._path(space, key)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as file:
                    np.save(file, row, allow_pickle=False)
                os.replace(tmp, path)  # atomic: readers see all or nothing
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise


_memory = MemoryCache()


def memory_cache() -> MemoryCache:
    """The process-wide cache behind ``cache="memory"``."""
    return _memory


def resolve(cache) -> MemoryCache | DiskCache | None:
    """``None`` / ``"memory"`` / a folder -> a store."""
    if cache is None:
        return None
    if isinstance(cache, (MemoryCache, DiskCache)):
        return cache
    if cache == "memory":
        return _memory
    return DiskCache(cache)
