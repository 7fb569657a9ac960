"""Head replacement, layer freezing and the BatchNorm policy of FineTuneClassifier.

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

from ._backbones import _drop_aux

# Where an auxiliary classifier branch taps the main network: it is trained
# only when the group holding that layer is trained.
AUX_ATTACH = {"aux1": "inception4a", "aux2": "inception4d", "AuxLogits": "Mixed_6e"}
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


def _group_index(groups: list[list[str]], layer: str) -> int | None:
    for index, group in enumerate(groups):
        if any(layer == entry or layer.startswith(entry + ".") for entry in group):
            return index
    return None


def trained_aux_heads(
    aux_heads: tuple[str, ...], groups: list[list[str]], n_frozen: int
) -> tuple[str, ...]:
    """The auxiliary heads whose branch taps a group that is trained."""
    kept = []
    for head in aux_heads:
        branch = head.split(".")[0]
        index = _group_index(groups, AUX_ATTACH.get(branch, ""))
        if index is not None and index >= n_frozen:
            kept.append(head)
    return tuple(kept)


def drop_aux(module: nn.Module) -> None:
    """Remove GoogLeNet's / Inception v3's auxiliary branches."""
    _drop_aux(module)


def replace_head(
    module: nn.Module, name: str, n_classes: int, dropout: float = 0.0
) -> None:
    """Put a new, randomly initialised classifier for ``n_classes`` at ``name``."""
    parent_name, _, attr = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    old = getattr(parent, attr)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, n_classes)
    elif isinstance(old, nn.Conv2d):  # SqueezeNet's 1x1 convolution classifier
        new = nn.Conv2d(
            old.in_channels, n_classes, old.kernel_size, old.stride, old.padding
        )
    else:
        raise TypeError(
            f"Cannot replace the classifier {name!r} of type {type(old).__name__}: "
            "expected a torch.nn.Linear or torch.nn.Conv2d."
        )
    if dropout > 0:
        new = nn.Sequential(nn.Dropout(dropout), new)
    setattr(parent, attr, new)


def is_under(name: str, prefixes) -> bool:
    """Whether ``name`` is one of ``prefixes`` or inside one of them."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def freeze(
    module: nn.Module, groups: list[list[str]], n_frozen: int, heads: tuple[str, ...]
) -> list[str]:
    """Freeze the first ``n_frozen`` groups; return the frozen module names.

    Every other parameter is made trainable. When every group is frozen
    (``"all"``), parameters outside any group and outside the heads are frozen
    too, so that only the new heads train.
    """
    modules = dict(module.named_modules())
    frozen_entries = [entry for group in groups[:n_frozen] for entry in group]
    grouped = [entry for group in groups for entry in group]
    aux_branches = {
        head.split(".")[0] for head in heads if head.split(".")[0] in AUX_ATTACH
    }
    freeze_rest = n_frozen == len(groups)
    for name, param in module.named_parameters():
        if is_under(name, heads) or is_under(name, aux_branches):
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
