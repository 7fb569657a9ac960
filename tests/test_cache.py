"""Embedding cache: each image through the backbone once, misses on any change."""

from __future__ import annotations

import numpy as np
import pytest
from joblib import Parallel, delayed
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC

from sktransfer import CNNFeatureExtractor, _cache
from sktransfer._cache import DiskCache, MemoryCache


@pytest.fixture(autouse=True)
def empty_memory_cache():
    _cache.memory_cache().clear()
    yield
    _cache.memory_cache().clear()


@pytest.fixture
def embedded(monkeypatch):
    """Count the images that really go through a backbone (spy, not a mock)."""
    counts = []
    original = CNNFeatureExtractor._embed_all

    def counting(self, images):
        counts.append(len(images))
        return original(self, images)

    monkeypatch.setattr(CNNFeatureExtractor, "_embed_all", counting)
    return counts


def make(**params):
    # device="cpu": cached rows are compared exactly with recomputed ones
    params = {"model": "mobilenet_v3_small", "weights": None, "device": "cpu", **params}
    return CNNFeatureExtractor(**params)


def test_memory_cache_returns_identical_rows_without_recomputing(images, embedded):
    extractor = make(cache="memory").fit(images)
    first = extractor.transform(images)
    again = clone(extractor).fit(images).transform(images[::-1])  # clones share it
    np.testing.assert_array_equal(again, first[::-1])
    np.testing.assert_array_equal(first, make().fit(images).transform(images))
    assert embedded == [8, 8]  # cached run once, uncached reference once


def test_partial_hits_embed_only_the_new_images(images, rng, embedded):
    extractor = make(cache="memory").fit(images)
    extractor.transform(images[:5])
    new = rng.integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    mixed = np.concatenate([images[3:6], new])
    out = extractor.transform(mixed)
    assert embedded == [5, 3]  # images[5] and the two new ones
    np.testing.assert_allclose(out, make().fit(images).transform(mixed), atol=1e-5)


@pytest.mark.parametrize(
    "change",
    [
        {"layer": "features.3"},
        {"pooling": "max", "layer": "features.3"},
        {"normalize": True},
        {"model": "resnet18"},
        {"precision": "float16"},  # not what "auto" resolves to on any CPU
    ],
)
def test_any_change_that_alters_embeddings_misses(images, embedded, change):
    make(cache="memory").fit(images).transform(images)
    make(cache="memory", **change).fit(images).transform(images)
    assert embedded == [8, 8]


def test_same_pixels_hit_different_pixels_miss(images, embedded):
    extractor = make(cache="memory").fit(images)
    extractor.transform(images)
    extractor.transform(images.copy())  # same content, another array: hit
    changed = images.copy()
    changed[0, 0, 0, 0] ^= 1
    extractor.transform(changed)
    assert embedded == [8, 1]


def test_grid_search_embeds_each_image_once(images, labels, embedded):
    pipe = Pipeline([("cnn", make(cache="memory")), ("svm", SVC())])
    GridSearchCV(pipe, {"svm__C": [0.1, 1, 10, 100]}, cv=4).fit(images, labels)
    assert sum(embedded) == len(images)


def test_disk_cache_is_shared_across_processes(images, tmp_path, embedded):
    extractor = make(cache=tmp_path / "emb").fit(images)
    # Two processes fill the same folder concurrently (atomic writes).
    rows = Parallel(n_jobs=2)(
        delayed(lambda e, X: e.transform(X))(extractor, images) for _ in range(2)
    )
    np.testing.assert_array_equal(rows[0], rows[1])
    files = list((tmp_path / "emb").rglob("*.npy"))
    assert len(files) == len(images) and not list((tmp_path / "emb").rglob("*.tmp"))
    np.testing.assert_array_equal(
        clone(extractor).fit(images).transform(images), rows[0]
    )
    assert embedded == []  # this process read everything from disk


def test_disk_cache_with_paths_keys_on_file_content(jpeg_paths, tmp_path, embedded):
    extractor = make(cache=str(tmp_path / "emb")).fit(jpeg_paths)
    first = extractor.transform(jpeg_paths)
    extractor.transform(jpeg_paths)
    with open(jpeg_paths[0], "ab") as file:  # new content under the same name
        file.write(b"\0")
    np.testing.assert_allclose(extractor.transform(jpeg_paths)[1:], first[1:])
    assert embedded == [8, 1]


def test_bare_modules_share_a_cache_across_clones(images, embedded):
    import torch

    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(1), torch.nn.LazyLinear(2)
    )
    module(torch.zeros(1, 3, 224, 224))
    extractor = CNNFeatureExtractor(module, cache="memory", layer="0").fit(images)
    extractor.transform(images)
    clone(extractor).fit(images).transform(images)
    assert embedded == [8]


def test_memory_cache_is_bounded():
    store = MemoryCache(max_bytes=3 * 16)
    store.put("ns", ["a", "b", "c", "d"], np.zeros((4, 4), np.float32))
    assert store.nbytes <= 3 * 16
    assert (
        store.get("ns", ["a", "d"], (4,))[0] is None
        and store.get("ns", ["d"], (4,))[0] is not None
    )


def test_disk_cache_ignores_half_written_files(tmp_path):
    store = DiskCache(tmp_path)
    store.put("ns", ["abcd"], np.ones((1, 3), np.float32))
    path = tmp_path / "ns" / "ab" / "abcd.npy"
    path.write_bytes(path.read_bytes()[:10])
    assert store.get("ns", ["abcd"], (3,)) == [None]


@pytest.mark.parametrize(
    "damage",
    [
        lambda width: np.ones(width - 1, np.float32),  # another layer or version
        lambda width: np.full(width, np.nan, np.float32),  # never served as features
        lambda width: np.ones(width, np.float64),
        lambda width: np.ones((2, width), np.float32),
    ],
    ids=["shape", "nan", "dtype", "2d"],
)
def test_disk_rows_of_the_wrong_shape_dtype_or_not_finite_are_recomputed(
    images, tmp_path, embedded, damage
):
    store = tmp_path / "emb"
    extractor = make(cache=store).fit(images)
    first = extractor.transform(images[:2])
    files = sorted(store.rglob("*.npy"))
    assert len(files) == 2
    np.save(files[0], damage(first.shape[1]))
    again = extractor.transform(images[:2])  # no broadcast error, no NaN served
    # a batch of 1 against one of 2: equal up to float rounding
    np.testing.assert_allclose(again, first, atol=1e-5 * np.abs(first).max())
    assert embedded == [2, 1]  # the damaged row alone was computed again
    assert np.isfinite(np.load(files[0])).all()  # and written back whole
