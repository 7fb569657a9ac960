"""Look into a fitted model: what it saw, where it errs.

:func:`explain` gives, per image, a heat map of the regions that raised a
class's score: Grad-CAM (Selvaraju et al., 2017) on the network's last
convolutional feature map, the one its classifier pools. It explains a
:class:`~sktransfer.FineTuneClassifier`, an
:class:`~sktransfer.ImageNetClassifier`, and a pipeline of a
:class:`~sktransfer.CNNFeatureExtractor` and a linear scikit-learn
classifier (through an optional ``StandardScaler``): there the class's score
is the classifier's decision function of the pooled embedding, so its
coefficients map back onto the feature map (for average pooling, the map
*is* the coefficients' weighted sum of the feature channels: a class
activation map). Maps are aligned with the photo as displayed (EXIF
orientation applied), zero where the preprocessing cropped it away.

:func:`plot_explanation` overlays a map on its photo, :func:`plot_top_losses`
shows the most confidently wrong predictions with their maps, and
:func:`plot_confusion_matrix` the confusion matrix.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import NotFittedError
from torch import nn
from torch.nn import functional as F

from ._devices import resolve_device
from ._images import Images, Preprocessing, check_images
from ._tap import find_layer, forward_tap, pool

__all__ = [
    "explain",
    "plot_confusion_matrix",
    "plot_explanation",
    "plot_top_losses",
]

_SUPPORTED = (
    "FineTuneClassifier, ImageNetClassifier, or a Pipeline of a "
    "CNNFeatureExtractor, optionally a StandardScaler, and a linear classifier "
    "(LogisticRegression, LinearSVC, RidgeClassifier, SGDClassifier)"
)


@dataclass
class _Scorer:
    """How to get class scores of preprocessed images, differentiably."""

    module: nn.Module
    preprocessing: Preprocessing
    classes: np.ndarray
    scores: Callable[[torch.Tensor], torch.Tensor]  # (b, 3, h, w) -> (b, classes)
    stop: nn.Module | None  # the feature map is the last one before this runs


def explain(estimator, X, *, target=None, batch_size: int = 16) -> list[np.ndarray]:
    """Heat maps of the regions that raised a class's score, one per image.

    Parameters
    ----------
    estimator : fitted estimator
        A :class:`~sktransfer.FineTuneClassifier`, an
        :class:`~sktransfer.ImageNetClassifier`, or a ``Pipeline`` of a
        :class:`~sktransfer.CNNFeatureExtractor`, optionally a
        ``StandardScaler``, and a linear classifier (``LogisticRegression``,
        ``LinearSVC``, ``RidgeClassifier``, ``SGDClassifier``).
    X : array-like, list of paths or list of PIL images
        Images, as the estimator takes them.
    target : label, array-like of labels or None, default=None
        The class whose score each map explains: ``None``, the predicted
        class of each image; a label of ``classes_``, for every image; or one
        label per image.
    batch_size : int, default=16
        Images per forward and backward pass.

    Returns
    -------
    maps : list of ndarray of shape (H, W), float32
        Per image, at the size of the photo as displayed (EXIF orientation
        applied): values in [0, 1], 1 where the class's evidence is
        strongest; 0 outside the part of the photo the network saw (the
        preprocessing's centre crop).

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer import FineTuneClassifier, explain
    >>> rng = np.random.default_rng(0)
    >>> X = rng.integers(0, 256, (4, 48, 64, 3), dtype=np.uint8)
    >>> clf = FineTuneClassifier("resnet18", weights=None, max_epochs=1,
    ...                          image_size=64, random_state=0).fit(X, [0, 1, 0, 1])
    >>> maps = explain(clf, X)
    >>> maps[0].shape, float(maps[0].min()) >= 0, float(maps[0].max()) <= 1
    ((48, 64), True, True)
    """
    scorer = _scorer(estimator)
    images = X if isinstance(X, Images) else check_images(X)
    targets = _targets(target, scorer.classes, len(images))
    device = _device_of(scorer.module)
    maps: list[np.ndarray] = []
    module = scorer.module
    was_training = module.training
    module.eval()
    try:
        for start in range(0, len(images), batch_size):
            indices = range(start, min(start + batch_size, len(images)))
            pixels = [images.image(i) for i in indices]
            batch = torch.stack([scorer.preprocessing(p[None])[0] for p in pixels])
            cams = _grad_cam(
                scorer, batch.to(device), targets[start : start + len(pixels)]
            )
            maps.extend(
                _on_photo(cam, p.shape[-2:], scorer.preprocessing)
                for cam, p in zip(cams, pixels, strict=True)
            )
    finally:
        module.train(was_training)
    return maps


def _scorer(estimator) -> _Scorer:
    from sklearn.pipeline import Pipeline

    from ._extractor import CNNFeatureExtractor
    from ._finetune import FineTuneClassifier
    from ._imagenet import ImageNetClassifier

    if isinstance(estimator, FineTuneClassifier):
        if not getattr(estimator, "initialized_", False):
            raise NotFittedError(_unfitted(estimator))
        return _network(
            estimator.module_,
            estimator.preprocessing_,
            estimator.classes_,
            estimator.head_,
        )
    if isinstance(estimator, ImageNetClassifier):
        backbone = _fitted(estimator, "backbone_")
        return _network(
            backbone.module, backbone.preprocessing, estimator.classes_, backbone.head
        )
    if isinstance(estimator, Pipeline) and isinstance(
        estimator.steps[0][1], CNNFeatureExtractor
    ):
        return _pipeline_scorer(estimator)
    raise TypeError(f"explain supports {_SUPPORTED}; got {type(estimator).__name__}.")


def _network(module: nn.Module, preprocessing, classes, head: str) -> _Scorer:
    """A network whose outputs are the class scores (logits)."""
    return _Scorer(
        module,
        preprocessing,
        np.asarray(classes),
        lambda x: _logits(module(x)),
        module.get_submodule(head),
    )


def _pipeline_scorer(pipeline) -> _Scorer:
    from sklearn.preprocessing import StandardScaler

    extractor = pipeline.steps[0][1]
    backbone = _fitted(extractor, "backbone_")
    classifier = pipeline.steps[-1][1]
    middle = [
        step for _, step in pipeline.steps[1:-1] if step not in (None, "passthrough")
    ]
    if any(not isinstance(step, StandardScaler) for step in middle) or not _linear(
        classifier
    ):
        raise TypeError(
            f"explain supports {_SUPPORTED}; got a Pipeline of "
            f"{', '.join(type(s).__name__ for _, s in pipeline.steps)}."
        )
    coef = torch.as_tensor(
        np.atleast_2d(_fitted(classifier, "coef_")), dtype=torch.float32
    )
    intercept = torch.as_tensor(np.ravel(classifier.intercept_), dtype=torch.float32)
    for scaler in reversed(middle):  # fold the scalers into the linear map
        scale = torch.as_tensor(
            scaler.scale_ if scaler.scale_ is not None else 1.0, dtype=torch.float32
        )
        mean = torch.as_tensor(
            scaler.mean_ if scaler.mean_ is not None else 0.0, dtype=torch.float32
        )
        coef = coef / scale
        intercept = intercept - (coef * mean).sum(-1)
    if coef.shape[0] == 1:  # binary: one score, for the second class
        coef = torch.cat([-coef, coef]) / 2
        intercept = torch.cat([-intercept, intercept]) / 2
    module = backbone.module
    tap, take_input = (
        (find_layer(module, backbone.head), True)
        if extractor.layer is None
        else (find_layer(module, extractor.layer), False)
    )

    def scores(x: torch.Tensor) -> torch.Tensor:
        features = pool(
            forward_tap(module, x, tap, take_input=take_input), extractor.pooling
        )
        if extractor.normalize:
            features = F.normalize(features, dim=1)
        return features @ coef.to(features).T + intercept.to(features)

    return _Scorer(
        module,
        backbone.preprocessing,
        np.asarray(classifier.classes_),
        scores,
        tap if take_input else None,  # a tapped layer's own map counts
    )


def _linear(classifier) -> bool:
    from sklearn.linear_model._base import LinearClassifierMixin
    from sklearn.svm import LinearSVC

    return isinstance(classifier, (LinearClassifierMixin, LinearSVC))


def _fitted(estimator, attribute: str):
    value = getattr(estimator, attribute, None)
    if value is None:
        raise NotFittedError(_unfitted(estimator))
    return value


def _unfitted(estimator) -> str:
    return (
        f"This {type(estimator).__name__} is not fitted yet: call fit before explain."
    )


def _logits(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _device_of(module: nn.Module) -> torch.device:
    first = next(module.parameters(), None)
    return first.device if first is not None else resolve_device("cpu")


def _targets(target, classes: np.ndarray, n: int) -> list[int | None]:
    """Class indices to explain (``None``: the predicted class)."""
    if target is None:
        return [None] * n
    index = {label: i for i, label in enumerate(classes.tolist())}
    labels = [target] * n if np.ndim(target) == 0 else list(np.asarray(target).tolist())
    if len(labels) != n:
        raise ValueError(f"target has {len(labels)} labels for {n} images.")
    unknown = sorted({str(v) for v in labels if v not in index})
    if unknown:
        raise ValueError(
            f"target {unknown[:5]} not among the classes "
            f"{classes.tolist()[:10]}{' ...' if len(classes) > 10 else ''}."
        )
    return [index[v] for v in labels]


def _grad_cam(scorer: _Scorer, batch: torch.Tensor, targets) -> torch.Tensor:
    """``(b, h, w)`` Grad-CAM maps in [0, 1] on the last 4-D feature map that
    finishes before ``scorer.stop`` runs."""
    found: list[torch.Tensor] = []
    stopped = []
    thread = threading.get_ident()  # a shared network may run in other threads

    def keep(_module, _args, output):
        if stopped or threading.get_ident() != thread:
            return
        if isinstance(output, torch.Tensor) and output.ndim == 4:
            if output.shape[-1] * output.shape[-2] > 1:
                found.append(output)

    def stop(*_):
        if threading.get_ident() == thread:
            stopped.append(True)

    handles = [
        m.register_forward_hook(keep, prepend=True)
        for m in scorer.module.modules()
        if m is not scorer.stop
    ]
    if scorer.stop is not None:
        handles.append(scorer.stop.register_forward_pre_hook(stop, prepend=True))
    try:
        with torch.enable_grad():
            batch = batch.requires_grad_(True)
            scores = scorer.scores(batch).float()
            if not found:
                raise TypeError(
                    f"explain needs a convolutional feature map (N, C, H, W) before "
                    f"the classifier; {type(scorer.module).__name__} gives none."
                )
            features = found[-1]
            chosen = torch.tensor(
                [
                    scores[i].argmax().item() if t is None else t
                    for i, t in enumerate(targets)
                ],
                device=scores.device,
            )
            picked = scores.gather(1, chosen[:, None]).sum()
            (grads,) = torch.autograd.grad(picked, features)
    finally:
        for handle in handles:
            handle.remove()
    weights = grads.float().mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * features.detach().float()).sum(1))
    peak = cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return (cam / peak).cpu()


def _on_photo(cam: torch.Tensor, size, preprocessing: Preprocessing) -> np.ndarray:
    """A map over the preprocessed crop -> over the photo as displayed: the
    crop's place in the resized photo, resized back to the photo's size."""
    height, width = int(size[0]), int(size[1])
    resized = preprocessing.resized_size(height, width)
    crop = preprocessing.crop_size
    top = int(round((resized[0] - crop) / 2.0))
    left = int(round((resized[1] - crop) / 2.0))
    canvas = torch.zeros(1, 1, max(resized[0], crop), max(resized[1], crop))
    up = F.interpolate(
        cam[None, None], size=(crop, crop), mode="bilinear", align_corners=False
    )
    canvas[
        ..., max(top, 0) : max(top, 0) + crop, max(left, 0) : max(left, 0) + crop
    ] = up
    canvas = canvas[..., : resized[0], : resized[1]]
    full = F.interpolate(
        canvas, size=(height, width), mode="bilinear", align_corners=False
    )
    return full[0, 0].clamp(0, 1).numpy().astype(np.float32)


# ---------------------------------------------------------------- plotting
def plot_explanation(
    image,
    heat_map: np.ndarray,
    *,
    ax=None,
    alpha: float = 0.45,
    cmap: str = "jet",
    title: str | None = None,
):
    """Overlay a heat map of :func:`explain` on its photo.

    Parameters
    ----------
    image : array, path or PIL image
        One photo, as given to :func:`explain`.
    heat_map : ndarray of shape (H, W)
        Its map.
    ax : matplotlib Axes, default=None
        Where to draw (default: a new figure's).
    alpha : float, default=0.45
        Opacity of the map.
    cmap : str, default="jet"
        Colour map of the heat map.
    title : str, default=None
        The axes' title.

    Returns
    -------
    ax : matplotlib Axes
    """
    import matplotlib.pyplot as plt

    photo = _displayed(image)
    if heat_map.shape != photo.shape[:2]:
        raise ValueError(
            f"heat_map has shape {heat_map.shape}, the photo {photo.shape[:2]} "
            "(height, width): pass the map explain gave for this photo."
        )
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4 * photo.shape[0] / photo.shape[1]))
    ax.imshow(photo)
    ax.imshow(heat_map, cmap=cmap, alpha=alpha, vmin=0, vmax=1)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def _displayed(image) -> np.ndarray:
    """One image as displayed: ``(H, W, 3)`` uint8 (EXIF orientation applied)."""
    if isinstance(image, Images):
        images = image
    elif isinstance(image, np.ndarray):
        images = check_images(image[None] if image.ndim in (2, 3) else image)
    else:
        images = check_images([image])
    pixels = images.image(0)
    if pixels.dtype != torch.uint8:
        pixels = (pixels * 255).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(1, 2, 0).numpy()


def plot_top_losses(estimator, X, y, k: int = 9, *, maps: bool = True, ncols: int = 3):
    """The ``k`` most confidently wrong predictions, with their heat maps.

    Images whose predicted class is not their label are ranked by the
    probability given to the predicted class (``predict_proba``, else the
    softmax of ``decision_function``); each is shown with its label, the
    prediction and that probability, and, where :func:`explain` supports the
    estimator and ``maps``, the map of the predicted class.

    Parameters
    ----------
    estimator : fitted classifier
        Any classifier that takes these images.
    X : array-like, list of paths or list of PIL images
        Images.
    y : array-like of shape (n_samples,)
        Their labels.
    k : int, default=9
        How many (fewer when fewer are wrong).
    maps : bool, default=True
        Overlay the heat maps (when :func:`explain` supports the estimator).
    ncols : int, default=3
        Columns of the grid.

    Returns
    -------
    fig : matplotlib Figure or None
        ``None`` when every prediction is right.
    indices : ndarray of int
        The positions in ``X`` of the images shown, most confident first.
    """
    images = X if isinstance(X, Images) else check_images(X)
    y = np.asarray(y)
    proba = probabilities(estimator, images)
    classes = np.asarray(estimator.classes_)
    predicted = classes[proba.argmax(1)]
    wrong = np.flatnonzero(predicted != y)
    order = wrong[np.argsort(-proba[wrong].max(1), kind="stable")][:k]
    if len(order) == 0:
        return None, order
    heat = None
    if maps:
        try:
            heat = explain(estimator, images.subset(order))
        except TypeError:  # not explainable: the photos alone
            heat = None
    titles = [
        f"true {y[i]}\npredicted {predicted[i]} ({proba[i].max():.0%})" for i in order
    ]
    return grid(images.subset(order), heat, titles, ncols=ncols), order


def grid(images: Images, maps, titles: list[str], *, ncols: int = 3):
    """A figure of ``images`` (with their heat ``maps``, or ``None``) in a
    grid, each titled."""
    import matplotlib.pyplot as plt

    ncols = max(1, min(ncols, len(images)))
    nrows = -(-len(images) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3 * ncols, 3.2 * nrows), squeeze=False
    )
    for ax in axes.flat[len(images) :]:
        ax.set_axis_off()
    for j, ax in enumerate(axes.flat[: len(images)]):
        one = images.subset([j])
        if maps is not None:
            plot_explanation(one, maps[j], ax=ax, title=titles[j])
        else:
            ax.imshow(_displayed(one))
            ax.set_axis_off()
            ax.set_title(titles[j], fontsize=9)
    fig.tight_layout()
    return fig


def probabilities(estimator, images) -> np.ndarray:
    """``predict_proba``, else the softmax of ``decision_function``."""
    if hasattr(estimator, "predict_proba"):
        try:
            return np.asarray(estimator.predict_proba(images))
        except AttributeError:  # e.g. SVC(probability=False)
            pass
    scores = np.asarray(estimator.decision_function(images), dtype=np.float64)
    if scores.ndim == 1:
        scores = np.stack([-scores, scores], axis=1)
    return softmax(scores)


def softmax(scores: np.ndarray) -> np.ndarray:
    """Rows of decision scores -> probabilities (float64)."""
    scores = np.exp(scores - scores.max(1, keepdims=True))
    return scores / scores.sum(1, keepdims=True)


def plot_confusion_matrix(
    y_true,
    y_pred,
    *,
    labels=None,
    ax=None,
    normalize: str | None = None,
    title: str | None = None,
):
    """The confusion matrix of predictions, sized for its number of classes.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
        Labels and predictions.
    labels : array-like, default=None
        The classes in display order (default: the sorted labels).
    ax : matplotlib Axes, default=None
        Where to draw (default: a new figure's).
    normalize : {"true", "pred", "all"} or None, default=None
        As in :func:`sklearn.metrics.confusion_matrix`.
    title : str, default=None
        The axes' title.

    Returns
    -------
    ax : matplotlib Axes
    """
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    if labels is None:
        labels = np.unique(np.concatenate([np.asarray(y_true), np.asarray(y_pred)]))
    if ax is None:
        size = min(4 + 0.4 * len(labels), 20)
        _, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=labels, ax=ax, colorbar=False,
        xticks_rotation="vertical", normalize=normalize,
        values_format=".2f" if normalize else "d",
    )  # fmt: skip
    if title:
        ax.set_title(title)
    ax.figure.tight_layout()
    return ax
