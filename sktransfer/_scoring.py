"""Top-k accuracy scorers that read the labels from ``estimator.classes_``.

scikit-learn's ``make_scorer(top_k_accuracy_score)`` infers the label set from
the ``y`` of each test fold, so a fold that lacks a class is scored against the
wrong columns (or fails). These scorers always use the fitted estimator's own
``classes_``, which is the order of the columns of its ``predict_proba`` and
``decision_function``.
"""

from __future__ import annotations

from collections.abc import Iterator
from numbers import Integral

import numpy as np
from sklearn.utils._param_validation import (
    Interval,
    InvalidParameterError,
    validate_params,
)

from ._params import reject_bool

__all__ = ["top_k_scorer", "top_k_scorers"]


class _TopKScorer:
    """Callable ``scorer(estimator, X, y_true, sample_weight=None)``.

    Built by :func:`top_k_scorer`; greater is better.
    """

    def __init__(self, k: int):
        self.k = k

    def __repr__(self) -> str:
        return f"top_k_scorer(k={self.k})"

    def __call__(self, estimator, X, y_true, sample_weight=None) -> float:
        classes = _classes(estimator)
        if self.k >= len(classes):
            raise ValueError(
                f"top_k_scorer(k={self.k}) needs more than {self.k} classes, but the "
                f"estimator was fitted on {len(classes)}: every prediction would be "
                f"a hit and the score meaningless. Use k < {len(classes)}."
            )
        scores = _scores(estimator, X, len(classes))
        return top_k_accuracy(y_true, scores, classes, self.k, sample_weight)


def top_k_accuracy(y_true, scores, classes, k: int, sample_weight=None) -> float:
    """Fraction of samples whose label is among the ``k`` highest ``scores``.

    ``scores`` has one column per entry of ``classes`` (in that order, which
    need not be sorted). A label that is not in ``classes`` counts as a miss.
    Ties are broken as in :func:`sklearn.metrics.top_k_accuracy_score`.
    """
    y_true = np.asarray(y_true)
    if y_true.ndim != 1 or len(y_true) != len(scores):
        raise ValueError(
            f"y_true must be 1-D with one label per image ({len(scores)}), "
            f"got shape {y_true.shape}."
        )
    column = {label: i for i, label in enumerate(np.asarray(classes).tolist())}
    encoded = np.array([column.get(label, -1) for label in y_true.tolist()])
    top = np.argsort(scores, axis=1, kind="mergesort")[:, ::-1][:, :k]
    hits = (top == encoded[:, None]).any(axis=1)
    return float(np.average(hits, weights=sample_weight))


def _classes(estimator) -> np.ndarray:
    try:
        classes = estimator.classes_
    except AttributeError as exc:
        raise ValueError(
            f"Top-k accuracy needs a fitted classifier with classes_, got "
            f"{type(estimator).__name__} without it ({exc}). Fit it first, or score "
            "a classifier (a Pipeline or GridSearchCV ending in one works too)."
        ) from exc
    return np.asarray(classes)


def _scores(estimator, X, n_classes: int) -> np.ndarray:
    """``predict_proba`` if available, else ``decision_function``, as (n, n_classes)."""
    if hasattr(estimator, "predict_proba"):
        method = "predict_proba"
        scores = np.asarray(estimator.predict_proba(X))
    elif hasattr(estimator, "decision_function"):
        method = "decision_function"
        scores = np.asarray(estimator.decision_function(X))
        if scores.ndim == 1 and n_classes == 2:  # binary: the positive class' score
            scores = np.column_stack([-scores, scores])
    else:
        raise ValueError(
            f"Top-k accuracy needs predict_proba or decision_function; "
            f"{type(estimator).__name__} has neither."
        )
    if scores.ndim != 2 or scores.shape[1] != n_classes:
        raise ValueError(
            f"{type(estimator).__name__}.{method} returned shape {scores.shape}, "
            f"expected (n_samples, {n_classes}) with one column per class in classes_ "
            "(for SVC, keep decision_function_shape='ovr')."
        )
    return scores


@validate_params(
    {"k": [Interval(Integral, 1, None, closed="left")]},
    prefer_skip_nested_validation=True,
)
def top_k_scorer(k=5):
    """A scorer for top-k accuracy, correct when a CV fold lacks some classes.

    A sample counts as correct when its label is among the ``k`` classes with
    the highest ``predict_proba`` (or, when the estimator has none, such as
    ``SVC()`` without ``probability=True``, ``decision_function``). The labels
    come from ``estimator.classes_``, never from the test fold's ``y``, so
    the score equals ``sklearn.metrics.top_k_accuracy_score(y, scores, k=k,
    labels=estimator.classes_)``. Labels the estimator has never seen count as
    misses.

    Parameters
    ----------
    k : int, default=5
        Number of highest-scored classes that may contain the true label.
        Scoring an estimator with ``k >= len(classes_)`` raises ``ValueError``:
        every sample would be a hit.

    Returns
    -------
    scorer : callable
        ``scorer(estimator, X, y, sample_weight=None) -> float``, usable as
        ``scoring=`` in ``cross_val_score``, ``GridSearchCV``, ... It works on
        classifiers, ``Pipeline`` and ``GridSearchCV`` objects.

    See Also
    --------
    top_k_scorers : Several k at once, for multi-metric evaluation.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sktransfer import top_k_scorer
    >>> X, y = load_iris(return_X_y=True)
    >>> clf = LogisticRegression(max_iter=1000).fit(X, y)
    >>> top_k_scorer(2)(clf, X, y)
    1.0
    """
    reject_bool(k, "k", "top_k_scorer")
    return _TopKScorer(int(k))


@validate_params(
    {"ks": ["array-like", Iterator]},  # a list, tuple, array, range or generator
    prefer_skip_nested_validation=True,
)
def top_k_scorers(ks=(1, 5)) -> dict:
    """Top-k scorers for several ``k``, for multi-metric evaluation.

    Parameters
    ----------
    ks : iterable of int, default=(1, 5)
        The values of ``k``; distinct integers >= 1.

    Returns
    -------
    scorers : dict
        ``{"top1": top_k_scorer(1), "top5": top_k_scorer(5), ...}``, for
        ``cross_validate(scoring=...)`` or ``GridSearchCV(scoring=...,
        refit="top1")``.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.model_selection import cross_validate
    >>> from sklearn.svm import SVC
    >>> from sktransfer import top_k_scorers
    >>> X, y = load_digits(return_X_y=True)
    >>> result = cross_validate(SVC(), X, y, cv=3, scoring=top_k_scorers((1, 3)))
    >>> sorted(key for key in result if key.startswith("test_"))
    ['test_top1', 'test_top3']
    """
    values = list(ks)
    for k in values:  # validate_params cannot check the items
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, Integral) or k < 1:
            raise InvalidParameterError(
                "The 'ks' parameter of top_k_scorers must hold ints in the range "
                f"[1, inf). Got {k!r} in {tuple(values)!r}."
            )
    values = [int(k) for k in values]
    if not values:
        raise ValueError("ks is empty; give at least one k, e.g. ks=(1, 5).")
    if len(set(values)) != len(values):
        raise ValueError(f"ks must be distinct, got {tuple(values)}.")
    return {f"top{k}": _TopKScorer(k) for k in values}
