"""The phases of a fit, as skorch callbacks on the net.

fastai's ``fine_tune`` in skorch's terms: a new head trains alone for
``head_epochs`` (:class:`HeadPhase`), so that its first, wrong gradients do
not distort pretrained layers (Kumar et al., 2022, "Fine-Tuning can Distort
Pretrained Features"), then the unfrozen groups train with it. Each epoch's
row of ``history_`` names its ``phase`` (``"head"`` or ``"train"``); the
learning-rate schedule and early stopping follow the phases.
"""

from __future__ import annotations

import math

from skorch import callbacks
from skorch.callbacks import Callback, EarlyStopping, LRScheduler
from torch.utils.data import Subset

from .data import FitData

SCHEDULES = ("cosine", "constant")
WARMUP_FRACTION = 0.1


def phase_of(net) -> str:
    """The running epoch's phase: ``"head"`` or ``"train"`` (also when no
    :class:`HeadPhase` records one)."""
    history = net.__dict__.get("history_")
    return history[-1].get("phase", "train") if history else "train"


class HeadPhase(Callback):
    """Train only the new head in the fit's first ``net.head_epochs_`` epochs
    (from the rows of the cut before it, or the whole network where there is
    none); ``callbacks__head_phase=None`` or ``head_epochs=0`` skips them."""

    def on_train_begin(self, net, **kwargs):
        self.start_ = len(net.history)

    def on_epoch_begin(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        epoch = len(net.history) - 1 - self.start_
        phase = "head" if epoch < getattr(net, "head_epochs_", 0) else "train"
        net.history.record("phase", phase)
        for dataset in (dataset_train, dataset_valid):
            while isinstance(dataset, Subset):  # skorch's split
                dataset = dataset.dataset
            if isinstance(dataset, FitData):
                dataset.phase = phase


def cosine_factor(step: int, total: int, warmup_fraction: float = WARMUP_FRACTION):
    """The multiplier of the base rate at ``step`` (0-based) of ``total`` steps.

    Examples
    --------
    >>> [round(cosine_factor(t, 10), 3) for t in range(10)]
    [1.0, 0.97, 0.883, 0.75, 0.587, 0.413, 0.25, 0.117, 0.03, 0.0]
    >>> [round(cosine_factor(t, 20), 3) for t in (0, 1, 2)]
    [0.5, 1.0, 0.992]
    """
    warmup = max(1, round(warmup_fraction * total))
    if step < warmup:
        return (step + 1) / warmup
    decay = max(1, total - warmup)
    progress = min(1.0, (step - warmup + 1) / decay)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class LRSchedule(Callback):
    """Scale every parameter group's rate before each training step.

    ``"cosine"``: a linear warm-up over the first 10 % of a phase's steps,
    then a cosine decay to zero at its last (timm's and fastai's shape),
    again in each phase; ``"constant"``: the optimizer's own rates. A user's
    :class:`skorch.callbacks.LRScheduler` takes over: this one then idles.
    """

    def __init__(self, schedule: str = "cosine"):
        self.schedule = schedule

    def on_train_begin(self, net, **kwargs):
        self.base_lrs_ = [group["lr"] for group in net.optimizer_.param_groups]
        self.active_ = self.schedule != "constant" and not any(
            isinstance(callback, LRScheduler) for _, callback in net.callbacks_
        )
        self.phase_ = None

    def on_epoch_begin(self, net, dataset_train=None, **kwargs):
        phase = phase_of(net)
        if phase == self.phase_ or dataset_train is None:
            return
        self.phase_, self.step_ = phase, 0
        per_epoch = len(net.get_iterator(dataset_train, training=True))
        epochs = net.head_epochs_ if phase == "head" else net.max_epochs_
        self.total_ = max(1, per_epoch * epochs)

    def on_batch_begin(self, net, training=False, **kwargs):
        if not (training and self.active_ and self.phase_ is not None):
            return
        self._scale(net, cosine_factor(self.step_, self.total_))
        self.step_ += 1

    def on_train_end(self, net, **kwargs):
        if self.active_:  # the rates as configured, for a later partial_fit
            self._scale(net, 1.0)

    def _scale(self, net, factor: float) -> None:
        groups = net.optimizer_.param_groups
        for group, base in zip(groups, self.base_lrs_, strict=True):
            group["lr"] = base * factor


class PrintLog(callbacks.PrintLog):
    """skorch's epoch table, made only when it is shown (``verbose``, or a
    sink of the user's): making it for every epoch of a quiet fit cost
    about as much as a step of a head on stored rows."""

    def on_epoch_end(self, net, **kwargs):
        if net.verbose or self.sink is not print:
            super().on_epoch_end(net, **kwargs)


class PhaseEarlyStopping(EarlyStopping):
    """skorch's :class:`~skorch.callbacks.EarlyStopping` over the ``"train"``
    phase's epochs only: the head's neither stop the fit nor count as best."""

    def on_epoch_end(self, net, **kwargs):
        if phase_of(net) == "train":
            super().on_epoch_end(net, **kwargs)
