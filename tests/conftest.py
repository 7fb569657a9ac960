"""Shared fixtures: tiny images in every input form, and real photographs."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

# One torch thread pool per test process keeps 2-core CI machines responsive;
# with pytest-xdist's workers (one a core) each takes one thread.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
else:
    os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_collection_modifyitems(config, items):
    """Run the slow tests first (pytest-xdist's workers then finish together),
    and skip tests marked ``cuda`` on machines without a CUDA GPU.

    Every other test pins ``device="cpu"`` wherever it compares with a CPU
    reference or needs exact equality, so the suite passes with or without CUDA.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    marked = [item for item in items if item.get_closest_marker("cuda") is not None]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in marked:
        item.add_marker(skip)


@pytest.fixture(autouse=True)
def empty_frozen_store():
    """Each test starts without rows kept by another (FineTuneClassifier's
    default ``cache="memory"`` is process-wide)."""
    from sktransfer._finetune import rows

    rows.resolve_store("memory").clear()
    yield
    rows.resolve_store("memory").clear()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def images(rng):
    """Eight 32x32 RGB uint8 images (NHWC) in two visually distinct classes."""
    X = rng.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
    X[4:, :, :16] = 255  # class 1: bright left half
    return X


@pytest.fixture
def labels():
    return np.array(["cat"] * 4 + ["dog"] * 4)


@pytest.fixture
def jpeg_paths(tmp_path, images):
    """The ``images`` fixture written as JPEG files; a list of str paths."""
    paths = []
    for i, image in enumerate(images):
        path = tmp_path / f"img_{i}.jpg"
        Image.fromarray(image).save(path, quality=95)
        paths.append(str(path))
    return paths


@pytest.fixture
def image_folder(tmp_path, rng):
    """``root/<class>/<file>.png`` with 3 classes of 4 images each."""
    root = tmp_path / "folder"
    for c, name in enumerate(["ant", "bee", "cow"]):
        (root / name).mkdir(parents=True)
        for i in range(4):
            array = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
            array[..., c] = 255
            Image.fromarray(array).save(root / name / f"{i}.png")
    return root


def texture_patches(size: int = 64, per_class: int = 12):
    """Real photographs from scikit-image: brick / grass / gravel patches.

    Returns ``(X, y)`` with ``X`` uint8 ``(n, size, size, 3)`` (grey replicated).
    """
    from skimage import data

    rng = np.random.default_rng(0)
    X, y = [], []
    for name in ("brick", "grass", "gravel"):
        image = getattr(data, name)()
        for _ in range(per_class):
            top, left = rng.integers(0, image.shape[0] - size, size=2)
            patch = image[top : top + size, left : left + size]
            X.append(np.repeat(patch[..., None], 3, axis=-1))
            y.append(name)
    return np.stack(X), np.array(y)
