"""The skorch mechanics behind FineTuneClassifier.

:class:`FineTuneNet` builds the network (new heads, frozen groups), feeds it
sktransfer's image input path (augmented in training), trains with per-group
learning rates, auxiliary losses and BatchNorm policy, computes the frozen
prefix once when it can. Devices, mixed precision and pickling are
:class:`~sktransfer._finetune_device.DeviceMixin`'s; the public estimator, its
parameters and label handling live in :mod:`sktransfer._finetune`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import math
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils import check_random_state
from skorch import NeuralNetClassifier
from skorch.callbacks import EarlyStopping
from skorch.dataset import ValidSplit, unpack_data
from skorch.utils import is_dataset
from torch.utils.data import DataLoader, Subset

from . import _families, _frozen
from ._backbones import _build_key, trainable_backbone
from ._cache import module_digest
from ._device_transforms import to_device
from ._devices import autocast, float32_grouped_convolutions
from ._families import drop_aux, family_of, replace_head, trained_aux
from ._finetune_data import (
    FEATURES_KEY,
    Collate,
    DeviceLoader,
    FeatureDataset,
    ImageDataset,
    StoredPrefixDataset,
    channels_last,
    default_augmentation,
    flip_augmentation,
    prepare_batch,
    prepare_on_device,
    unpack,
)
from ._finetune_device import DeviceMixin
from ._freeze import apply_train_modes, freeze, resolve_frozen_layers
from ._groups import is_under
from ._head import head_epochs_for, new_head, standardizer, trained_heads
from ._images import Images, check_images
from ._pipeline import preprocessed_batches
from ._prefix import NotSplittableError, PrefixSplit, plan_split, segment
from ._schedule import LRSchedule
from ._tap import forward_tap
from ._weighting import training_weights, weighted_loss

_DEFAULT_PATIENCE = 5
# Settings that a head-only fit does not read, or reads as another one does
# (``class_weight``: the weights; ``classes``: ``classes_``), or whose other
# values make no head-only fit (``cache_frozen``, ``compile``, ``bn="train"``).
_UNUSED_BY_HEAD_ONLY_FITS = frozenset(
    {
        "aux_loss_weight",
        "backbone_lr_ratio",
        "bn",
        "cache",
        "cache_frozen",
        "class_weight",
        "classes",
        "compile",
        "frozen_layers",
        "head_epochs",
        "max_epochs",
        "tta",
        "verbose",
    }
)


class FineTuneNet(DeviceMixin, NeuralNetClassifier):
    """skorch overrides shared by :class:`~sktransfer.FineTuneClassifier`."""

    def check_data(self, X, y=None):
        """Classes come from ``fit`` (labels are encoded before skorch sees them)."""

    # ---------------------------------------------------------- initialise
    def initialize_module(self):
        """Build the backbone, replace its head(s) and freeze its first groups.

        The family table (:mod:`sktransfer._families`) says where the head and
        any auxiliary heads are, and which group each auxiliary branch taps.
        """
        classes = self.classes_
        name = self.model if isinstance(self.model, str) else type(self.model).__name__
        wants_aux = self.aux_loss_weight > 0
        backbone = trainable_backbone(self.model, self.weights, aux_logits=wants_aux)
        module, groups = backbone.module, backbone.groups
        n_frozen = resolve_frozen_layers(self.frozen_layers, groups, name)
        family = family_of(module)
        aux = trained_aux(backbone.aux_heads, groups, n_frozen)
        if backbone.aux_heads and not aux:
            drop_aux(module)  # frozen branches would train for nothing
        _install_head(module, backbone.head, len(classes), self)
        for head in aux:
            replace_head(module, head.head, len(classes))
        if aux and family.aux_note and self.weights is not None:
            warnings.warn(
                f"{family.aux_note} and are trained with the loss weight "
                f"aux_loss_weight={self.aux_loss_weight} (0 drops them).",
                UserWarning,
                stacklevel=2,
            )
        heads = (backbone.head, *(a.head for a in aux))
        self.frozen_modules_ = freeze(
            module, groups, n_frozen, heads, trained=tuple(a.branch for a in aux)
        )
        float32_grouped_convolutions(module)  # their bfloat16 backward is slow
        self.layer_groups_ = groups
        self.n_frozen_groups_ = n_frozen
        self.head_ = backbone.head
        self.aux_heads_ = heads[1:]
        self.preprocessing_ = _sized(backbone.preprocessing, self.image_size)
        self.backbone_name_ = backbone.name
        self.weights_id_ = backbone.weights_id
        if isinstance(self.model, torch.nn.Module):  # ids are reused: hash tensors
            self.weights_id_ = "module:" + module_digest(self.model)
        if self._device().type == "cuda":  # the layout of its input batches
            module.to(memory_format=torch.channels_last)
        self.module_ = module
        self.__dict__.pop("_split", None)  # of the previous network
        self.__dict__.pop("_lower", None)
        self.__dict__["_fresh_head"] = True  # trained alone first (get_split_datasets)
        return self

    def initialize_criterion(self):
        """skorch's criterion; ``label_smoothing`` goes to criteria that take it
        (``CrossEntropyLoss``) unless ``criterion__label_smoothing`` is set."""
        kwargs = self.get_params_for("criterion")
        if self.label_smoothing and _takes(self.criterion, "label_smoothing"):
            kwargs.setdefault("label_smoothing", self.label_smoothing)
        self.criterion_ = self.initialized_instance(self.criterion, kwargs)
        return self

    def initialize_optimizer(self, triggered_directly=None):
        """The optimizer over trainable parameters only (head and unfrozen groups)."""
        named = [(n, p) for n, p in self.module_.named_parameters() if p.requires_grad]
        args, kwargs = self.get_params_for_optimizer("optimizer", named)
        self.optimizer_ = self._make_optimizer(*args, **kwargs)
        return self

    def _make_optimizer(self, params, **kwargs):
        """``optimizer(params, **kwargs)``, fused where it can be: torch's
        single-kernel Adam/AdamW/SGD step is several times faster than the
        default on the CPU too (a head trained on stored outputs spends half
        its steps there). Where this torch cannot fuse (a device, an older
        release), the optimizer's own default is used."""
        params = list(params)
        if "fused" in kwargs or not _takes(self.optimizer, "fused"):
            return self.optimizer(params, **kwargs)
        try:
            return self.optimizer(params, fused=True, **kwargs)
        except (RuntimeError, ValueError, TypeError):
            return self.optimizer(params, **kwargs)

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
        schedule = LRSchedule(getattr(self, "lr_schedule", "cosine"))
        callbacks.insert(-1, ("lr_schedule", schedule))  # before print_log
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
        try:  # skorch reads the callbacks in set_params: invalid values wait for
            return int(self.early_stopping)  # fit's parameter check to report them
        except (TypeError, ValueError, OverflowError):
            return None

    # ------------------------------------------------------------- training
    def _set_training(self, training=True):
        """skorch's modes, then frozen groups back in eval mode (``bn``).

        skorch asks before every step; walking a network of hundreds of
        modules each time costs more than a step of a head on stored
        outputs, so modes already set (and not changed on the network's
        root since) are left as they are.
        """
        module = self.__dict__.get("module_")
        state = (training, id(module))
        if self.__dict__.get("_modes") == state and module.training == training:
            return
        super()._set_training(training)
        if training and getattr(self, "frozen_modules_", None) is not None:
            apply_train_modes(self.module_, self.frozen_modules_, self.bn)
        self.__dict__["_modes"] = state

    def get_dataset(self, X, y=None):
        """Images (validated like every sktransfer input); when predicting
        with a network that trained on frozen outputs, the frozen prefix's
        outputs, from the ``cache`` store where it has them (the rest of the
        network runs on those)."""
        if is_dataset(X):
            return X
        if not isinstance(X, Images):
            X = check_images(X, n_channels=getattr(self, "n_channels_in_", None))
        split = self._stored_split() if y is None else None
        if split is not None:
            views = self._eval_views()
            return StoredPrefixDataset(
                X,
                lambda images: self._prefix_outputs(
                    split, images, views, set_size=len(X)
                ),
            )
        return ImageDataset(X, y, draft=self._draft(), pin=self._pin())

    def _pin(self) -> bool:
        """Array batches go straight to page-locked memory (bound for CUDA)."""
        return self._device().type == "cuda"

    def _draft(self) -> int:
        # JPEGs decode in the DCT domain to at least the resize size; random
        # crops keep twice that, so a crop of a quarter of the area stays sharp.
        draft = self.preprocessing_.resize_size
        return 2 * draft if self._online_augmentation() is not None else draft

    def get_split_datasets(self, X, y=None, **fit_params):
        """The training data (frozen prefix outputs when they can be computed
        once: :meth:`_frozen_outputs`), split by ``train_split`` or, for early
        stopping, a stratified ``validation_fraction``; then a new head is
        fitted to the training part's embeddings (:meth:`_start_head`)."""
        weights = self.__dict__.get("_fit_weights")
        frozen = self._frozen_outputs(X)
        if frozen is not None:
            dataset = FeatureDataset(frozen.features, y, weights)
        else:
            dataset = ImageDataset(
                X, y, draft=self._draft(), weights=weights, pin=self._pin()
            )
        train, valid = self._split_dataset(dataset, y, **fit_params)
        if self.__dict__.pop("_fresh_head", False):
            self._start_head(train, X)
        return train, valid

    def _split_dataset(self, dataset, y, **fit_params):
        if self.train_split is not None:
            return self.train_split(dataset, y, **fit_params)
        if self._patience() is None:
            return dataset, None
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
        loader_class = isinstance(iterator, type) and issubclass(iterator, DataLoader)
        if loader_class:
            kwargs.setdefault("collate_fn", Collate(self.classes_))
        loader = iterator(dataset, **kwargs)
        device = self._device()
        if loader_class and device.type == "cuda":
            return DeviceLoader(loader, device, next_epoch=training)
        return loader

    # -------------------------------------------------- frozen prefix, views
    def _views(self) -> tuple[str, ...]:
        """The fixed views of each image computed through the frozen prefix."""
        return ("center", "flip") if self.augment in (True, "flip") else ("center",)

    def _eval_views(self) -> tuple[str, ...]:
        """The views whose predictions are averaged (``tta``)."""
        return self._views() if self.tta else ("center",)

    def _frozen_outputs(self, X):
        """The frozen groups' outputs for every image and view of ``X``, or
        ``None`` when the whole network must run every step (nothing frozen,
        random augmentation, ``cache_frozen=False``, an untraceable network).

        The frozen groups see the same views in every epoch: their outputs
        are computed once (or taken from the ``cache`` store, where an earlier
        fit or prediction left them) and only the rest of the network trains.
        """
        self.release_prefix()  # a previous fit's, if it was cut short
        self.prefix_cached_ = False
        split = self._plan_prefix(X)
        if split is None:
            return None
        try:
            frozen = self._prefix_outputs(split, X, self._views(), training=True)
        except NotSplittableError:
            self.__dict__["_split"] = None
            return None
        self.__dict__["_frozen_outputs"] = frozen
        self.__dict__["_image_keys"] = frozen.keys
        self.prefix_cached_ = True
        return frozen

    def _prefix_outputs(self, split, images, views, training=False, set_size=None):
        """:class:`~sktransfer._frozen.FrozenOutputs` of ``images`` (a batch of
        ``set_size`` images to predict, or all the training images)."""
        self._set_training(training)  # frozen groups run in eval mode either way
        device = self._device()
        dtype = self._autocast_dtype(device)
        store = _frozen.resolve_store(self.cache)
        lent = self.__dict__.get("_lent") if training else None
        keys = None
        if lent is not None:  # a head's twin: the outputs of the fit it serves
            store, keys = lent, lent.keys
        space, via = "", None
        if store is not None:
            space = self._store_space(self.n_frozen_groups_, split, dtype)

            def via() -> _frozen.Via | None:  # planned when rows are missing
                lower = self._lower_cut(split)
                if lower is None:
                    return None
                n_lower, lower_split, segment = lower
                lower_space = self._store_space(n_lower, lower_split, dtype)
                return _frozen.Via(lower_split, segment, lower_space)

        return _frozen.FrozenOutputs(
            split,
            images,
            self.preprocessing_,
            views,
            batch_size=self._batch_size(len(images)),
            device=device,
            dtype=dtype,
            store=store,
            space=space,
            via=via,
            keys=keys,
            set_size=set_size,
        )

    def _store_space(self, n_frozen: int, split: PrefixSplit, dtype) -> str:
        """The store namespace of the outputs after ``n_frozen`` groups."""
        return _frozen.namespace(
            model=self.backbone_name_,
            weights=self.weights_id_,
            hub=torch.hub.get_dir(),
            cut=(n_frozen, split.boundary),
            preprocessing=self.preprocessing_,
            autocast=str(dtype),
            pipeline=self._device().type,
        )

    def _lower_cut(self, split: PrefixSplit) -> tuple | None:
        """``(n, split, segment)`` of the cut that this cut's stored outputs
        are computed through (:class:`_frozen.Via`): one group nearer the
        input, so that a grid search over neighbouring cut points runs each
        image's frozen part once; for a head's twin, the cut of the fit it
        serves, whose outputs it is lent. ``None`` for the first group and
        cuts that cannot be split there."""
        if "_lower" not in self.__dict__:
            lent = self.__dict__.get("_lent")
            n = self.n_frozen_groups_ - 1 if lent is None else lent.cut
            self.__dict__["_lower"] = self._plan_cut(split, n)
        return self.__dict__["_lower"]

    def _plan_cut(self, split: PrefixSplit, n: int) -> tuple | None:
        if not 1 <= n < self.n_frozen_groups_:
            return None
        modules = dict(self.module_.named_modules())
        frozen = [e for group in self.layer_groups_[:n] for e in group if e in modules]
        lower = plan_split(
            self.module_,
            self.layer_groups_,
            frozen,
            heads=(self.head_,),
            structure=self._structure(),
        )
        piece = None if lower is None else segment(split, lower)
        return None if piece is None else (n, lower, piece)

    def on_train_end(self, net, **kwargs):
        """skorch's hook at the end of ``fit``: see :meth:`release_prefix`."""
        super().on_train_end(net, **kwargs)
        self.release_prefix()

    def release_prefix(self) -> None:
        """Free the frozen prefix's outputs of the last fit (and any temporary
        file); the ``cache`` store keeps its copies."""
        frozen = self.__dict__.pop("_frozen_outputs", None)
        if frozen is not None:
            frozen.release()

    def _prefix_eligible(self) -> bool:
        return (
            self.cache_frozen
            and self.augment in (False, True, "flip")
            and self.n_frozen_groups_ > 0
            and self.bn != "train"
            and not self.compile
        )

    def _plan_prefix(self, X) -> PrefixSplit | None:
        if not (isinstance(X, Images) and self._prefix_eligible()):
            return None
        return self._split_plan()

    def _split_plan(self) -> PrefixSplit | None:
        """The network split after its frozen groups (planned once per network)."""
        if "_split" not in self.__dict__:
            self.__dict__["_split"] = plan_split(
                self.module_,
                self.layer_groups_,
                self.frozen_modules_,
                heads=(self.head_, *self.aux_heads_),
                structure=self._structure(),
            )
        return self.__dict__["_split"]

    def _structure(self) -> tuple | None:
        """What determines a named network's traced graphs (reused by the next
        instance): its name, the family table's version, and its weights,
        which choose builder options that forward branches on (Inception v3's
        ``transform_input``); ``None`` for a module passed in."""
        if not isinstance(self.model, str):
            return None
        return (self.backbone_name_, self.weights_id_, _families.version())

    def _stored_split(self) -> PrefixSplit | None:
        """The split that predictions run through when the fit trained on
        frozen outputs: their prefix outputs come from the ``cache`` store
        where it holds them (a grid search's test folds were another
        candidate's training images)."""
        if not getattr(self, "initialized_", False):
            return None
        if not self._prefix_eligible():
            return None
        return self._split_plan()

    # ------------------------------------------------------------ new head
    def _batch_size(self, n: int) -> int:
        """``batch_size``, where skorch's ``-1`` means all ``n`` at once."""
        return n if self.batch_size == -1 else self.batch_size

    def _head_epochs(self, n: int) -> int:
        """``head_epochs``, ``"auto"`` resolved for ``n`` training images."""
        if self.head_epochs != "auto":
            return int(self.head_epochs)
        return head_epochs_for(n, self._batch_size(n))

    def _head_only(self) -> bool:
        """Whether the fit trains only the head, on frozen outputs computed once."""
        return (
            self.n_frozen_groups_ == len(self.layer_groups_)
            and self._prefix_eligible()
            and self._split_plan() is not None
        )

    def _start_head(self, dataset, X) -> None:
        """Start the new head on the training part: train it alone first
        (:meth:`_head_trained_alone`) unless the fit's epochs train only the
        head anyway, or ``head_epochs=0``; then only its standardisation is
        fitted, to the embeddings of every view (:mod:`sktransfer._head`)."""
        head = self.module_.get_submodule(self.head_)
        scaler = standardizer(head)
        base, indices = _base_of(dataset)
        if scaler is None or not isinstance(base, (FeatureDataset, ImageDataset)):
            return
        if self.head_epochs == 0 or self._head_only():
            scaler.fit(self._embeddings(head, base, indices, X).flatten(0, 1))
            return
        head.load_state_dict(self._head_trained_alone(base, indices, X))

    def _head_trained_alone(self, base, indices, X) -> dict:
        """The state of a new head trained alone on the frozen network's
        embeddings of the training part: that of the head-only fit
        (``frozen_layers="all"``) of this fit's settings for ``head_epochs``
        (a *twin*, fitted here on this fit's frozen outputs, unless
        :data:`~sktransfer._head.trained_heads` holds its head: a grid
        search's head-only candidate of the same fold and rate). Its random
        numbers are its own, so this fit draws the same ones either way."""
        y_index = base.y_index[indices]
        weights = None if base.weights is None else base.weights[indices]
        weights = training_weights(y_index, self.classes_, None, weights)
        params = {**self.get_params(deep=False), **self._twin_settings(len(indices))}
        frozen = self.__dict__.get("_frozen_outputs")
        keys = None if frozen is None else frozen.keys
        if keys is not None:
            keys = [keys[i] for i in indices]
            key = _head_key(type(self), params, keys, y_index, weights, self)
            state = trained_heads.get(key) if key is not None else None
            if state is not None:
                return state
        twin = type(self)(**params)  # only the settings are copied
        if frozen is not None:
            dtype = self._autocast_dtype(self._device())
            twin.__dict__["_lent"] = _frozen.Lent(
                frozen,
                indices,
                self.n_frozen_groups_,
                self._store_space(self.n_frozen_groups_, self._split, dtype),
                keys or [f"row-{i}" for i in indices],  # no store, no content keys
                _frozen.resolve_store(self.cache),
            )
        images = X if len(indices) == len(X) else X.subset(indices)
        twin.fit(images, self.classes_[y_index], sample_weight=weights)
        return twin.module_.get_submodule(twin.head_).state_dict()

    def _twin_settings(self, n: int) -> dict:
        """What a head-only twin changes (:meth:`_head_trained_alone`): it
        trains for ``head_epochs`` on ``n`` images, on stored embeddings of
        the views this fit trains on (none but the image when they are
        random), quietly and without this fit's callbacks or validation."""
        return dict(
            frozen_layers="all",
            max_epochs=self._head_epochs(n),
            augment=self.augment if self.augment in (True, False, "flip") else False,
            bn="frozen",
            cache_frozen=True,
            compile=False,
            class_weight=None,
            classes=self.classes_,
            early_stopping=None,
            train_split=None,
            callbacks=None,
            warm_start=False,
            verbose=0,
        )

    def _remember_head(self, y_index, weights) -> None:
        """Keep the head of a head-only fit from scratch that ran all its
        epochs in :data:`~sktransfer._head.trained_heads`, for fits whose
        head trains alone first with the same settings
        (:meth:`_head_trained_alone`)."""
        keys = self.__dict__.get("_image_keys")
        if self.cache is None or keys is None:  # no content keys
            return
        if not (self.prefix_cached_ and self._head_only()):
            return
        if len(self.history_) != self.max_epochs_:  # stopped early, interrupted
            return
        params = {**self.get_params(deep=False), "max_epochs": self.max_epochs_}
        key = _head_key(type(self), params, keys, y_index, weights, self)
        if key is not None:
            head = self.module_.get_submodule(self.head_)
            state = {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}
            trained_heads.put(key, state)

    def _embeddings(self, head, base, indices, X) -> torch.Tensor:
        """The inputs of ``head`` (eval mode) for ``indices`` under every view,
        ``(m, views, d)``: from the frozen outputs through the rest of the
        network, or from the images through all of it."""
        self._set_training(False)
        device = self._device()
        dtype = self._autocast_dtype(device)
        per_batch: list[list[torch.Tensor]] = []  # one tensor a view, per batch
        size = self._batch_size(len(indices))

        def tap(network, batch):
            with autocast(device, dtype):
                found = forward_tap(network, batch, head, take_input=True)
            return found.float().flatten(1).cpu()

        with torch.inference_mode():
            if isinstance(base, FeatureDataset):  # each batch of rows read once
                tail = self.__dict__["_split"].tail(False)
                for start in range(0, len(indices), size):
                    rows = torch.as_tensor(
                        np.asarray(base.features[indices[start : start + size]])
                    ).to(device)
                    per_batch.append(
                        [
                            tap(tail, channels_last(rows[:, view]))
                            for view in range(rows.shape[1])
                        ]
                    )
            else:  # each image decoded once for all its views
                batches = preprocessed_batches(
                    X.subset(indices), self.preprocessing_, size, device
                )
                with contextlib.closing(batches):
                    for batch in batches:
                        batch = batch.to(device)
                        per_batch.append(
                            [
                                tap(
                                    self.module_,
                                    channels_last(_frozen.VIEWS[v](batch)),
                                )
                                for v in self._views()
                            ]
                        )
        return torch.cat([torch.stack(views, dim=1) for views in per_batch])

    # ------------------------------------------------------------- forward
    def _online_augmentation(self):
        """What augments training images as they load (no prefix outputs)."""
        if self.augment is False:
            return None
        if self.augment is True:
            return "random"
        return self.augment  # "flip", "random" or a callable

    def infer(self, x, **fit_params):
        """One forward pass: preprocessing (augmented in training), then the
        network under autocast; outputs come back as float32.

        Precomputed frozen outputs run through the rest of the network only,
        one view of each image at random in training. In evaluation, with
        ``tta``, the class probabilities of the views are averaged (the output
        is their logarithm: its softmax is the average); otherwise the first
        view (the image as preprocessed) is used. On CUDA, images arrive as
        uint8 and are preprocessed and augmented on the device
        (:func:`prepare_on_device`); on the CPU, in the caller's thread.
        """
        training = self.module_.training
        device = self._device()
        x, _ = unpack(x)
        if isinstance(x, dict) and FEATURES_KEY in x:
            split = self.__dict__.get("_split")
            if split is None:
                raise RuntimeError("Precomputed features reached an unsplit network.")
            network = split.tail(training)
            features = x[FEATURES_KEY].to(device)
            if training:
                batches = [_one_view(features)]  # the only random draw here
            else:
                n_views = len(self._eval_views())
                batches = [channels_last(features[:, v]) for v in range(n_views)]
            fit_params = {}  # the tail is a traced graph: tensors only
        else:
            network = self.module_
            batch = self._prepared(x, training, device)
            batches = [batch]
            if not training and len(self._eval_views()) > 1:
                batches = [_frozen.VIEWS[v](batch) for v in self._eval_views()]
        with autocast(device, self._autocast_dtype(device)):
            outputs = [_as_float(network(batch, **fit_params)) for batch in batches]
        if len(outputs) == 1:
            return outputs[0]
        return _mean_probabilities(outputs)

    def _prepared(self, x, training: bool, device: torch.device) -> torch.Tensor:
        augment = self._online_augmentation() if training else None
        builtin = augment == "random"
        if augment == "flip":
            augment = flip_augmentation()
        if device.type == "cuda":  # True: the built-in crop and flip, on the device
            on_device = True if builtin else (augment or False)
            return prepare_on_device(x, self.preprocessing_, on_device, device)
        if builtin:
            augment = default_augmentation(self.preprocessing_)
        batch = prepare_batch(
            x,
            self.preprocessing_,
            augment,
            builtin=builtin,
        )
        return batch.to(device)

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
        target = to_device(target, main.device)  # no wait for the GPU
        _, weights = unpack(X)
        if weights is not None:
            weights = to_device(weights, main.device)
        loss = weighted_loss(self.criterion_, main, target, weights)
        if aux and training:
            loss = loss + self.aux_loss_weight * sum(
                weighted_loss(self.criterion_, a, target, weights) for a in aux
            )
        return loss

    def train_step_single(self, batch, **fit_params):
        """skorch's step; ``y_pred`` is the main head's output. With float16
        autocast the loss is scaled before ``backward`` (see :meth:`train_step`)."""
        self._set_training(True)
        Xi, yi = unpack_data(batch)
        y_pred = self.infer(Xi, **fit_params)
        loss = self.get_loss(y_pred, yi, X=Xi, training=True)
        scaler = self._grad_scaler()
        (loss if scaler is None else scaler.scale(loss)).backward()
        return {"loss": loss, "y_pred": self._outputs(y_pred)[0]}


def _install_head(module: torch.nn.Module, name: str, n_classes: int, net) -> None:
    """The new main head at ``name``: :func:`~sktransfer._head.new_head` in
    place of a ``Linear`` classifier, else (SqueezeNet's convolution) a new
    layer of the same kind."""
    parent, _, attr = name.rpartition(".")
    owner = module.get_submodule(parent) if parent else module
    old = getattr(owner, attr)
    if not isinstance(old, torch.nn.Linear):
        replace_head(module, name, n_classes, net.head_dropout)
        return
    head = new_head(old.in_features, n_classes, net.head_hidden, net.head_dropout)
    setattr(owner, attr, head)


def _one_view(features: torch.Tensor) -> torch.Tensor:
    """``(b, views, ...)`` -> ``(b, ...)``: a random view of each image (torch's
    generator, seeded by ``random_state``; drawn only when there are several,
    so that a single view consumes random numbers as images do)."""
    if features.shape[1] == 1:
        return channels_last(features[:, 0])
    pick = torch.randint(features.shape[1], (len(features),))
    features = features[torch.arange(len(features)), pick.to(features.device)]
    return channels_last(features)


def _mean_probabilities(logits: list[torch.Tensor]) -> torch.Tensor:
    """The log of the views' mean softmax: logits whose softmax is the mean."""
    log_probs = torch.stack([torch.log_softmax(out, dim=1) for out in logits])
    return torch.logsumexp(log_probs, dim=0) - math.log(len(logits))


def _head_key(cls, params, image_keys, y_index, weights, net) -> str | None:
    """What determines the head of a head-only fit of ``cls`` with
    ``params`` (``max_epochs`` resolved): the settings that training reads
    (``classes_``, the device and autocast dtype resolved by ``net``, a
    network of the same model; the weights in for ``class_weight``), the
    images' content keys, labels and weights; ``None`` when it is not
    reproducible from them (no integer ``random_state``, a module, callables
    or callbacks among the settings)."""
    build = _build_key(params["model"], params["weights"])
    seed = params["random_state"]
    if build is None or not isinstance(seed, Integral) or isinstance(seed, bool):
        return None
    kept = {
        name: value
        for name, value in params.items()
        if name not in _UNUSED_BY_HEAD_ONLY_FITS and not name.startswith("_")
    }
    kept["augment"] = "flip" if kept["augment"] is True else kept["augment"]
    if not _plain(kept):
        return None
    device = net._device()
    identity = (
        _identity(cls),
        build,
        sorted((name, _identity(value)) for name, value in kept.items()),
        device,
        net._autocast_dtype(device),
        params["max_epochs"],
        net.classes_.tolist(),
    )
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr(identity).encode())
    digest.update("\n".join(image_keys).encode())
    digest.update(np.asarray(y_index, dtype=np.int64).tobytes())
    if weights is not None:  # renormalised weights differ in the last bits
        digest.update(np.round(np.asarray(weights, np.float64), 9).tobytes())
    return digest.hexdigest()


def _identity(value):
    """``value``, with each class as its name and ``id`` (a class defined
    again under the same name is another class)."""
    if isinstance(value, type):
        return (value.__module__, value.__qualname__, id(value))
    if isinstance(value, (tuple, list)):
        return tuple(_identity(item) for item in value)
    if isinstance(value, dict):
        return tuple(sorted((repr(k), _identity(v)) for k, v in value.items()))
    return value


def _plain(value) -> bool:
    """Whether ``value``'s ``repr`` says all about it (numbers, strings,
    classes, devices, and containers of them)."""
    if value is None or isinstance(value, (str, Real, type, torch.device, torch.dtype)):
        return True
    if isinstance(value, (tuple, list)):
        return all(_plain(item) for item in value)
    if isinstance(value, dict):
        return all(_plain(k) and _plain(v) for k, v in value.items())
    return False


def _base_of(dataset) -> tuple[object, np.ndarray]:
    """A dataset, or a ``Subset`` of one (skorch's splits), and its indices."""
    if isinstance(dataset, Subset):
        return dataset.dataset, np.asarray(dataset.indices)
    return dataset, np.arange(len(dataset))


def _takes(component, name: str) -> bool:
    """Whether ``component`` (a class) accepts the keyword ``name``."""
    try:
        return name in inspect.signature(component).parameters
    except (TypeError, ValueError):
        return False


def _as_float(out):
    """Network outputs as float32 (autocast gives float16/bfloat16 logits)."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, tuple):
        return tuple(_as_float(o) for o in out)
    return out


def _sized(preprocessing, image_size):
    """The weights' preprocessing, or the same at another crop size."""
    if image_size is None:
        return preprocessing
    ratio = preprocessing.resize_size / preprocessing.crop_size
    return dataclasses.replace(
        preprocessing, crop_size=int(image_size), resize_size=round(image_size * ratio)
    )


def seed_from(random_state) -> int | None:
    if random_state is None:
        return None
    if isinstance(random_state, Integral):
        return int(random_state)
    return int(check_random_state(random_state).randint(2**31 - 1))


@contextlib.contextmanager
def forked_rng(seed: int | None, device):
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
