"""The skorch mechanics behind FineTuneClassifier.

:class:`FineTuneNet` builds the network (new heads, frozen groups), runs it
from a phase's rows (:mod:`.cut`, :mod:`.rows`) or from images, picking the
same views from both, and trains with per-group learning rates, auxiliary
losses and the BatchNorm policy. Data comes from :mod:`.feeding`; devices,
mixed precision and pickling from :mod:`.device`.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import warnings
from numbers import Integral

import numpy as np
import torch
from skorch import NeuralNetClassifier
from skorch.dataset import unpack_data

from .._backbones import trainable_backbone
from .._device_transforms import to_device
from .._devices import autocast, float32_grouped_convolutions
from .._families import drop_aux, family_of, replace_head, trained_aux
from .._groups import is_under
from .._randomness import drawing_globally
from . import rows as _rows
from .cut import module_lock
from .data import (
    channels_last,
    channels_last_gradients,
    default_augmentation,
    prepare_batch,
    prepare_on_device,
    split_batch,
)
from .device import DeviceMixin
from .feeding import Feeding
from .freeze import fixed_modules, resolve_frozen_layers, set_train_modes, trainable
from .head import install_head
from .phases import HeadPhase, LRSchedule, PhaseEarlyStopping, PrintLog, phase_of
from .weighting import weighted_loss

_DEFAULT_PATIENCE = 5


class FineTuneNet(Feeding, DeviceMixin, NeuralNetClassifier):
    """skorch overrides of :class:`~sktransfer.FineTuneClassifier`."""

    def check_data(self, X, y=None):
        """Classes come from ``fit`` (labels are encoded before skorch sees them)."""

    # ---------------------------------------------------------- initialise
    def initialize_module(self):
        """Build the backbone, replace its head(s) (where the family table
        says) and freeze its first groups."""
        name = self.model if isinstance(self.model, str) else type(self.model).__name__
        with drawing_globally():  # a cached build draws nothing: nor does a new one
            backbone = trainable_backbone(
                self.model, self.weights, aux_logits=self.aux_loss_weight > 0
            )
        module, groups = backbone.module, backbone.groups
        n_frozen = resolve_frozen_layers(self.frozen_layers, groups, name)
        aux = trained_aux(backbone.aux_heads, groups, n_frozen)
        if backbone.aux_heads and not aux:
            drop_aux(module)  # frozen branches would train for nothing
        n_classes = len(self.classes_)
        install_head(
            module, backbone.head, n_classes, self.head_hidden, self.head_dropout
        )
        for head in aux:
            replace_head(module, head.head, n_classes)
        if aux and family_of(module).aux_note and self.weights is not None:
            warnings.warn(
                f"{family_of(module).aux_note} and are trained with the loss "
                f"weight aux_loss_weight={self.aux_loss_weight} (0 drops them).",
                UserWarning,
                stacklevel=2,
            )
        heads = (backbone.head, *(a.head for a in aux))
        branches = tuple(a.branch for a in aux)
        trains = trainable(module, groups, n_frozen, heads, branches)
        for param in module.parameters():  # frozen: no gradient, not optimised
            param.requires_grad_(id(param) in trains)
        float32_grouped_convolutions(module)  # their bfloat16 backward is slow
        channels_last_gradients(module)
        if self._device().type == "cuda":  # the layout of its input batches
            module.to(memory_format=torch.channels_last)
        self.module_ = module
        self.layer_groups_ = groups
        self.n_frozen_groups_ = n_frozen
        self.head_ = backbone.head
        self.aux_heads_ = heads[1:]
        self.frozen_modules_ = fixed_modules(
            module, lambda p: p.requires_grad, groups[:n_frozen]
        )
        self.preprocessing_ = backbone.preprocessing.at_size(self.image_size)
        self.backbone_name_ = backbone.name
        for key in ("_cuts", "_modes", "grad_scaler_"):  # of the previous network
            self.__dict__.pop(key, None)
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
        """The optimizer over trainable parameters only (head and unfrozen
        groups), fused where torch has a fused step for it (several times
        faster than the default on the CPU too)."""
        named = [(n, p) for n, p in self.module_.named_parameters() if p.requires_grad]
        (groups,), kwargs = self.get_params_for_optimizer("optimizer", named)
        self.optimizer_ = None
        if "fused" not in kwargs and _takes(self.optimizer, "fused"):
            try:
                self.optimizer_ = self.optimizer(groups, fused=True, **kwargs)
            except (RuntimeError, ValueError, TypeError):  # a device, an old torch
                pass
        if self.optimizer_ is None:
            self.optimizer_ = self.optimizer(groups, **kwargs)
        return self

    def get_params_for_optimizer(self, prefix, named_parameters):
        """skorch's parameter groups, the rest split into the head's (at
        ``lr``) and the backbone's (at ``lr * backbone_lr_ratio``)."""
        named_parameters = list(named_parameters)
        args, kwargs = super().get_params_for_optimizer(prefix, named_parameters)
        if prefix != "optimizer":
            return args, kwargs
        heads = (self.head_, *self.aux_heads_)
        head_ids = {id(p) for n, p in named_parameters if is_under(n, heads)}
        lr, groups = kwargs["lr"] * self.backbone_lr_ratio, []
        for group in args[0]:
            if set(group) != {"params"}:  # a user-configured group
                groups.append(group)
                continue
            head = [p for p in group["params"] if id(p) in head_ids]
            rest = [p for p in group["params"] if id(p) not in head_ids]
            if head:
                groups.append({"params": head})
            if rest:
                groups.append({"params": rest, "lr": lr})
        return (groups,), kwargs

    @property
    def _default_callbacks(self):
        callbacks = [*super()._default_callbacks[:-1], ("print_log", PrintLog())]
        # before print_log, in this order: the phase first names the epoch
        callbacks.insert(-1, ("head_phase", HeadPhase()))
        schedule = LRSchedule(getattr(self, "lr_schedule", "cosine"))
        callbacks.insert(-1, ("lr_schedule", schedule))
        patience = self._patience()
        if patience is not None:
            early = PhaseEarlyStopping(
                monitor="valid_loss", patience=patience, load_best=True
            )
            callbacks.insert(-1, ("early_stopping", early))
        return callbacks

    def _patience(self) -> int | None:
        stopping = self.early_stopping
        if isinstance(stopping, (bool, np.bool_)):
            return _DEFAULT_PATIENCE if stopping else None
        # skorch reads the callbacks in set_params: an invalid value gives
        # none here, and fit's parameter check reports it
        return int(stopping) if isinstance(stopping, Integral) else None

    # ------------------------------------------------------------ phases
    def _head_only(self) -> bool:
        return self.n_frozen_groups_ == len(self.layer_groups_)

    def _trains(self, phase: str):
        """Whether a parameter trains in ``phase``: the fit's (``"train"``),
        only the head (``"head"``), the top group and the head (``"lower"``,
        a grid search's neighbouring cut point)."""
        if phase == "train":
            return lambda p: p.requires_grad
        if phase == "head":
            ids = {id(p) for p in self.module_.get_submodule(self.head_).parameters()}
        else:
            groups = self.layer_groups_
            ids = trainable(self.module_, groups, len(groups) - 1, (self.head_,))
        return lambda p: id(p) in ids

    def _fixed(self, phase: str) -> list[str]:
        """The modules in eval mode while ``phase``'s parameters train."""
        if phase == "train":
            return self.frozen_modules_
        groups = self.layer_groups_[: -1 if phase == "lower" else None]
        return fixed_modules(self.module_, self._trains(phase), groups)

    def _set_training(self, training=True):
        """skorch's modes, then what stays fixed in this phase in eval mode
        (``bn``); modes already set are left as they are (skorch asks every
        step, and walking the network costs more than a head's step)."""
        module = self.__dict__.get("module_")
        phase = phase_of(self) if training else None
        state = (training, phase, self.bn, id(module))
        lock = contextlib.nullcontext() if module is None else module_lock(module)
        with lock:  # not while another thread plans a cut
            if self.__dict__.get("_modes") == state and module.training == training:
                return
            super()._set_training(training)
            if training:
                set_train_modes(self.module_, self._fixed(phase), self.bn)
            self.__dict__["_modes"] = state

    # ------------------------------------------------------------- forward
    def infer(self, x, **fit_params):
        """One forward pass under autocast, outputs as float32: a phase's rows
        through its cut, images through the whole network (augmented in
        training). Training takes one view of each image at random, drawn
        alike from rows and images; evaluation averages the views' class
        probabilities (returning their log, whose softmax is the average)."""
        training = self.module_.training
        device = self._device()
        phase, batch, _ = split_batch(x)
        n_views = len(self._views()) if training else len(self._eval_views())
        if phase is not None:
            network, fit_params = self._cut(phase), {}  # a cut's rows: tensors only
            batch = batch.to(device, non_blocking=True)
            views = [batch[:, v] for v in range(n_views)]
        else:
            network, batch = self.module_, self._prepared(batch, training, device)
            views = [_rows.VIEWS[v](batch) for v in self._views()[:n_views]]
        if training:
            views = [_one_view(views)]
        with module_lock(self.module_), autocast(device, self._autocast_dtype(device)):
            outputs = [_as_float(network(v, **fit_params)) for v in views]
        if len(outputs) == 1:
            return outputs[0]
        return _mean_probabilities(outputs)

    def _prepared(self, x, training: bool, device: torch.device) -> torch.Tensor:
        """Images -> preprocessed batch on ``device``; random crops or a
        user's augmentation in training (the views are picked by ``infer``)."""
        augment = self._augment() if training else False
        if augment == "flip" or phase_of(self) == "head":
            augment = False  # fixed views (picked by infer), as from rows
        if device.type == "cuda":  # "random": the built-in crops, on the device
            on_device = True if augment == "random" else augment
            return prepare_on_device(x, self.preprocessing_, on_device, device)
        builtin = augment == "random"
        if builtin:
            augment = default_augmentation(self.preprocessing_)
        batch = prepare_batch(x, self.preprocessing_, augment or None, builtin=builtin)
        return batch.to(device)

    def _outputs(self, y_pred):
        """``(main, [aux, ...])`` from the network's output."""
        if isinstance(y_pred, tuple):
            aux = [o for o in y_pred[1:] if o is not None] if self.aux_heads_ else []
            return y_pred[0], aux
        return y_pred, []

    def get_loss(self, y_pred, y_true, X=None, training=False):
        """Loss of the main head, plus ``aux_loss_weight`` times the aux heads'
        (while the unfrozen groups train)."""
        main, aux = self._outputs(y_pred)
        if isinstance(y_true, torch.Tensor):  # a custom collate_fn: class indices
            target = y_true.long()
        else:
            target = torch.from_numpy(self._encode(np.asarray(y_true)))
        target = to_device(target, main.device)  # no wait for the GPU
        _, _, weights = split_batch(X)
        if weights is not None:
            weights = to_device(weights, main.device)
        loss = weighted_loss(self.criterion_, main, target, weights)
        if aux and training and phase_of(self) == "train":
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
        if phase_of(self) == "head" and split_batch(Xi)[0] is None:
            trains = self._trains("head")  # the whole network ran: the head trains
            for param in self.module_.parameters():
                if not trains(param):
                    param.grad = None
        return {"loss": loss, "y_pred": self._outputs(y_pred)[0]}

    def _batch_size(self, n: int) -> int:
        """``batch_size``, where skorch's ``-1`` means all ``n`` at once."""
        return n if self.batch_size == -1 else self.batch_size


def _one_view(views: list[torch.Tensor]) -> torch.Tensor:
    """A view of each image, drawn at random where there are several (one
    view draws no random numbers)."""
    if len(views) == 1:
        return views[0]
    pick = torch.randint(len(views), (len(views[0]),)).to(views[0].device)
    stacked = torch.stack(views, dim=1)
    return channels_last(stacked[torch.arange(len(pick), device=pick.device), pick])


def _mean_probabilities(logits: list[torch.Tensor]) -> torch.Tensor:
    """The log of the views' mean softmax: logits whose softmax is the mean."""
    log_probs = torch.stack([torch.log_softmax(out, dim=1) for out in logits])
    return torch.logsumexp(log_probs, dim=0) - math.log(len(logits))


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
