"""Top-k scorers: agreement with scikit-learn, folds that lack classes, errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.datasets import load_digits, load_iris, make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import make_scorer, top_k_accuracy_score
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from sktransfer import top_k_scorer, top_k_scorers


@pytest.fixture
def noisy_data():
    """Six overlapping classes: top-1 < top-2 < top-3 < 1."""
    X, y = make_classification(
        n_samples=120,
        n_features=8,
        n_informative=4,
        n_classes=6,
        n_clusters_per_class=1,
        class_sep=0.6,
        random_state=0,
    )
    return X, np.array(list("abcdef"))[y]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_matches_sklearn_predict_proba(noisy_data, k):
    X, y = noisy_data
    clf = LogisticRegression(max_iter=1000).fit(X[:80], y[:80])
    expected = top_k_accuracy_score(
        y[80:], clf.predict_proba(X[80:]), k=k, labels=clf.classes_
    )
    assert top_k_scorer(k)(clf, X[80:], y[80:]) == pytest.approx(expected)


def test_scores_grow_with_k(noisy_data):
    X, y = noisy_data
    clf = LogisticRegression(max_iter=1000).fit(X[:80], y[:80])
    scores = [top_k_scorer(k)(clf, X[80:], y[80:]) for k in (1, 2, 3, 5)]
    assert scores == sorted(scores) and scores[0] < scores[-1]
    assert scores[0] == pytest.approx(clf.score(X[80:], y[80:]))


def test_uses_decision_function_without_predict_proba(noisy_data):
    X, y = noisy_data
    svc = SVC().fit(X[:80], y[:80])
    assert not hasattr(svc, "predict_proba")
    expected = top_k_accuracy_score(
        y[80:], svc.decision_function(X[80:]), k=2, labels=svc.classes_
    )
    assert top_k_scorer(2)(svc, X[80:], y[80:]) == pytest.approx(expected)


def test_binary_decision_function():
    X, y = load_iris(return_X_y=True)
    X, y = X[y > 0], np.where(y[y > 0] == 1, "versicolor", "virginica")
    svc = SVC(kernel="linear").fit(X[::2], y[::2])
    assert svc.decision_function(X[1::2]).ndim == 1
    assert top_k_scorer(1)(svc, X[1::2], y[1::2]) == pytest.approx(
        svc.score(X[1::2], y[1::2])
    )


def test_sample_weight(noisy_data):
    X, y = noisy_data
    clf = LogisticRegression(max_iter=1000).fit(X[:80], y[:80])
    weights = np.random.default_rng(0).uniform(0.1, 3, size=40)
    expected = top_k_accuracy_score(
        y[80:],
        clf.predict_proba(X[80:]),
        k=2,
        labels=clf.classes_,
        sample_weight=weights,
    )
    got = top_k_scorer(2)(clf, X[80:], y[80:], sample_weight=weights)
    assert got == pytest.approx(expected)


def _fold_lacking_a_class():
    """Digits 0-4 ordered by class: with unshuffled 5-fold CV no fold has them all."""
    X, y = load_digits(n_class=5, return_X_y=True)
    order = np.argsort(y, kind="stable")
    X, y = X[order][::3], y[order][::3]
    # Move a few samples of every class to the front so each training set sees
    # every class, while test folds still lack most classes.
    front = np.concatenate([np.flatnonzero(y == c)[:3] for c in range(5)])
    rest = np.setdiff1d(np.arange(len(y)), front)
    order = np.concatenate([rest, front])
    return X[order], y[order]


def test_cross_val_score_with_fold_lacking_a_class():
    X, y = _fold_lacking_a_class()
    cv = KFold(5)
    assert any(len(np.unique(y[test])) < 5 for _, test in cv.split(X))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    scores = cross_val_score(model, X, y, cv=cv, scoring=top_k_scorer(2))
    expected = []
    for train, test in cv.split(X):
        fitted = clone(model).fit(X[train], y[train])
        assert len(fitted.classes_) == 5
        expected.append(
            top_k_accuracy_score(
                y[test], fitted.predict_proba(X[test]), k=2, labels=fitted.classes_
            )
        )
    np.testing.assert_allclose(scores, expected)
    # scikit-learn's own scorer, without labels, cannot score those folds.
    naive = make_scorer(top_k_accuracy_score, response_method="predict_proba", k=2)
    with pytest.warns(UserWarning):  # failed fits/scores are reported as warnings
        naive_scores = cross_val_score(model, X, y, cv=cv, scoring=naive)
    assert np.isnan(naive_scores).any()


def test_unseen_labels_count_as_misses(noisy_data):
    X, y = noisy_data
    clf = LogisticRegression(max_iter=1000).fit(X[:80], y[:80])
    full = top_k_scorer(2)(clf, X[80:], y[80:])
    y_test = y[80:].copy()
    y_test[:10] = "never seen"
    known = top_k_scorer(2)(clf, X[90:], y[90:])
    assert top_k_scorer(2)(clf, X[80:], y_test) == pytest.approx(known * 30 / 40)
    assert full >= known * 30 / 40


def test_grid_search_multimetric(noisy_data):
    X, y = noisy_data
    search = GridSearchCV(
        LogisticRegression(max_iter=1000),
        {"C": [0.01, 1.0]},
        scoring=top_k_scorers((1, 3)),
        refit="top1",
        cv=3,
    ).fit(X, y)
    assert {"mean_test_top1", "mean_test_top3"} <= set(search.cv_results_)
    assert np.all(
        search.cv_results_["mean_test_top3"] >= search.cv_results_["mean_test_top1"]
    )
    # The fitted search itself is scored through its classes_ and predict_proba.
    expected = top_k_accuracy_score(
        y, search.predict_proba(X), k=3, labels=search.classes_
    )
    assert top_k_scorer(3)(search, X, y) == pytest.approx(expected)


def test_cross_validate_with_scorer_dict(noisy_data):
    X, y = noisy_data
    result = cross_validate(
        SVC(),
        X,
        y,
        cv=3,
        scoring=top_k_scorers(),
        return_estimator=True,
        return_indices=True,
    )
    folds = zip(result["estimator"], result["indices"]["test"], strict=True)
    for i, (svc, test) in enumerate(folds):
        scores = svc.decision_function(X[test])  # SVC: no predict_proba
        for k in (1, 5):
            expected = top_k_accuracy_score(y[test], scores, k=k, labels=svc.classes_)
            assert result[f"test_top{k}"][i] == pytest.approx(expected)
    assert np.all(result["test_top5"] >= result["test_top1"])


def test_scorer_repr_and_pickle():
    scorer = top_k_scorer(3)
    assert repr(scorer) == "top_k_scorer(k=3)"
    assert pickle.loads(pickle.dumps(scorer)).k == 3
    assert list(top_k_scorers((1, 5, 10))) == ["top1", "top5", "top10"]


def test_k_at_least_n_classes_is_an_error():
    X, y = load_iris(return_X_y=True)
    clf = LogisticRegression(max_iter=1000).fit(X, y)
    with pytest.raises(
        ValueError, match=r"k=3\) needs more than 3 classes.*fitted on 3"
    ):
        top_k_scorer(3)(clf, X, y)
    with pytest.raises(ValueError, match="fitted on 3"):
        top_k_scorer(5)(clf, X, y)


@pytest.mark.parametrize("k", [0, -1, 2.5, "5", True, None])
def test_invalid_k(k):
    with pytest.raises(
        ValueError,
        match=r"'k' parameter of top_k_scorer must be an int in the range \[1, inf\)",
    ):
        top_k_scorer(k)


@pytest.mark.parametrize(
    "ks, match",
    [
        ((), "ks is empty"),
        ((1, 1), "distinct"),
        ("15", "'ks' parameter of top_k_scorers must be an array-like or .*Iterator"),
        (5, "'ks' parameter of top_k_scorers must be an array-like or .*Iterator"),
        ((1, 0), r"must hold ints in the range \[1, inf\). Got 0 in \(1, 0\)"),
        ([1, True], r"must hold ints .*Got True"),
    ],
)
def test_invalid_ks(ks, match):
    with pytest.raises(ValueError, match=match):
        top_k_scorers(ks)


def test_ks_from_any_iterable():
    expected = ["top1", "top3"]
    assert list(top_k_scorers(k for k in (1, 3))) == expected
    assert list(top_k_scorers(range(1, 4, 2))) == expected
    assert list(top_k_scorers(np.array([1, 3]))) == expected


def test_unfitted_or_not_a_classifier():
    X, y = load_iris(return_X_y=True)
    with pytest.raises(ValueError, match="fitted classifier with classes_"):
        top_k_scorer(1)(LogisticRegression(), X, y)
    with pytest.raises(ValueError, match="fitted classifier with classes_"):
        top_k_scorer(1)(StandardScaler().fit(X), X, y)


class _PredictOnly(ClassifierMixin, BaseEstimator):
    def fit(self, X, y):
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        return np.full(len(X), self.classes_[0])


def test_estimator_without_scores():
    X, y = load_iris(return_X_y=True)
    with pytest.raises(ValueError, match="predict_proba or decision_function"):
        top_k_scorer(1)(_PredictOnly().fit(X, y), X, y)


def test_ovo_decision_function_shape_is_explained(noisy_data):
    X, y = noisy_data
    svc = SVC(decision_function_shape="ovo").fit(X, y)
    with pytest.raises(
        ValueError, match=r"shape \(120, 15\).*decision_function_shape='ovr'"
    ):
        top_k_scorer(2)(svc, X, y)
