"""Sample and class weights of FineTuneClassifier, as scikit-learn reads them."""

from __future__ import annotations

import math
from numbers import Real

import numpy as np
from sklearn.utils.class_weight import compute_sample_weight


def training_weights(
    y_index: np.ndarray,
    classes: np.ndarray,
    class_weight,
    sample_weight,
) -> np.ndarray | None:
    """One weight per image (mean 1), or ``None`` when all weigh the same.

    ``class_weight``: ``None``, ``"balanced"`` (``n_samples / (n_classes *
    count)`` over the classes present) or a dict ``label -> weight``
    (missing labels weigh 1); multiplied by ``sample_weight``. Normalised to
    mean 1, so that the loss keeps its scale and ``lr`` its meaning.

    Examples
    --------
    >>> import numpy as np
    >>> training_weights(np.array([0, 0, 0, 1]), np.array(["a", "b"]),
    ...                  "balanced", None)
    array([0.66666667, 0.66666667, 0.66666667, 2.        ])
    """
    if class_weight is None and sample_weight is None:
        return None
    weights = np.ones(len(y_index))
    if sample_weight is not None:
        weights = check_sample_weight(sample_weight, len(y_index))
    if class_weight == "balanced":  # (checked with the parameters)
        weights = weights * compute_sample_weight("balanced", y_index)
    elif class_weight is not None:
        weights = weights * _class_weights(class_weight, classes)[y_index]
    total = weights.sum()
    if not total > 0:
        raise ValueError(
            "sample_weight and class_weight leave every image with weight 0; "
            "give some images a positive weight."
        )
    return weights * (len(weights) / total)


def weighted_loss(criterion, logits, target, weights):
    """``criterion``'s loss; with per-sample ``weights`` (mean 1 over the
    training set), the mean of its per-sample losses times the weights."""
    if weights is None:
        return criterion(logits, target)
    reduction = getattr(criterion, "reduction", None)
    if reduction is None:
        raise TypeError(
            f"sample_weight and class_weight need a criterion with a "
            f"'reduction' option (per-sample losses); "
            f"{type(criterion).__name__} has none."
        )
    criterion.reduction = "none"
    try:
        losses = criterion(logits, target)
    finally:
        criterion.reduction = reduction
    return (losses * weights).mean()


def check_sample_weight(sample_weight, n: int) -> np.ndarray:
    """``sample_weight`` as a float array of ``n`` finite, non-negative values."""
    try:
        weights = np.asarray(sample_weight, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"sample_weight must be numbers, one per image; got {sample_weight!r:.80}."
        ) from exc
    if weights.ndim != 1 or len(weights) != n:
        raise ValueError(
            f"sample_weight must have shape ({n},), one weight per image; got "
            f"shape {weights.shape}."
        )
    bad = np.flatnonzero(~np.isfinite(weights) | (weights < 0))
    if len(bad):
        raise ValueError(
            f"sample_weight must be finite and non-negative; got "
            f"{weights[bad[:5]].tolist()} at positions {bad[:5].tolist()}."
        )
    return weights


def _class_weights(class_weight: dict, classes: np.ndarray) -> np.ndarray:
    """The weight of each class index, from a dict ``label -> weight``."""
    n_classes = len(classes)
    known = {label: i for i, label in enumerate(classes.tolist())}
    unknown = [label for label in class_weight if label not in known]
    if unknown:
        raise ValueError(
            f"class_weight has labels {unknown[:5]} that are not among the classes "
            f"{classes.tolist()[:10]}; use the labels of y as keys."
        )
    out = np.ones(n_classes)
    for label, weight in class_weight.items():
        if not isinstance(weight, Real) or not math.isfinite(weight) or weight < 0:
            raise ValueError(
                f"class_weight[{label!r}] must be a finite non-negative number; "
                f"got {weight!r}."
            )
        out[known[label]] = float(weight)
    return out
