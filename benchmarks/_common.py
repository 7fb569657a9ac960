"""Shared helpers for the benchmarks: timing and realistic test photos."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image


def best_of(fn, repeat: int = 2) -> float:
    """The fastest of ``repeat`` wall-clock runs of ``fn()``, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def photos(n: int, size=(375, 500), seed: int = 0) -> np.ndarray:
    """``n`` photo-like uint8 images: random crops of scikit-image photographs."""
    from skimage import data

    sources = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    rng = np.random.default_rng(seed)
    out = np.empty((n, *size, 3), np.uint8)
    for i in range(n):
        source = np.asarray(
            Image.fromarray(sources[i % len(sources)]).resize(
                (size[1] * 2, size[0] * 2)
            )
        )
        top = rng.integers(0, source.shape[0] - size[0])
        left = rng.integers(0, source.shape[1] - size[1])
        out[i] = source[top : top + size[0], left : left + size[1]]
    return out


def write_jpegs(images: np.ndarray, folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(image).save(path, quality=90)
        paths.append(str(path))
    return paths


DATA_ROOT = Path.home() / ".cache" / "sktransfer-data"


def builtin_photos() -> list[np.ndarray]:
    """The colour photographs that ship with scikit-learn and scikit-image."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    arrays = list(load_sample_images().images)  # china, flower
    for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field"):
        arrays.append(getattr(data, name)())
    arrays.append(data.immunohistochemistry())
    arrays.append(data.stereo_motorcycle()[0])
    return arrays


def real_photo_paths(n: int, folder: Path, root: Path = DATA_ROOT) -> list[str]:
    """``n`` real photos as JPEG paths: the built-in photographs (written to
    ``folder``), then files of the photo sets under ``root/<set>/<class>/``
    when there are any, taken round-robin over sets and classes (sorted, so
    every run sees the same photos)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(builtin_photos()):
        path = folder / f"builtin_{i:02d}.jpg"
        Image.fromarray(image).save(path, quality=90)
        paths.append(str(path))
    classes = sorted(d for d in root.glob("*/*") if d.is_dir()) if root.is_dir() else []
    files = [
        sorted(p for p in d.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        for d in classes
    ]
    depth = 0
    while len(paths) < n and any(depth < len(f) for f in files):
        paths.extend(str(f[depth]) for f in files if depth < len(f))
        depth += 1
    return paths[:n]
