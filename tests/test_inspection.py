"""explain (Grad-CAM, class activation maps through linear classifiers),
the overlay, top losses and the confusion matrix."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import SVC, LinearSVC

from sktransfer import (
    CNNFeatureExtractor,
    FineTuneClassifier,
    ImageNetClassifier,
    explain,
    plot_confusion_matrix,
    plot_explanation,
    plot_top_losses,
)
from sktransfer._images import check_images
from sktransfer.inspection import _grad_cam, _scorer

matplotlib.use("Agg")


def _photos(n=6, size=(48, 64)):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (n, *size, 3), dtype=np.uint8)
    X[n // 2 :, :, : size[1] // 2] = 255  # class "b": bright left half
    return X, np.array(["a"] * (n // 2) + ["b"] * (n - n // 2))


@pytest.fixture(scope="module")
def finetuned():
    X, y = _photos()
    clf = FineTuneClassifier(
        "resnet18",
        weights=None,
        max_epochs=1,
        head_epochs=1,
        image_size=64,
        random_state=0,
        device="cpu",
    ).fit(X, y)
    return clf, X, y


def features(classifier, *middle):
    return make_pipeline(
        CNNFeatureExtractor("resnet18", weights=None, device="cpu"), *middle, classifier
    )


def test_maps_follow_the_photo_as_displayed(finetuned):
    clf, X, _ = finetuned
    maps = explain(clf, X)
    assert len(maps) == len(X)
    for heat in maps:
        assert heat.shape == (48, 64) and heat.dtype == np.float32
        # peaks near 1 (resized from the feature map), or 0 throughout (no
        # positive evidence for the class)
        assert heat.min() >= 0 and (heat.max() == 0 or heat.max() > 0.8)
        # resized to 64 high, 85 wide, centre-cropped to 64: the sides are cut
        assert np.all(heat[:, :5] == 0) and np.all(heat[:, -5:] == 0)


def test_an_exif_rotated_photo_gets_an_upright_map(finetuned, tmp_path):
    clf, X, _ = finetuned
    path = tmp_path / "sideways.jpg"
    image = Image.fromarray(np.ascontiguousarray(np.rot90(X[0])))  # 64 x 48 stored
    exif = image.getexif()
    exif[0x0112] = 6  # displayed rotated back: 48 high, 64 wide
    image.save(path, exif=exif)
    (heat,) = explain(clf, [str(path)])
    assert heat.shape == (48, 64)


def test_a_target_class_per_image_or_for_all(finetuned):
    clf, X, _ = finetuned
    for_a = explain(clf, X[:2], target="a")
    each = explain(clf, X[:2], target=["a", "b"])
    np.testing.assert_array_equal(for_a[0], each[0])
    assert not np.array_equal(for_a[1], each[1])
    with pytest.raises(ValueError, match=r"target \['c'\] not among the classes"):
        explain(clf, X[:2], target="c")
    with pytest.raises(ValueError, match="target has 3 labels for 2 images"):
        explain(clf, X[:2], target=["a", "b", "a"])


@pytest.mark.parametrize(
    "classifier, middle",
    [
        (LogisticRegression(), [StandardScaler()]),
        (LinearSVC(), [StandardScaler()]),
        (RidgeClassifier(), []),
    ],
)
def test_features_and_a_linear_classifier(classifier, middle):
    X, y = _photos()
    pipe = features(classifier, *middle).fit(X, y)
    maps = explain(pipe, X)
    assert [m.shape for m in maps] == [(48, 64)] * len(X)
    assert all(m.max() == 0 or m.max() > 0.8 for m in maps)
    assert any(m.max() > 0 for m in maps)


def test_the_linear_map_is_the_classifiers_weighted_feature_maps():
    """For average pooling, Grad-CAM through a linear classifier is the class
    activation map: ReLU of the feature channels weighted by the
    coefficients (through the scaler)."""
    X, y = _photos()
    pipe = features(LogisticRegression(), StandardScaler()).fit(X, y)
    extractor, scaler, logreg = (step for _, step in pipe.steps)
    module = extractor.backbone_.module.eval()
    batch = check_images(X[:2])
    preprocessed = extractor.backbone_.preprocessing(batch.rows(slice(0, 2)))
    cams = _grad_cam(_scorer(pipe), preprocessed, [1, 1])
    kept = {}
    handle = module.layer4.register_forward_hook(lambda m, a, out: kept.update(f=out))
    with torch.no_grad():
        module(preprocessed)
    handle.remove()
    weights = torch.as_tensor(logreg.coef_[0] / scaler.scale_, dtype=torch.float32)
    expected = torch.relu((weights[None, :, None, None] * kept["f"]).sum(1))
    expected = expected / expected.flatten(1).amax(1)[:, None, None]
    torch.testing.assert_close(cams, expected, atol=1e-4, rtol=1e-3)


def test_imagenet_classifier():
    X, _ = _photos(2)
    clf = ImageNetClassifier("resnet18", weights=None, device="cpu").fit(X)
    maps = explain(clf, X, target=clf.classes_[3])
    assert maps[0].shape == (48, 64)


@pytest.mark.parametrize(
    "estimator",
    [
        features(SVC(), Normalizer()),
        features(KNeighborsClassifier(n_neighbors=1)),
        features(LogisticRegression(), Normalizer()),
        LogisticRegression(),
    ],
)
def test_other_estimators_are_refused(estimator):
    X, y = _photos()
    if not isinstance(estimator, LogisticRegression):
        estimator.fit(X, y)
    with pytest.raises(TypeError, match="explain supports FineTuneClassifier, "):
        explain(estimator, X)


def test_unfitted_estimators_are_refused():
    X, _ = _photos(2)
    with pytest.raises(NotFittedError, match="not fitted yet: call fit"):
        explain(FineTuneClassifier("resnet18", weights=None), X)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        explain(features(LogisticRegression()), X)


def test_overlay_top_losses_and_confusion_matrix(finetuned):
    clf, X, y = finetuned
    heat = explain(clf, X[:1])[0]
    ax = plot_explanation(X[0], heat, title="a")
    assert ax.get_title() == "a" and len(ax.images) == 2
    with pytest.raises(ValueError, match=r"heat_map has shape \(48, 64\), the photo"):
        plot_explanation(X[0][:40], heat)
    flipped = np.where(y == "a", "b", "a")  # every prediction is now wrong ...
    fig, order = plot_top_losses(clf, X, flipped, k=4)
    proba = clf.predict_proba(X).max(1)
    assert len(order) == 4 and list(proba[order]) == sorted(proba[order], reverse=True)
    assert len([ax for ax in fig.axes if ax.images]) == 4
    predicted = clf.predict(X)
    fig, order = plot_top_losses(clf, X, predicted)  # ... and now none is
    assert fig is None and len(order) == 0
    ax = plot_confusion_matrix(y, predicted, labels=["a", "b"], title="cm")
    assert ax.get_title() == "cm"
