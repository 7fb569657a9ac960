"""Learning-rate schedules of FineTuneClassifier, as a skorch callback.

``"cosine"``: a linear warm-up over the first 10 % of the steps, then a cosine
decay to zero at the last step (timm's and fastai's default shape). The warm-up
keeps the first steps from wrecking pretrained weights with the gradients of a
head that is still wrong; the decay lets the weights settle instead of
hovering around a minimum at the full rate. ``"constant"``: every step at the
optimizer's own rates. Each parameter group keeps its own rate (head and
backbone), scaled by the same factor.
"""

from __future__ import annotations

import math

from skorch.callbacks import Callback

SCHEDULES = ("cosine", "constant")
WARMUP_FRACTION = 0.1


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
    """Set every parameter group's rate before each training step.

    The schedule spans the fit's epochs (``max_epochs_`` where the net
    resolves it, else ``max_epochs``) of the training iterator (early
    stopping may end it sooner); each ``fit`` or ``partial_fit`` starts it
    again.
    """

    def __init__(self, schedule: str = "cosine"):
        self.schedule = schedule

    def on_train_begin(self, net, **kwargs):
        self.base_lrs_ = [group["lr"] for group in net.optimizer_.param_groups]
        self.step_ = 0
        self.total_ = None

    def on_epoch_begin(self, net, dataset_train=None, **kwargs):
        if self.total_ is None and dataset_train is not None:
            per_epoch = len(net.get_iterator(dataset_train, training=True))
            epochs = getattr(net, "max_epochs_", net.max_epochs)
            self.total_ = max(1, per_epoch * epochs)

    def on_batch_begin(self, net, training=False, **kwargs):
        if not training or self.schedule == "constant" or self.total_ is None:
            return
        factor = cosine_factor(self.step_, self.total_)
        for group, base in zip(
            net.optimizer_.param_groups, self.base_lrs_, strict=True
        ):
            group["lr"] = base * factor
        self.step_ += 1

    def on_train_end(self, net, **kwargs):
        # the optimizer's rates as configured, for a later partial_fit
        for group, base in zip(
            net.optimizer_.param_groups, self.base_lrs_, strict=True
        ):
            group["lr"] = base
