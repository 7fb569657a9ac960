"""FineTuneClassifier: fine-tune a pretrained CNN as a scikit-learn classifier."""

from __future__ import annotations

import inspect
import math
import os
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils._param_validation import (
    Interval,
    StrOptions,
    validate_parameter_constraints,
)
from sklearn.utils.multiclass import check_classification_targets
from skorch import NeuralNet
from skorch.dataset import Dataset
from skorch.utils import is_dataset

from .. import _params
from .._backbones import check_model, layer_groups
from .._devices import resolve_device
from .._images import check_images
from .._randomness import FitRandomness, seed_for_fit
from .data import FitData
from .freeze import BN_POLICIES, resolve_frozen_layers
from .head import head_epochs_for
from .net import FineTuneNet
from .phases import SCHEDULES
from .weighting import training_weights

_AUTO_EPOCHS_TUNE = 5  # pretrained groups train too (after the head alone)

_CONSTRAINTS: dict = {
    **_params.BACKBONE,
    **_params.PRECISION,
    "bn": [StrOptions(set(BN_POLICIES))],
    "backbone_lr_ratio": [Interval(Real, 0, None, closed="neither")],
    "head_dropout": [Interval(Real, 0, 1, closed="left")],
    "aux_loss_weight": [Interval(Real, 0, None, closed="left")],
    "augment": ["boolean", StrOptions({"flip", "random"}), callable],
    "head_hidden": [Interval(Integral, 1, None, closed="left"), None],
    "head_epochs": [Interval(Integral, 0, None, closed="left"), StrOptions({"auto"})],
    "tta": ["boolean"],
    "max_epochs": [Interval(Integral, 0, None, closed="left"), StrOptions({"auto"})],
    "lr_schedule": [StrOptions(set(SCHEDULES))],
    "label_smoothing": [Interval(Real, 0, 1, closed="left")],
    "class_weight": [dict, StrOptions({"balanced"}), None],
    "cache": [StrOptions({"memory"}), str, os.PathLike, None],
    "cache_frozen": ["boolean"],
    "image_size": [Interval(Integral, 16, None, closed="left"), None],
    "validation_fraction": [Interval(Real, 0, 1, closed="neither"), None],
    "early_stopping": [Interval(Integral, 1, None, closed="left"), "boolean", None],
    "random_state": ["random_state"],
}


class FineTuneClassifier(FineTuneNet):
    """Fine-tune a pretrained CNN: new head, frozen layer groups, augmentation.

    A :class:`skorch.NeuralNetClassifier` whose network is a pretrained
    backbone with a new classifier for ``len(classes_)`` classes. The first
    ``frozen_layers`` layer groups (:func:`~sktransfer.layer_groups`, from
    the input) are frozen: no gradient, no optimizer, eval mode (fixed
    BatchNorm statistics). The new head first trains alone for
    ``head_epochs`` (the ``"head"`` phase of ``history_``), then with the
    rest of the backbone at ``lr * backbone_lr_ratio``. Labels of any type;
    ``predict`` returns them. Every skorch parameter (``callbacks``,
    ``optimizer__*``, ``iterator_train__*``, ``train_split``, ``warm_start``,
    ...) works, but ``dataset`` and ``predict_nonlinearity``.

    The output of what stays fixed (per image and view) is computed once
    where a probe shows that it gives what running the whole network gives,
    and kept by image content and all else that determines it. A seeded fit
    draws from generators of its own: the same model alone, after other
    fits or beside them in threads.

    Parameters
    ----------
    model : str or torch.nn.Module, default="resnet18"
        A backbone name (:func:`~sktransfer.list_backbones`), ``"timm/<name>"``,
        ``"efficientnet_lite0"`` or a module (deep-copied; never modified).
    weights : str, path, WeightsEnum or None, default="DEFAULT"
        As for :class:`~sktransfer.CNNFeatureExtractor`; ``None`` is a seeded
        random initialisation (tests and examples).
    frozen_layers : int or "all", default="all"
        How many layer groups stay frozen, ``0..len(layer_groups(model))``:
        ``"all"`` trains only the new head, ``0`` everything.
    augment : bool, "flip", "random" or callable, default=True
        ``"flip"``: an image and its mirror image are two fixed *views*, one
        drawn per epoch (the frozen groups' output computed once).
        ``"random"``: a random-resized-crop (25-100 % of the area) and flip
        every step; the whole network runs. ``True``: ``"flip"`` when groups
        are frozen, else ``"random"``. ``False``: none. A callable maps a
        ``(3, H, W)`` uint8 (or [0, 1] float) tensor, on the device, to an
        image, then preprocessed. The head's phase trains on the fixed views
        (the image alone with a callable); validation and prediction are
        never augmented.
    bn : {"frozen", "eval", "train"}, default="frozen"
        ``"frozen"``: frozen groups keep their running statistics, trained
        groups update theirs. ``"eval"``: every BatchNorm layer keeps its
        (small batches). ``"train"``: frozen groups' BatchNorm layers update
        their statistics too (their weights stay fixed).
    backbone_lr_ratio : float, default=1.0
        Learning rate of the trained backbone groups relative to ``lr``. The
        head trains alone first and rates warm up, so 1.0 is the default: 0.1
        scored 7-9 points lower on a set unlike ImageNet (docs/benchmarks.md).
    head_dropout : float, default=0.5
        Dropout probability before each layer of the new head.
    aux_loss_weight : float, default=0.3
        GoogLeNet / Inception v3 built by name: loss ``main + aux_loss_weight
        * aux`` while their branch's group trains; ``0`` drops the auxiliary
        heads. Prediction uses the main head.
    head_hidden : int or None, default=512
        Units of the new head's hidden ``Linear`` + ReLU layer; ``None``: a
        linear head. The head first standardises its input (training
        statistics).
    head_epochs : int or "auto", default="auto"
        Epochs of the new head alone (on stored outputs, with its own warm-up
        and decay) before unfrozen groups train, so that its first gradients
        do not distort pretrained layers. ``"auto"``: 20, or enough for 100
        steps on small sets. ``0`` or ``callbacks__head_phase=None`` skips it;
        unused when only the head trains, in ``partial_fit`` and warm starts.
    tta : bool, default=True
        ``predict_proba`` (and validation) average the probabilities of the
        views that training used (the image and its mirror image).
    lr_schedule : {"cosine", "constant"}, default="cosine"
        ``"cosine"``: linear warm-up over the first 10 % of a phase's steps,
        then cosine decay to zero, every group alike.
    label_smoothing : float, default=0.1
        Passed to criteria that take it (``CrossEntropyLoss``).
    class_weight : dict, "balanced" or None, default=None
        Class weights in the loss, as in scikit-learn (``"balanced"``:
        ``n_samples / (n_classes * count)``; a dict: labels -> weights,
        others 1).
    cache : "memory", path or None, default="memory"
        Where the output of what stays fixed is kept across fits and
        predictions: an in-process LRU (2 GiB) shared by clones, so that a
        grid search computes each image's frozen part once per cut point; a
        folder, shared by processes (``n_jobs`` > 1) and runs; ``None``, one
        fit only. Keyed by image content
        and a digest of the frozen modules (weights, code, settings), the
        preprocessing, precision and device.
    cache_frozen : bool, default=True
        ``False`` runs the whole network every step: the same recipe and
        results (in float32), much slower. A network that cannot run from
        the stored output (a probe compares) runs whole, with a warning.
    image_size : int or None, default=None
        ``None``: the weights' own preprocessing (e.g. resize 256, crop 224);
        an int crops to that size (resize scaled alike): small images train
        and predict several times faster at 96-128 px.
    validation_fraction : float, default=0.1
        Stratified fraction held out for ``early_stopping`` (when
        ``train_split`` is None).
    early_stopping : int, bool or None, default=None
        Patience in epochs: stop when the validation loss has not improved
        for that many and restore the best epoch's weights. ``True``: 5;
        ``None`` or ``False`` trains for ``max_epochs``.
    random_state : int, RandomState or None, default=None
        Seeds the fit's own generators (head initialisation, shuffling,
        views, augmentation, dropout, the validation split): reproducible on
        the CPU, also beside other fits in threads. ``None``: drawn from
        torch's default generator.
    max_epochs : int or "auto", default="auto"
        Epochs after the head's phase. ``"auto"``: 20 or enough for 100 steps
        when only the head trains (on stored outputs), else 5.
    lr : float, default=1e-3
        Peak learning rate of the new head (see ``lr_schedule``).
    batch_size : int, default=32
        Images per step (training and prediction).
    optimizer : torch optimizer class, default=torch.optim.AdamW
        Options as ``optimizer__<name>`` (e.g. ``optimizer__weight_decay``).
    criterion : torch loss class, default=torch.nn.CrossEntropyLoss
        Applied to the logits; options as ``criterion__<name>``.
    train_split : callable or None, default=None
        skorch's validation split (e.g. ``skorch.dataset.ValidSplit(5,
        stratified=True)``); takes precedence over ``validation_fraction``.
    classes : array-like or None, default=None
        The labels; ``None`` takes the sorted unique labels of ``y``.
    device : str or torch.device, default="auto"
        ``"auto"``: CUDA when available, else the CPU. On CUDA, images cross
        as uint8, preprocessed and augmented there while the next batch
        loads. ``set_params(device="cpu")`` moves a fitted network.
    precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        Autocast dtype of training and prediction. ``"auto"``: bfloat16 on
        CUDA cards that have it, else float16 with gradient scaling; bfloat16
        on CPUs that run it natively (AVX512-BF16, AMX), with trained grouped
        convolutions in float32 (faster there); else float32. Weights and
        optimizer state stay float32. ``"float32"``: the same results on
        every machine.
    verbose : int, default=0
        skorch's per-epoch table when positive.
    **kwargs
        Any other skorch parameter (``callbacks``, ``iterator_train__*``,
        ``warm_start``, ...); ``iterator_train__shuffle`` defaults to True.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The labels, as given in ``y``.
    module_ : torch.nn.Module
        The backbone with its new head(s).
    layer_groups_ : list of list of str
        The backbone's layer groups.
    n_frozen_groups_ : int
        ``frozen_layers`` resolved to a number of groups.
    frozen_modules_ : list of str
        Modules kept in eval mode while the unfrozen groups train.
    max_epochs_, head_epochs_ : int
        The epochs of the last fit's phases (``max_epochs`` and
        ``head_epochs`` resolved; ``head_epochs_`` is 0 without a head phase).
    aux_heads_ : tuple of str
        Auxiliary heads trained with the main one (GoogLeNet / Inception v3).
    prefix_cached_ : bool
        Whether the unfrozen groups of the last fit trained on the frozen
        groups' output, computed once (or taken from ``cache``).
    n_channels_in_ : int or None
        Channel count of the array input seen in ``fit``.

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer import FineTuneClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    >>> y = ["cat", "dog", "cat", "dog", "cat", "dog"]
    >>> clf = FineTuneClassifier("mobilenet_v3_small", weights=None, max_epochs=1,
    ...                          random_state=0).fit(X, y)
    >>> clf.predict(X[:2]).shape
    (2,)
    >>> clf.predict_proba(X[:2]).sum(axis=1).round(6)
    array([1., 1.])
    """

    def __init__(
        self,
        model="resnet18",
        *,
        weights="DEFAULT",
        frozen_layers="all",
        augment=True,
        bn="frozen",
        backbone_lr_ratio=1.0,
        head_dropout=0.5,
        aux_loss_weight=0.3,
        head_hidden=512,
        head_epochs="auto",
        tta=True,
        lr_schedule="cosine",
        label_smoothing=0.1,
        class_weight=None,
        cache="memory",
        cache_frozen=True,
        image_size=None,
        validation_fraction=0.1,
        early_stopping=None,
        random_state=None,
        max_epochs="auto",
        lr=1e-3,
        batch_size=32,
        optimizer=torch.optim.AdamW,
        criterion=torch.nn.CrossEntropyLoss,
        train_split=None,
        classes=None,
        device="auto",
        precision="auto",
        verbose=0,
        **kwargs,
    ):
        # Set before skorch's __init__: a module-valued ``model`` is a
        # hyper-parameter here, not a torch component for skorch to register.
        self.model = model
        self.weights = weights
        self.frozen_layers = frozen_layers
        self.augment = augment
        self.bn = bn
        self.backbone_lr_ratio = backbone_lr_ratio
        self.head_dropout = head_dropout
        self.aux_loss_weight = aux_loss_weight
        self.head_hidden = head_hidden
        self.head_epochs = head_epochs
        self.tta = tta
        self.lr_schedule = lr_schedule
        self.label_smoothing = label_smoothing
        self.class_weight = class_weight
        self.cache = cache
        self.cache_frozen = cache_frozen
        self.image_size = image_size
        self.validation_fraction = validation_fraction
        self.early_stopping = early_stopping
        self.random_state = random_state
        self.precision = precision
        kwargs.pop("module", None)  # the network is built from ``model``
        kwargs.setdefault("iterator_train__shuffle", True)
        super().__init__(
            None,
            criterion=criterion,
            optimizer=optimizer,
            lr=lr,
            max_epochs=max_epochs,
            batch_size=batch_size,
            train_split=train_split,
            classes=classes,
            device=device,
            verbose=verbose,
            **kwargs,
        )

    def __setattr__(self, name, value):
        if name == "model":  # never registered as a skorch module
            return object.__setattr__(self, name, value)
        super().__setattr__(name, value)

    def _get_param_names(self):
        # skorch takes every attribute not ending in "_" for a parameter; the
        # network's private working state (cuts, a fit's data) is not
        return [
            name
            for name in super()._get_param_names()
            if name != "module"
            and not (name.startswith("_") and name != "_params_to_validate")
        ]

    # ------------------------------------------------------------------ fit
    def fit(self, X, y, sample_weight=None, **fit_params):
        """Fine-tune on images ``X`` with labels ``y``.

        Parameters
        ----------
        X : array-like, list of paths or list of PIL images
            Images: uint8/float arrays ``(n, H, W, C)``, ``(n, C, H, W)`` or
            ``(n, H, W)``, file paths or PIL images.
        y : array-like of shape (n_samples,)
            Labels of any type (at least two classes).
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the images in the loss (multiplied by
            ``class_weight``'s).
        **fit_params : dict
            Passed to skorch (``train_split``, the module's ``forward``).

        Returns
        -------
        self : FineTuneClassifier
        """
        return self._fit(X, y, sample_weight, fit_params, partial=False)

    def partial_fit(self, X, y=None, classes=None, sample_weight=None, **fit_params):
        """Train ``max_epochs`` more epochs without re-initialising (see ``fit``).

        Parameters
        ----------
        X : array-like, list of paths or list of PIL images
            Images.
        y : array-like of shape (n_samples,)
            Labels among ``classes_`` (the first call fixes them).
        classes : None
            Ignored; pass ``classes=`` to the constructor instead.
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the images (see ``fit``).
        **fit_params : dict
            Passed to skorch.

        Returns
        -------
        self : FineTuneClassifier
        """
        return self._fit(X, y, sample_weight, fit_params, partial=True)

    def _fit(self, X, y, sample_weight, fit_params, *, partial: bool):
        """skorch's ``fit`` (``initialize()``, then ``partial_fit``, which runs
        callbacks and routing), once the labels are encoded (the new head's
        size needs ``classes_``), for the epochs of both phases."""
        self._check_params()
        fresh = not self.initialized_ or not (partial or self.warm_start)
        if is_dataset(X):
            raise TypeError(
                "FineTuneClassifier takes images (arrays, file paths or PIL images) "
                f"and labels, not a {type(X).__name__}; see "
                "sktransfer.load_image_folder for an image folder."
            )
        images = check_images(X, n_channels=None if fresh else self.n_channels_in_)
        y = _check_labels(y, len(images))
        if fresh:
            classes = _classes_of(y, self.classes)
            self.classes_inferred_ = classes
            self.class_index_ = {label: i for i, label in enumerate(classes.tolist())}
        y_index = self._encode(y)
        weights = training_weights(
            y_index, self.classes_, self.class_weight, sample_weight
        )
        self.seed_ = seed_for_fit(self.random_state)
        with self._resolved_device(), FitRandomness(self.seed_):
            if fresh:
                self.initialize()
                self.n_channels_in_ = images.n_channels
            self.max_epochs_ = self._resolve_epochs(self.max_epochs, len(images))
            head_phase = dict(self.callbacks_).get("head_phase")
            self.head_epochs_ = 0
            if fresh and not self._head_only() and head_phase:
                n = len(images)
                self.head_epochs_ = self._resolve_epochs(self.head_epochs, n, head=True)
            self.__dict__["_fresh"] = fresh  # its head's statistics to fit
            data = self.__dict__["_fit_data"] = FitData(images, y_index, weights)
            try:
                NeuralNet.partial_fit(
                    self,
                    data,
                    y_index,
                    epochs=self.head_epochs_ + self.max_epochs_,
                    _routing_method="partial_fit" if partial else "fit",
                    **fit_params,
                )
            finally:  # also when the fit fails: no rows kept
                self.__dict__.pop("_fit_data").release()
        return self

    def _resolve_epochs(self, epochs, n: int, *, head: bool = False) -> int:
        """``max_epochs`` or (``head``) ``head_epochs``, ``"auto"`` resolved
        for ``n`` images (see the parameters)."""
        if epochs != "auto":
            return int(epochs)
        if not (head or self._head_only()):
            return _AUTO_EPOCHS_TUNE
        return head_epochs_for(n, self._batch_size(n))

    def _check_params(self) -> None:
        params = {name: getattr(self, name) for name in _CONSTRAINTS}
        validate_parameter_constraints(_CONSTRAINTS, params, type(self).__name__)
        check_model(self.model)
        resolve_device(self.device)
        if self.dataset is not Dataset or self.get_params_for("dataset"):
            raise ValueError(
                "FineTuneClassifier makes its own datasets from the images it is "
                f"given; dataset={self.dataset!r} and dataset__* are not "
                "supported. Pass images and labels to fit."
            )
        if self.predict_nonlinearity != "auto":
            raise ValueError(
                "FineTuneClassifier.predict_proba is the softmax of the network's "
                f"logits; predict_nonlinearity={self.predict_nonlinearity!r} is "
                "not supported. Use forward() for the raw logits."
            )
        try:  # structure only (meta device): fail before loading any weights
            groups = layer_groups(self.model)
        except Exception:  # checked again once the backbone is built
            return
        name = self.model if isinstance(self.model, str) else type(self.model).__name__
        resolve_frozen_layers(self.frozen_layers, groups, name)

    def _encode(self, y: np.ndarray) -> np.ndarray:
        try:
            return np.fromiter(map(self.class_index_.__getitem__, y.tolist()), np.int64)
        except KeyError as exc:
            raise ValueError(
                f"y contains the label {exc.args[0]!r}, which is not among classes_ "
                f"{self.classes_.tolist()[:10]}; fit again (warm_start=False) to "
                "change the classes."
            ) from None

    def predict_proba(self, X):
        """Class probabilities (main head, softmax; rows sum to 1).

        Parameters
        ----------
        X : array-like, list of paths or list of PIL images
            Images with the channel count seen in ``fit``.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes), float64
            Columns in the order of ``classes_``.
        """
        self.check_is_fitted()
        logits = self.forward(X, training=False)
        if isinstance(logits, tuple):
            logits = logits[0]
        return torch.softmax(logits.double(), dim=1).numpy()

    def predict(self, X):
        """The most probable label of each image.

        Parameters
        ----------
        X : array-like, list of paths or list of PIL images
            Images.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            Elements of ``classes_``.
        """
        index = self.predict_proba(X).argmax(axis=1)  # checks the fit first
        return self.classes_[index]

    def __repr__(self):
        """``FineTuneClassifier('resnet18', frozen_layers=2, ...)``: changed params."""
        return _repr(self)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        tags.non_deterministic = True
        return tags


def _repr(estimator) -> str:
    """The estimator's class, model, and the parameters not at their default."""
    signature = inspect.signature(type(estimator).__init__).parameters
    shown = [repr(estimator.model)]
    for name, value in estimator.get_params(deep=False).items():
        if name in signature:
            changed = name != "model" and not _same(value, signature[name].default)
        else:  # skorch's parameters, shown where set through "__"
            default = name == "iterator_train__shuffle" and value is True
            changed = "__" in name and not default
        if changed:
            shown.append(f"{name}={value!r}")
    return f"{type(estimator).__name__}({', '.join(shown)})"


def _classes_of(y: np.ndarray, given) -> np.ndarray:
    """The classes: ``given`` (checked against ``y``), else ``y``'s sorted labels."""
    if given is not None and len(given):
        classes = np.asarray(given)
        unknown = sorted({str(v) for v in set(y.tolist()) - set(classes.tolist())})
        if unknown:
            raise ValueError(
                f"y contains labels {unknown[:5]} that are not in classes="
                f"{classes.tolist()[:10]}; add them to classes or drop those "
                "samples."
            )
    else:
        try:
            classes = np.unique(y)
        except TypeError as exc:
            raise ValueError(
                "Labels in y must be of one comparable type (all str or all "
                "numbers); "
                f"got a mix: {sorted({type(v).__name__ for v in y.tolist()})}."
            ) from exc
    if len(classes) < 2:
        raise ValueError(
            f"FineTuneClassifier needs at least 2 classes in y; got {len(classes)} "
            f"class {classes.tolist()}. Add images of another class."
        )
    return classes


def _same(value, default) -> bool:
    if value is default:
        return True
    try:
        return type(value) is type(default) and bool(value == default)
    except Exception:
        return False


def _is_missing(value) -> bool:
    if isinstance(value, float) and math.isnan(value):
        return True
    return value is None or type(value).__name__ in ("NAType", "NaTType")


def _check_labels(y, n_images: int) -> np.ndarray:
    if y is None:
        raise ValueError(
            "FineTuneClassifier.fit needs labels y (one per image); got None."
        )
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (one label per image); got shape {y.shape}.")
    if len(y) != n_images:
        raise ValueError(
            f"X has {n_images} images but y has {len(y)} labels; pass one label "
            "per image."
        )
    missing = [i for i, v in enumerate(y.tolist()) if _is_missing(v)]
    if missing:
        raise ValueError(
            f"y contains {len(missing)} missing labels (NaN/None) at positions "
            f"{missing[:10]}; drop those images or give them a label."
        )
    check_classification_targets(y)
    return y
