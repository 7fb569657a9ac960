"""ImageNetClassifier: the pretrained softmax as a scikit-learn classifier."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_sample_images
from sklearn.metrics import accuracy_score
from sklearn.model_selection import cross_val_score
from torch import nn

from sktransfer import ImageNetClassifier, InvalidImageError, top_k_scorer

BUILDINGS = {"palace", "church", "monastery", "bell cote", "dome", "mosque", "castle",
             "stupa", "tile roof", "boathouse"}  # fmt: skip


@pytest.fixture(scope="module")
def random_clf():
    """On the CPU in float32: its tests compare probabilities at atol=1e-6."""
    images = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    return ImageNetClassifier(
        "resnet18", weights=None, device="cpu", precision="float32"
    ).fit(images)


def test_fit_sets_classes_to_categories(random_clf):
    assert random_clf.classes_.shape == (1000,)
    assert random_clf.classes_[0] == "tench"
    assert "tabby" in set(random_clf.classes_)
    assert random_clf.n_channels_in_ == 3


def test_predict_proba_predict_top_k_agree(random_clf, images):
    proba = random_clf.predict_proba(images)
    assert proba.shape == (8, 1000) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    predicted = random_clf.predict(images)
    np.testing.assert_array_equal(predicted, random_clf.classes_[proba.argmax(axis=1)])
    names, probabilities = random_clf.top_k(images, k=4)
    assert names.shape == probabilities.shape == (8, 4)
    np.testing.assert_array_equal(names[:, 0], predicted)
    assert np.all(np.diff(probabilities, axis=1) <= 0)
    columns = {name: i for i, name in enumerate(random_clf.classes_)}
    for row_names, row_probs, row in zip(names, probabilities, proba, strict=True):
        np.testing.assert_allclose(row_probs, row[[columns[n] for n in row_names]])


def test_batch_size_and_input_form_do_not_matter(random_clf, images, jpeg_paths):
    one = clone(random_clf).set_params(batch_size=1).fit(images).predict_proba(images)
    np.testing.assert_allclose(one, random_clf.predict_proba(images), atol=1e-5)
    from_files = clone(random_clf).fit(jpeg_paths).predict_proba(jpeg_paths)
    assert from_files.shape == (8, 1000)


def test_list_of_arrays(random_clf, images):
    as_list = random_clf.predict_proba(list(images))
    np.testing.assert_allclose(as_list, random_clf.predict_proba(images), atol=1e-6)
    mixed_sizes = random_clf.predict_proba([images[0], images[1, :16]])
    np.testing.assert_allclose(
        mixed_sizes[1], random_clf.predict_proba(images[1:2, :16])[0], atol=1e-6
    )
    with pytest.raises(InvalidImageError, match="mixed types"):
        random_clf.predict_proba([images[0], "a.jpg"])


def test_fit_warns_once_for_unknown_labels(images):
    clf = ImageNetClassifier("resnet18", weights=None, device="cpu")
    y = ["tabby", "cat", "cat", "dog", "dog", "goldfish", "zebra", "sofa"]
    with pytest.warns(
        UserWarning, match=r"3 label\(s\) in y.*'cat', 'dog', 'sofa'"
    ) as record:
        clf.fit(images, y)
    assert len([w for w in record if "not among" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clf.fit(images, ["tabby"] * 4 + ["zebra"] * 4)


def test_fit_checks_label_length(images):
    clf = ImageNetClassifier("resnet18", weights=None, device="cpu")
    with pytest.raises(ValueError, match=r"one label per image \(8 images\)"):
        clf.fit(images, ["tabby"] * 3)


@pytest.mark.parametrize(
    ("k", "message"),
    [
        (0, r"'k' parameter of ImageNetClassifier.top_k must be an int in the range"),
        (2.0, r"'k' parameter of ImageNetClassifier.top_k must be an int in the range"),
        (1001, r"k must be an integer from 1 to .*\(1000\), got 1001"),
        (True, r"k must be an integer from 1 to .*\(1000\), got True"),
    ],
)
def test_top_k_rejects_bad_k(random_clf, images, k, message):
    with pytest.raises(ValueError, match=message):
        random_clf.top_k(images, k=k)


def test_module_without_categories_is_an_error(images):
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                           nn.Linear(4, 10))  # fmt: skip
    with pytest.raises(ValueError, match="has no category names"):
        ImageNetClassifier(module).fit(images)


def test_unfitted_and_invalid_params(images):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        ImageNetClassifier(weights=None).predict(images)
    with pytest.raises(ValueError, match="batch_size"):
        ImageNetClassifier(weights=None, batch_size=0).fit(images)


def test_pickle_and_clone_keep_predictions(random_clf, images):
    restored = pickle.loads(pickle.dumps(random_clf))
    np.testing.assert_allclose(
        restored.predict_proba(images), random_clf.predict_proba(images)
    )
    refit = clone(random_clf).fit(images)  # seeded: same random network
    np.testing.assert_allclose(
        refit.predict_proba(images), random_clf.predict_proba(images)
    )


def test_cross_val_score_with_top_k_scorer(random_clf, images):
    y = random_clf.predict(images)  # the random network's own answers: all hits
    scores = cross_val_score(
        clone(random_clf), images, y, cv=2, scoring=top_k_scorer(5)
    )
    np.testing.assert_allclose(scores, 1.0)


@pytest.fixture(scope="module")
def lite0():
    return ImageNetClassifier("efficientnet_lite0", device="cpu").fit(
        np.zeros((1, 8, 8, 3), dtype=np.uint8)
    )


@pytest.mark.slow
def test_real_weights_top5_on_sample_photos(lite0):
    names, probabilities = lite0.top_k(load_sample_images().images, 5)
    assert BUILDINGS & set(names[0]), names[0]  # china.jpg: a palace / temple
    assert "daisy" in names[1], names[1]  # flower.jpg
    assert probabilities[0, 0] > 0.1


@pytest.mark.slow
def test_real_weights_scored_with_top_k_scorer(lite0):
    from skimage import data

    photos = [data.chelsea(), data.coffee()[:, :450]]  # cat; espresso cup
    X = [np.asarray(p)[:300, :400] for p in photos]
    y = ["tabby", "espresso"]
    assert top_k_scorer(5)(lite0, X, y) == 1.0
    assert top_k_scorer(5)(lite0, X, ["tabby", "mountain bike"]) == 0.5
    # score is top-1 accuracy: the cat is an 'Egyptian cat' first, 'tabby' third.
    assert lite0.score(X, ["Egyptian cat", "espresso"]) == 1.0
    assert lite0.score(X, y) == 0.5
    assert lite0.score(X, y) == accuracy_score(y, lite0.predict(X))


def test_continuous_labels_are_rejected(images):
    clf = ImageNetClassifier("resnet18", weights=None, device="cpu")
    with pytest.raises(ValueError, match="Unknown label type: 'continuous'"):
        clf.fit(images, np.linspace(0, 1, 8))
