"""Layer freezing and the BatchNorm policy of FineTuneClassifier.

``frozen_layers`` counts the layer groups of :func:`~sktransfer.layer_groups`
from the input. Frozen parameters get ``requires_grad=False`` and are never
given to the optimizer; frozen groups run in eval mode during training (fixed
BatchNorm statistics, no dropout) because skorch calls ``module.train()`` every
epoch and :func:`apply_train_modes` re-asserts it after each call.
"""

from __future__ import annotations

from numbers import Integral

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ._groups import is_under

BN_POLICIES = ("frozen", "eval", "train")


def resolve_frozen_layers(
    frozen_layers, groups: list[list[str]], model_name: str
) -> int:
    """``frozen_layers`` as a number of groups, or a clear error."""
    n_groups = len(groups)
    valid = (
        f"an int in 0..{n_groups} or 'all' for {model_name!r}, which has {n_groups} "
        f"layer groups (see sktransfer.layer_groups({model_name!r}))"
    )
    if isinstance(frozen_layers, str):
        if frozen_layers == "all":
            return n_groups
        raise ValueError(
            f"frozen_layers must be {valid}; got the string {frozen_layers!r}."
        )
    if isinstance(frozen_layers, bool) or not isinstance(frozen_layers, Integral):
        raise TypeError(
            f"frozen_layers must be {valid}; got {frozen_layers!r} of type "
            f"{type(frozen_layers).__name__}."
        )
    if not 0 <= frozen_layers <= n_groups:
        raise ValueError(f"frozen_layers must be {valid}; got {frozen_layers}.")
    return int(frozen_layers)


def freeze(
    module: nn.Module,
    groups: list[list[str]],
    n_frozen: int,
    heads: tuple[str, ...],
    trained: tuple[str, ...] = (),
) -> list[str]:
    """Freeze the first ``n_frozen`` groups; return the frozen module names.

    Every other parameter is made trainable; ``heads`` and the ``trained``
    modules (auxiliary branches) always are. When every group is frozen
    (``"all"``), parameters outside any group and outside those are frozen
    too, so that only the new heads train.
    """
    modules = dict(module.named_modules())
    frozen_entries = [entry for group in groups[:n_frozen] for entry in group]
    grouped = [entry for group in groups for entry in group]
    freeze_rest = n_frozen == len(groups)
    for name, param in module.named_parameters():
        if is_under(name, heads) or is_under(name, trained):
            frozen = False
        elif is_under(name, grouped):
            frozen = is_under(name, frozen_entries)
        else:
            frozen = freeze_rest
        param.requires_grad_(not frozen)
    frozen_modules = [entry for entry in frozen_entries if entry in modules]
    if freeze_rest:  # ungrouped BatchNorm layers keep their statistics too
        frozen_modules += [
            name
            for name, m in modules.items()
            if isinstance(m, _BatchNorm)
            and not is_under(name, grouped)
            and not any(p.requires_grad for p in m.parameters())
        ]
    return frozen_modules


def apply_train_modes(module: nn.Module, frozen_modules: list[str], bn: str) -> None:
    """After ``module.train()``: frozen groups back to eval mode, per ``bn``.

    ``"frozen"``: frozen groups run in eval mode (BatchNorm uses and keeps its
    running statistics); ``"eval"``: additionally every BatchNorm layer of the
    network stays in eval mode; ``"train"``: BatchNorm layers of frozen groups
    update their running statistics (their weights stay fixed).
    """
    for name in frozen_modules:
        frozen = module.get_submodule(name)
        frozen.eval()
        if bn == "train":
            for sub in frozen.modules():
                if isinstance(sub, _BatchNorm):
                    sub.train()
    if bn == "eval":
        for sub in module.modules():
            if isinstance(sub, _BatchNorm):
                sub.eval()
