"""The new head of a fine-tuned network, in place of the ImageNet classifier.

The embedding is centred and scaled (the training images' statistics,
fixed), then goes through dropout and a hidden ``Linear`` + ReLU layer to
the class logits. On stored embeddings of five real photo sets it beat
standardised features + ``LogisticRegression`` of the same backbone by
0.6-3.6 points (docs/guide.md): the hidden layer combines features, dropout
keeps it from over-fitting small sets.
"""

from __future__ import annotations

import torch
from torch import nn

from .._families import owner_of, replace_head

HEAD_EPOCHS = 20  # epochs of a head trained alone, at least ...
HEAD_STEPS = 100  # ... and at least this many optimizer steps (small sets)


class Standardize(nn.Module):
    """``(x - mean) / scale``: the embedding centred per feature and scaled by
    one number, the spread of the training embeddings (fixed buffers).

    One scale, not one per feature: with few images, a feature that hardly
    varies would be blown up to the size of informative ones (its variation
    is noise), and with it the gradients into trained layers. One scale
    still brings every backbone's embeddings to one size (docs/benchmarks.md:
    as accurate as per-feature scaling on photo sets of thousands).
    """

    def __init__(self, n_features: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale

    @torch.no_grad()
    def fit(self, features: torch.Tensor):
        """Set the statistics from ``(m, n_features)`` embeddings, unweighted
        (a class weighed down to almost nothing stays in the scaled range)."""
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


def install_head(
    module: nn.Module, name: str, n_classes: int, hidden: int | None, dropout: float
) -> None:
    """The new main head at ``name``: :func:`new_head` in place of a ``Linear``
    classifier, else (SqueezeNet's convolution) a new layer of the same kind."""
    owner, attr = owner_of(module, name)
    old = getattr(owner, attr)
    if not isinstance(old, nn.Linear):
        replace_head(module, name, n_classes, dropout)
        return
    setattr(owner, attr, new_head(old.in_features, n_classes, hidden, dropout))


def standardizer(head: nn.Module) -> Standardize | None:
    """The head's :class:`Standardize` layer (``None`` for other heads)."""
    if isinstance(head, nn.Sequential) and isinstance(head[0], Standardize):
        return head[0]
    return None


def head_epochs_for(n: int, batch_size: int) -> int:
    """Epochs for a head trained alone on ``n`` embeddings: :data:`HEAD_EPOCHS`,
    or enough for :data:`HEAD_STEPS` steps on small sets.

    Examples
    --------
    >>> head_epochs_for(3000, 32), head_epochs_for(120, 32)
    (20, 25)
    """
    per_epoch = max(1, -(-n // batch_size))
    return max(HEAD_EPOCHS, -(-HEAD_STEPS // per_epoch))
