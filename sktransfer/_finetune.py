"""FineTuneClassifier: fine-tune a pretrained CNN as a scikit-learn classifier."""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import (
    Interval,
    StrOptions,
    validate_parameter_constraints,
)
from sklearn.utils.multiclass import check_classification_targets
from skorch import NeuralNet, NeuralNetClassifier
from skorch.callbacks import EarlyStopping
from skorch.dataset import ValidSplit, unpack_data
from skorch.utils import is_dataset
from torch import nn
from torch.utils.data import DataLoader
from torchvision.models import WeightsEnum

from ._backbones import build_backbone, check_model, layer_groups
from ._finetune_data import (
    FEATURES_KEY,
    Collate,
    FeatureDataset,
    ImageDataset,
    PrefixFeatures,
    default_augmentation,
    prepare_batch,
)
from ._freeze import (
    BN_POLICIES,
    apply_train_modes,
    drop_aux,
    freeze,
    is_under,
    replace_head,
    resolve_frozen_layers,
    trained_aux_heads,
)
from ._images import Images, check_images
from ._prefix import NotSplittableError, computed_prefix, plan_split
from ._torch import resolve_device

_AUX_MODELS = ("googlenet", "inception_v3")
_DEFAULT_PATIENCE = 5


class FineTuneClassifier(NeuralNetClassifier):
    """Fine-tune a pretrained CNN: new head, frozen layer groups, augmentation.

    A :class:`skorch.NeuralNetClassifier` whose network is a pretrained
    backbone with its 1000-way ImageNet classifier replaced by a new one for
    ``len(classes_)`` classes. The first ``frozen_layers`` layer groups
    (:func:`~sktransfer.layer_groups`, counted from the input) are frozen: no
    gradient, not given to the optimizer, and run in eval mode so that their
    BatchNorm statistics never change. The rest of the backbone trains at
    ``lr * backbone_lr_ratio``, the new head at ``lr``. Labels of any type are
    accepted; ``predict`` returns them. Every skorch parameter (``callbacks``,
    ``optimizer__*``, ``iterator_train__*``, ``train_split``, ``warm_start``,
    ...) keeps working.

    Parameters
    ----------
    model : str or torch.nn.Module, default="resnet18"
        A backbone name (:func:`~sktransfer.list_backbones`), ``"timm/<name>"``,
        ``"efficientnet_lite0"`` or a module (deep-copied; never modified).
    weights : str, path, WeightsEnum or None, default="DEFAULT"
        As for :class:`~sktransfer.CNNFeatureExtractor`; ``None`` is a seeded
        random initialisation (tests and examples).
    frozen_layers : int or "all", default="all"
        How many layer groups, counted from the input, stay frozen: ``"all"``
        trains only the new head, ``0`` fine-tunes everything. An int lies in
        ``0..len(layer_groups(model))``.
    augment : bool or callable, default=True
        ``True``: random-resized-crop (25-100 % of the area) and horizontal
        flip of each training image; ``False``: none; a callable takes one
        ``(3, H, W)`` uint8 (or float in [0, 1]) tensor and returns an image,
        which then gets the backbone's usual preprocessing. Validation and
        prediction are never augmented.
    bn : {"frozen", "eval", "train"}, default="frozen"
        BatchNorm policy. ``"frozen"``: frozen groups run in eval mode (fixed
        running statistics); trained groups update theirs. ``"eval"``: every
        BatchNorm layer uses its running statistics (small batches).
        ``"train"``: BatchNorm layers of frozen groups update their running
        statistics too (their weights stay fixed).
    backbone_lr_ratio : float, default=0.01
        Learning rate of the trained backbone groups relative to ``lr`` (the
        head's): discriminative learning rates. The defaults train the new
        head at 1e-2 and pretrained layers at 1e-4 (AdamW).
    head_dropout : float, default=0.0
        Dropout probability before the new head.
    aux_loss_weight : float, default=0.3
        GoogLeNet / Inception v3: the loss is ``main + aux_loss_weight * aux``
        (summed over auxiliary heads) while their branch's group trains; ``0``
        drops the auxiliary heads. Prediction uses the main head only.
    cache_frozen : bool, default=True
        With ``augment=False``, compute the frozen groups' output once per
        fit and train only the rest of the network (identical results, much
        faster). ``False`` runs the whole network every step.
    validation_fraction : float, default=0.1
        Stratified fraction of the training data held out for
        ``early_stopping`` (when ``train_split`` is None).
    early_stopping : int, bool or None, default=None
        Patience in epochs: stop when the validation loss has not improved for
        that many epochs and restore the best epoch's weights. ``True`` means
        5; ``None`` or ``False`` trains for ``max_epochs``.
    random_state : int, RandomState or None, default=None
        Seeds head initialisation, shuffling, augmentation, dropout and the
        validation split: a fit is reproducible on CPU.
    max_epochs : int, default=10
        Passes over the training data.
    lr : float, default=1e-2
        Learning rate of the new head (a freshly initialised layer: small
        image sets give it few steps, so it needs a fairly high rate).
    batch_size : int, default=32
        Images per step (training and prediction).
    optimizer : torch optimizer class, default=torch.optim.AdamW
        Its options as ``optimizer__<name>`` (e.g. ``optimizer__weight_decay``).
    criterion : torch loss class, default=torch.nn.CrossEntropyLoss
        Applied to the logits; options as ``criterion__<name>``.
    train_split : callable or None, default=None
        skorch's internal validation split (e.g. ``skorch.dataset.ValidSplit(5,
        stratified=True)``); takes precedence over ``validation_fraction``.
    classes : array-like or None, default=None
        The labels; ``None`` takes the sorted unique labels of ``y``.
    device : str or torch.device, default="auto"
        ``"auto"``: CUDA when available, else the CPU.
    verbose : int, default=0
        skorch's per-epoch table when positive.
    **kwargs
        Any other skorch parameter: ``callbacks``, ``iterator_train__*``,
        ``iterator_valid__*``, ``optimizer__*``, ``criterion__*``,
        ``warm_start``, ... ``iterator_train__shuffle`` defaults to True.

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
        Modules kept in eval mode while training.
    aux_heads_ : tuple of str
        Auxiliary heads trained with the main one (GoogLeNet / Inception v3).
    prefix_cached_ : bool
        Whether the last fit computed the frozen groups' output once.
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

    _own_constraints: dict = {
        "model": [str, nn.Module],
        "weights": [str, os.PathLike, WeightsEnum, None],
        "augment": ["boolean", callable],
        "bn": [StrOptions(set(BN_POLICIES))],
        "backbone_lr_ratio": [Interval(Real, 0, None, closed="neither")],
        "head_dropout": [Interval(Real, 0, 1, closed="left")],
        "aux_loss_weight": [Interval(Real, 0, None, closed="left")],
        "cache_frozen": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither"), None],
        "early_stopping": [Interval(Integral, 1, None, closed="left"), "boolean", None],
        "random_state": ["random_state"],
        "device": [str, torch.device],
    }

    def __init__(
        self,
        model="resnet18",
        *,
        weights="DEFAULT",
        frozen_layers="all",
        augment=True,
        bn="frozen",
        backbone_lr_ratio=0.01,
        head_dropout=0.0,
        aux_loss_weight=0.3,
        cache_frozen=True,
        validation_fraction=0.1,
        early_stopping=None,
        random_state=None,
        max_epochs=10,
        lr=1e-2,
        batch_size=32,
        optimizer=torch.optim.AdamW,
        criterion=torch.nn.CrossEntropyLoss,
        train_split=None,
        classes=None,
        device="auto",
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
        self.cache_frozen = cache_frozen
        self.validation_fraction = validation_fraction
        self.early_stopping = early_stopping
        self.random_state = random_state
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
            object.__setattr__(self, name, value)
            return
        super().__setattr__(name, value)

    def _get_param_names(self):
        return [name for name in super()._get_param_names() if name != "module"]

    # ------------------------------------------------------------------ fit
    def fit(self, X, y, **fit_params):
        """Fine-tune on images ``X`` with labels ``y``.

        Parameters
        ----------
        X : array-like, list of paths or list of PIL images
            Images: uint8/float arrays ``(n, H, W, C)``, ``(n, C, H, W)`` or
            ``(n, H, W)``, file paths or PIL images.
        y : array-like of shape (n_samples,)
            Labels of any type (at least two classes).
        **fit_params : dict
            Passed to skorch (``train_split``, the module's ``forward``).

        Returns
        -------
        self : FineTuneClassifier
        """
        return self._fit(X, y, fit_params, partial=False)

    def partial_fit(self, X, y=None, classes=None, **fit_params):
        """Train ``max_epochs`` more epochs without re-initialising (see ``fit``).

        Parameters
        ----------
        X : array-like, list of paths or list of PIL images
            Images.
        y : array-like of shape (n_samples,)
            Labels among ``classes_`` (the first call fixes them).
        classes : None
            Ignored; pass ``classes=`` to the constructor instead.
        **fit_params : dict
            Passed to skorch.

        Returns
        -------
        self : FineTuneClassifier
        """
        return self._fit(X, y, fit_params, partial=True)

    def _fit(self, X, y, fit_params, *, partial: bool):
        self._check_params()
        reinit = not self.initialized_ or not (partial or self.warm_start)
        if is_dataset(X):
            raise TypeError(
                "FineTuneClassifier takes images (arrays, file paths or PIL images) "
                f"and labels, not a {type(X).__name__}; see "
                "sktransfer.load_image_folder for an image folder."
            )
        images = check_images(X, n_channels=None if reinit else self.n_channels_in_)
        y = _check_labels(y, len(images))
        if reinit:
            classes = self._classes_from(y)
            self.classes_inferred_ = classes
            self.class_index_ = {label: i for i, label in enumerate(classes.tolist())}
        y_index = self._encode(y)
        self.seed_ = _seed(self.random_state)
        with self._resolved_device(), _forked_rng(self.seed_, self.device):
            if reinit:
                self.initialize()
                self.n_channels_in_ = images.n_channels
            NeuralNet.partial_fit(self, images, y_index, **fit_params)
        return self

    def _check_params(self) -> None:
        params = {name: getattr(self, name) for name in self._own_constraints}
        validate_parameter_constraints(
            self._own_constraints, params, type(self).__name__
        )
        check_model(self.model)
        if isinstance(self.device, str) and self.device != "auto":
            resolve_device(self.device)
        try:  # structure only (meta device): fail before loading any weights
            groups = layer_groups(self.model)
        except Exception:  # checked again once the backbone is built
            return
        name = self.model if isinstance(self.model, str) else type(self.model).__name__
        resolve_frozen_layers(self.frozen_layers, groups, name)

    def _classes_from(self, y: np.ndarray) -> np.ndarray:
        if self.classes is not None and len(self.classes):
            classes = np.asarray(self.classes)
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

    def _encode(self, y: np.ndarray) -> np.ndarray:
        try:
            return np.fromiter(
                (self.class_index_[v] for v in y.tolist()), np.int64, len(y)
            )
        except KeyError as exc:
            raise ValueError(
                f"y contains the label {exc.args[0]!r}, which is not among classes_ "
                f"{self.classes_.tolist()[:10]}; fit again (warm_start=False) to "
                "change the classes."
            ) from None

    def check_data(self, X, y=None):
        """Classes come from ``fit`` (labels are encoded before skorch sees them)."""

    # ---------------------------------------------------------- initialise
    def initialize(self):
        """skorch's ``initialize`` (``device="auto"`` resolved); needs ``classes_``."""
        with self._resolved_device():
            return super().initialize()

    def initialize_module(self):
        """Build the backbone, replace its head(s) and freeze its first groups."""
        classes = self.classes_
        name = self.model if isinstance(self.model, str) else type(self.model).__name__
        wants_aux = (
            name in _AUX_MODELS
            and isinstance(self.model, str)
            and self.aux_loss_weight > 0
        )
        backbone = build_backbone(self.model, self.weights, aux_logits=wants_aux)
        groups = backbone.groups
        n_frozen = resolve_frozen_layers(self.frozen_layers, groups, name)
        module = backbone.module
        aux_heads = trained_aux_heads(backbone.aux_heads, groups, n_frozen)
        if backbone.aux_heads and not aux_heads:
            drop_aux(module)  # their branch is frozen: they would train for nothing
        replace_head(module, backbone.head, len(classes), self.head_dropout)
        for head in aux_heads:
            replace_head(module, head, len(classes))
        if aux_heads and name == "googlenet" and self.weights is not None:
            warnings.warn(
                "torchvision's pretrained GoogLeNet has no pretrained auxiliary heads: "
                "aux1 and aux2 start from random weights and are trained with the loss "
                f"weight aux_loss_weight={self.aux_loss_weight} (0 drops them).",
                UserWarning,
                stacklevel=2,
            )
        self.frozen_modules_ = freeze(
            module, groups, n_frozen, (backbone.head, *aux_heads)
        )
        self.layer_groups_ = groups
        self.n_frozen_groups_ = n_frozen
        self.head_ = backbone.head
        self.aux_heads_ = aux_heads
        self.preprocessing_ = backbone.preprocessing
        self.backbone_name_ = backbone.name
        self.weights_id_ = backbone.weights_id
        self.module_ = module
        return self

    def initialize_optimizer(self, triggered_directly=None):
        """The optimizer over trainable parameters only (head and unfrozen groups)."""
        named = [(n, p) for n, p in self.module_.named_parameters() if p.requires_grad]
        args, kwargs = self.get_params_for_optimizer("optimizer", named)
        self.optimizer_ = self.optimizer(*args, **kwargs)
        return self

    def get_params_for_optimizer(self, prefix, named_parameters):
        """skorch's parameter groups; the rest split into head and backbone groups.

        The head trains at ``lr``, the backbone at ``lr * backbone_lr_ratio``;
        groups set with ``optimizer__param_groups`` keep their own settings.
        """
        named_parameters = list(named_parameters)
        args, kwargs = super().get_params_for_optimizer(prefix, named_parameters)
        if prefix != "optimizer":
            return args, kwargs
        heads = (self.head_, *self.aux_heads_)
        head_ids = {id(p) for n, p in named_parameters if is_under(n, heads)}
        groups = []
        for group in args[0]:
            if set(group) != {"params"}:  # a user-configured group
                groups.append(group)
                continue
            head = [p for p in group["params"] if id(p) in head_ids]
            rest = [p for p in group["params"] if id(p) not in head_ids]
            if head:
                groups.append({"params": head})
            if rest:
                groups.append(
                    {"params": rest, "lr": kwargs["lr"] * self.backbone_lr_ratio}
                )
        return (groups,), kwargs

    @property
    def _default_callbacks(self):
        callbacks = list(super()._default_callbacks)
        patience = self._patience()
        if patience is not None:
            early = EarlyStopping(
                monitor="valid_loss", patience=patience, load_best=True
            )
            callbacks.insert(-1, ("early_stopping", early))  # before print_log
        return callbacks

    def _patience(self) -> int | None:
        if self.early_stopping is None or self.early_stopping is False:
            return None
        if self.early_stopping is True:
            return _DEFAULT_PATIENCE
        return int(self.early_stopping)

    # ------------------------------------------------------------- training
    def _set_training(self, training=True):
        super()._set_training(training)
        if training and getattr(self, "frozen_modules_", None) is not None:
            apply_train_modes(self.module_, self.frozen_modules_, self.bn)

    def get_dataset(self, X, y=None):
        """Images (validated like every sktransfer input) or precomputed features."""
        if is_dataset(X):
            return X
        if isinstance(X, PrefixFeatures):
            return FeatureDataset(X.features, y)
        if not isinstance(X, Images):
            X = check_images(X, n_channels=getattr(self, "n_channels_in_", None))
        return ImageDataset(X, y)

    def get_split_datasets(self, X, y=None, **fit_params):
        """skorch's split, or a stratified ``validation_fraction`` (early stopping)."""
        if self.train_split is not None or self._patience() is None:
            return super().get_split_datasets(X, y, **fit_params)
        if self.validation_fraction is None:
            raise ValueError(
                f"early_stopping={self.early_stopping!r} needs held-out data, but "
                "validation_fraction=None and train_split=None. Set "
                "validation_fraction (e.g. 0.1) or pass a train_split."
            )
        n, n_classes = len(y), len(self.classes_)
        n_valid = math.ceil(self.validation_fraction * n)
        if n_valid < n_classes or n - n_valid < n_classes:
            raise ValueError(
                "early_stopping holds out validation_fraction="
                f"{self.validation_fraction} of {n} images = {n_valid}, but a "
                f"stratified split needs at least {n_classes} images (one per "
                "class) on each side. Change validation_fraction, add images, or "
                "disable early_stopping."
            )
        dataset = self.get_dataset(X, y)
        split = ValidSplit(
            self.validation_fraction, stratified=True, random_state=self.seed_
        )
        return split(dataset, y, **fit_params)

    def get_iterator(self, dataset, training=False):
        """skorch's iterator; a ``DataLoader`` gets sktransfer's collate function."""
        prefix = "iterator_train" if training else "iterator_valid"
        iterator = self.iterator_train if training else self.iterator_valid
        kwargs = self.get_params_for(prefix)
        kwargs.setdefault("batch_size", self.batch_size)
        if kwargs["batch_size"] == -1:
            kwargs["batch_size"] = len(dataset)
        if isinstance(iterator, type) and issubclass(iterator, DataLoader):
            kwargs.setdefault("collate_fn", Collate(self.classes_))
        return iterator(dataset, **kwargs)

    def fit_loop(self, X, y=None, epochs=None, **fit_params):
        """skorch's loop; over precomputed frozen-prefix outputs when possible."""
        split = self._plan_prefix(X)
        self.prefix_cached_ = False
        if split is not None:
            self._set_training(True)  # the frozen groups' training-time mode
            batches = X.batches(self.preprocessing_, self.batch_size)
            try:
                with computed_prefix(
                    split, batches, len(X), torch.device(self.device)
                ) as feats:
                    self.prefix_cached_ = True
                    self.prefix_split_ = split
                    try:
                        return super().fit_loop(
                            PrefixFeatures(feats), y, epochs, **fit_params
                        )
                    finally:
                        self.prefix_split_ = None
            except NotSplittableError:
                self.prefix_cached_ = False
        return super().fit_loop(X, y, epochs, **fit_params)

    def _plan_prefix(self, X):
        eligible = (
            self.cache_frozen
            and self.augment is False
            and isinstance(X, Images)
            and self.n_frozen_groups_ > 0
            and self.bn != "train"
            and not self.compile
        )
        if not eligible:
            return None
        return plan_split(self.module_, self.layer_groups_, self.frozen_modules_)

    def infer(self, x, **fit_params):
        """One forward pass: preprocessing (augmented in training), then the network."""
        training = self.module_.training
        auto = isinstance(self.device, str) and self.device == "auto"
        device = _auto_device() if auto else self.device
        if isinstance(x, dict) and FEATURES_KEY in x:
            split = getattr(self, "prefix_split_", None)
            if split is None:
                raise RuntimeError(
                    "Precomputed features reached the network outside fit."
                )
            return split.tail(training)(x[FEATURES_KEY].to(device))
        augment = None
        if training and self.augment is not False:
            augment = self.augment
            if augment is True:
                augment = default_augmentation(self.preprocessing_)
        batch = prepare_batch(
            x, self.preprocessing_, augment, builtin=self.augment is True
        )
        return self.module_(batch.to(device), **fit_params)

    def _outputs(self, y_pred):
        """``(main, [aux, ...])`` from the network's output."""
        if isinstance(y_pred, tuple):
            aux = [o for o in y_pred[1:] if o is not None] if self.aux_heads_ else []
            return y_pred[0], aux
        return y_pred, []

    def get_loss(self, y_pred, y_true, X=None, training=False):
        """Loss of the main head, plus ``aux_loss_weight`` times the aux heads'."""
        main, aux = self._outputs(y_pred)
        if isinstance(y_true, torch.Tensor):  # a custom collate_fn: class indices
            target = y_true.long()
        else:
            target = torch.from_numpy(self._encode(np.asarray(y_true)))
        target = target.to(main.device)
        loss = self.criterion_(main, target)
        if aux and training:
            loss = loss + self.aux_loss_weight * sum(
                self.criterion_(a, target) for a in aux
            )
        return loss

    def train_step_single(self, batch, **fit_params):
        """skorch's step; ``y_pred`` is the main head's output."""
        self._set_training(True)
        Xi, yi = unpack_data(batch)
        y_pred = self.infer(Xi, **fit_params)
        loss = self.get_loss(y_pred, yi, X=Xi, training=True)
        loss.backward()
        return {"loss": loss, "y_pred": self._outputs(y_pred)[0]}

    # ----------------------------------------------------------- predicting
    def forward_iter(self, X, training=False, device="cpu"):
        with self._resolved_device():
            yield from super().forward_iter(X, training=training, device=device)

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
        proba = np.asarray(super().predict_proba(X), dtype=np.float64)
        return proba / proba.sum(axis=1, keepdims=True)

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
        index = self.predict_proba(X).argmax(axis=1)
        return self.classes_[index]

    # ---------------------------------------------------------- persistence
    @contextlib.contextmanager
    def _resolved_device(self):
        """``device="auto"`` as a concrete device while skorch runs."""
        raw = self.__dict__.get("device")
        if not (isinstance(raw, str) and raw == "auto"):
            yield
            return
        self.__dict__["device"] = _auto_device()
        try:
            yield
        finally:
            self.__dict__["device"] = raw

    def load_params(self, *args, **kwargs):
        with self._resolved_device():
            return super().load_params(*args, **kwargs)

    def __setstate__(self, state):
        # A net fitted on a GPU with device="auto" loads on a CPU-only machine.
        raw = state.get("device")
        auto = isinstance(raw, str) and raw == "auto"
        if auto:
            state["device"] = _auto_device()
        super().__setstate__(state)
        if auto:
            self.__dict__["device"] = raw

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        tags.non_deterministic = True
        return tags


def _auto_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _seed(random_state) -> int | None:
    if random_state is None:
        return None
    if isinstance(random_state, Integral):
        return int(random_state)
    return int(check_random_state(random_state).randint(2**31 - 1))


@contextlib.contextmanager
def _forked_rng(seed: int | None, device):
    """Seed torch for one fit without touching the caller's random state."""
    if seed is None:
        yield
        return
    devices = []
    if torch.device(device).type == "cuda":
        devices = [torch.device(device).index or torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _is_missing(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return type(value).__name__ in ("NAType", "NaTType")


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
