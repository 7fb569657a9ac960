"""Layer freezing and the modes a network trains in.

``frozen_layers`` counts :func:`~sktransfer.layer_groups` from the input.
Frozen parameters get ``requires_grad=False`` and no optimizer. In training,
every module whose parameters all stay fixed runs in eval mode (fixed
BatchNorm statistics, no dropout or stochastic depth inside it).
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Integral

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .._groups import is_under

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


def trainable(
    module: nn.Module,
    groups: list[list[str]],
    n_frozen: int,
    heads: tuple[str, ...],
    trained: tuple[str, ...] = (),
) -> set[int]:
    """The ids of the parameters that train when the first ``n_frozen``
    groups are frozen: ``heads`` and the ``trained`` modules (auxiliary
    branches) always, the other groups' parameters, and those outside any
    group unless every group is frozen (``"all"``: only the heads train)."""
    frozen_entries = {entry for group in groups[:n_frozen] for entry in group}
    grouped = {entry for group in groups for entry in group}
    freeze_rest = n_frozen == len(groups)
    ids = set()
    for name, param in module.named_parameters():
        if is_under(name, heads) or is_under(name, trained):
            trains = True
        elif is_under(name, grouped):
            trains = not is_under(name, frozen_entries)
        else:
            trains = not freeze_rest
        if trains:
            ids.add(id(param))
    return ids


def fixed_modules(
    module: nn.Module,
    trains: Callable[[nn.Parameter], bool],
    frozen_groups: list[list[str]] = (),
) -> list[str]:
    """What runs in eval mode in training: the modules of ``frozen_groups``
    (their dropout too), and the outermost modules that hold parameters of
    which none trains (a block of a frozen group's layers)."""
    modules = dict(module.named_modules())
    names = [entry for group in frozen_groups for entry in group if entry in modules]
    for name, sub in modules.items():
        if is_under(name, names):
            continue
        params = list(sub.parameters())
        if params and not any(trains(p) for p in params):
            names.append(name)
    return names


def set_train_modes(module: nn.Module, fixed: list[str], bn: str) -> None:
    """``module.train()``, then the ``fixed`` modules in eval mode; ``bn``:
    ``"frozen"`` as is, ``"eval"`` every BatchNorm layer in eval mode too,
    ``"train"`` the fixed modules' BatchNorm layers in training mode."""
    module.train()
    for name in fixed:
        sub = module.get_submodule(name)
        sub.eval()
        if bn == "train":
            for layer in sub.modules():
                if isinstance(layer, _BatchNorm):
                    layer.train()
    if bn == "eval":
        for layer in module.modules():
            if isinstance(layer, _BatchNorm):
                layer.eval()


def batch_norm_trains(module: nn.Module, fixed: list[str], bn: str) -> bool:
    """Whether :func:`set_train_modes` leaves a BatchNorm layer of ``module``
    in training mode."""
    kept = fixed if bn == "frozen" else []  # "train": the fixed ones' train too
    return bn != "eval" and any(
        isinstance(m, _BatchNorm) and not is_under(name, kept)
        for name, m in module.named_modules()
    )
