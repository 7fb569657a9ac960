"""The new head of a fine-tuned network, and training it first, alone.

The head replaces the 1000-way ImageNet classifier: the embedding is
centred and scaled (statistics of the training images, fixed), then goes through
dropout and a hidden ``Linear`` + ReLU layer (``hidden`` units; ``None`` for a
linear head) to the class logits. On stored embeddings of five real photo
sets this head beat standardised features + ``LogisticRegression`` of the
same backbone by 0.6-3.6 points (docs/guide.md): the hidden layer can
combine features the linear model cannot, and dropout keeps it from
over-fitting small sets.

A new head is trained to convergence on the frozen embeddings before any
pretrained layer trains (:func:`train_head`): its first gradients, of a head
that is still wrong, would otherwise distort the pretrained layers they flow
into (Kumar et al., 2022, "Fine-Tuning can Distort Pretrained Features";
fastai's ``fine_tune`` trains the head first for the same reason). The
embeddings are computed once, so this costs little.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._schedule import cosine_factor
from ._weighting import weighted_loss

HEAD_EPOCHS = 20  # epochs of a head trained alone, at least ...
HEAD_STEPS = 100  # ... and at least this many optimizer steps (small sets)


class Standardize(nn.Module):
    """``(x - mean) / scale``: the embedding centred per feature and scaled by
    one number, the spread of the training embeddings (fixed buffers).

    One scale for all features, not one each: with few images, a feature
    that hardly varies would be blown up to the size of the informative ones
    (its variation is noise), and with it the gradients that flow back into
    trained layers. One scale still makes every backbone's embeddings the
    same size for the head, whatever their units (docs/benchmarks.md: as
    accurate as per-feature scaling on photo sets of thousands).
    """

    def __init__(self, n_features: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale

    @torch.no_grad()
    def fit(self, features: torch.Tensor):
        """Set the statistics from ``(m, n_features)`` embeddings.

        Unweighted even when samples are weighted: the statistics only
        condition the head's input, and a class weighed down to almost
        nothing must not leave its images outside the scaled range.
        """
        features = features.double()
        mean = features.mean(0)
        spread = float((features - mean).square().mean().sqrt())
        self.mean.copy_(mean.float())
        self.scale.fill_(spread if spread > 0 else 1.0)  # all constant: as is
        return self


def new_head(
    n_features: int, n_classes: int, hidden: int | None, dropout: float
) -> nn.Sequential:
    """``Standardize -> [Dropout] -> (Linear -> ReLU -> [Dropout]) -> Linear``."""
    layers: list[nn.Module] = [Standardize(n_features)]
    width = n_features
    if hidden:
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
        width = hidden
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


def head_epochs_for(n: int, batch_size: int) -> int:
    """Epochs for a head trained alone on ``n`` embeddings: :data:`HEAD_EPOCHS`,
    or more where that would be fewer than :data:`HEAD_STEPS` steps (a small
    set gives few steps per epoch; cached embeddings make epochs cheap).

    Examples
    --------
    >>> head_epochs_for(3000, 32), head_epochs_for(120, 32)
    (20, 25)
    """
    per_epoch = max(1, -(-n // batch_size))
    return max(HEAD_EPOCHS, -(-HEAD_STEPS // per_epoch))


def standardizer(head: nn.Module) -> Standardize | None:
    """The head's :class:`Standardize` layer (``None`` for other heads)."""
    if isinstance(head, nn.Sequential) and isinstance(head[0], Standardize):
        return head[0]
    return None


def train_head(
    head: nn.Module,
    features: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor | None,
    *,
    make_optimizer,
    criterion: nn.Module,
    epochs: int,
    batch_size: int,
    schedule: str,
) -> None:
    """Train ``head`` alone on embeddings ``(n, views, d)`` (one random view of
    each image per epoch, like the full fit), under the fit's own optimizer,
    criterion and learning-rate schedule."""
    n, n_views = features.shape[:2]
    optimizer = make_optimizer(head.parameters())
    base = [group["lr"] for group in optimizer.param_groups]
    per_epoch = -(-n // batch_size)
    total = max(1, epochs * per_epoch)
    head.train()
    for step in range(total):
        if step % per_epoch == 0:
            order = torch.randperm(n)
        index = order[(step % per_epoch) * batch_size :][:batch_size]
        if schedule == "cosine":
            for group, lr in zip(optimizer.param_groups, base, strict=True):
                group["lr"] = lr * cosine_factor(step, total)
        if n_views > 1:
            batch = features[index, torch.randint(n_views, (len(index),))]
        else:
            batch = features[index, 0]
        loss = weighted_loss(
            criterion,
            head(batch),
            target[index],
            None if weights is None else weights[index],
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def as_tensor(array) -> torch.Tensor:
    """A float32 tensor of an array or tensor."""
    return torch.as_tensor(np.asarray(array), dtype=torch.float32)
