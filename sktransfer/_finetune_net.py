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
import math
import warnings
from numbers import Integral

import numpy as np
import torch
from sklearn.utils import check_random_state
from skorch import NeuralNetClassifier
from skorch.callbacks import EarlyStopping
from skorch.dataset import ValidSplit, unpack_data
from skorch.utils import is_dataset
from torch.utils.data import DataLoader

from ._backbones import build_backbone
from ._device_transforms import to_device
from ._devices import autocast
from ._families import drop_aux, family_of, replace_head, trained_aux
from ._finetune_data import (
    FEATURES_KEY,
    Collate,
    DeviceLoader,
    FeatureDataset,
    ImageDataset,
    PrefixFeatures,
    default_augmentation,
    prepare_batch,
    prepare_on_device,
)
from ._finetune_device import DeviceMixin
from ._freeze import apply_train_modes, freeze, resolve_frozen_layers
from ._groups import is_under
from ._images import Images, check_images
from ._pipeline import preprocessed_batches
from ._prefix import ComputedPrefix, NotSplittableError, plan_split

_DEFAULT_PATIENCE = 5


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
        backbone = build_backbone(self.model, self.weights, aux_logits=wants_aux)
        module, groups = backbone.module, backbone.groups
        n_frozen = resolve_frozen_layers(self.frozen_layers, groups, name)
        family = family_of(module)
        aux = trained_aux(backbone.aux_heads, groups, n_frozen)
        if backbone.aux_heads and not aux:
            drop_aux(module)  # frozen branches would train for nothing
        replace_head(module, backbone.head, len(classes), self.head_dropout)
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
        self.layer_groups_ = groups
        self.n_frozen_groups_ = n_frozen
        self.head_ = backbone.head
        self.aux_heads_ = heads[1:]
        self.preprocessing_ = _sized(backbone.preprocessing, self.image_size)
        self.backbone_name_ = backbone.name
        self.weights_id_ = backbone.weights_id
        if self._device().type == "cuda":  # the layout of its input batches
            module.to(memory_format=torch.channels_last)
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
        try:  # skorch reads the callbacks in set_params: invalid values wait for
            return int(self.early_stopping)  # fit's parameter check to report them
        except (TypeError, ValueError, OverflowError):
            return None

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
        # JPEGs decode in the DCT domain to at least the resize size; random
        # crops keep twice that, so a crop of a quarter of the area stays sharp.
        draft = self.preprocessing_.resize_size
        draft = 2 * draft if self.augment is True else draft
        return ImageDataset(X, y, draft=draft, pin=self._device().type == "cuda")

    def get_split_datasets(self, X, y=None, **fit_params):
        """skorch's split, or a stratified ``validation_fraction`` (early
        stopping); of the frozen prefix's outputs when they can be computed
        once (:meth:`_with_frozen_prefix`)."""
        X = self._with_frozen_prefix(X)
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
        loader_class = isinstance(iterator, type) and issubclass(iterator, DataLoader)
        if loader_class:
            kwargs.setdefault("collate_fn", Collate(self.classes_))
        loader = iterator(dataset, **kwargs)
        device = self._device()
        if loader_class and device.type == "cuda":
            return DeviceLoader(loader, device, next_epoch=training)
        return loader

    def _with_frozen_prefix(self, X):
        """``X``, or the frozen groups' outputs for ``X``, computed once for
        this fit: with ``augment=False`` the frozen prefix sees the same
        images every epoch, so only the rest of the network needs to run."""
        self.release_prefix()  # a previous fit's, if it was cut short
        self.prefix_cached_ = False
        split = self._plan_prefix(X)
        if split is None:
            return X
        self._set_training(True)  # the frozen groups' training-time mode
        device = self._device()
        batches = preprocessed_batches(X, self.preprocessing_, self.batch_size, device)
        dtype = self._autocast_dtype(device)
        try:
            with contextlib.closing(batches):
                prefix = ComputedPrefix(split, batches, len(X), device, dtype)
        except NotSplittableError:
            return X
        self.__dict__["_frozen_outputs"] = prefix
        self.prefix_cached_ = True
        self.prefix_split_ = split
        return PrefixFeatures(prefix.features)

    def on_train_end(self, net, **kwargs):
        """skorch's hook at the end of ``fit``: see :meth:`release_prefix`."""
        super().on_train_end(net, **kwargs)
        self.release_prefix()

    def release_prefix(self) -> None:
        """Free the frozen prefix's outputs (and any temporary file)."""
        prefix = self.__dict__.pop("_frozen_outputs", None)
        if prefix is not None:
            prefix.release()
        self.prefix_split_ = None

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
        """One forward pass: preprocessing (augmented in training), then the
        network under autocast; outputs come back as float32.

        On CUDA, images arrive as uint8 and are preprocessed and augmented on
        the device (:func:`prepare_on_device`); on the CPU, in the caller's
        thread as before (uint8 resizing is fastest there).
        """
        training = self.module_.training
        device = self._device()
        if isinstance(x, dict) and FEATURES_KEY in x:
            split = getattr(self, "prefix_split_", None)
            if split is None:
                raise RuntimeError(
                    "Precomputed features reached the network outside fit."
                )
            network, batch = split.tail(training), x[FEATURES_KEY].to(device)
            fit_params = {}  # the tail is a traced graph: tensors only
        else:
            network, batch = self.module_, self._prepared(x, training, device)
        with autocast(device, self._autocast_dtype(device)):
            out = network(batch, **fit_params)
        return _as_float(out)

    def _prepared(self, x, training: bool, device: torch.device) -> torch.Tensor:
        augment = training and self.augment is not False
        if device.type == "cuda":
            batch = prepare_on_device(
                x, self.preprocessing_, self.augment if augment else False, device
            )
            return batch
        custom = self.augment if augment else None
        if custom is True:
            custom = default_augmentation(self.preprocessing_)
        batch = prepare_batch(
            x, self.preprocessing_, custom, builtin=self.augment is True
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
        loss = self.criterion_(main, target)
        if aux and training:
            loss = loss + self.aux_loss_weight * sum(
                self.criterion_(a, target) for a in aux
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
