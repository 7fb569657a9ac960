"""The backbone registry: which names are known, building them, and sharing builds.

A :class:`~sktransfer._builders.Backbone` is everything the estimators need to
know about a network: the module, its preprocessing, the name of its 1000-way
classifier (the *head*: the default embedding is its input), auxiliary heads,
layer groups and category names. The builders that make one live in
:mod:`sktransfer._builders`; what makes a family special, in the family table
(:mod:`sktransfer._families`).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from . import _builders, _families, _weights
from ._builders import EFFICIENTNET_LITE0, TIMM_PREFIX, Backbone
from ._lru import LRU
from ._suggest import did_you_mean
from .exceptions import UnknownBackboneError


@functools.cache
def _torchvision_names() -> frozenset[str]:
    import torchvision.models as tvm
    from torchvision.models import list_models

    return frozenset(list_models(module=tvm))


def list_backbones(*, offline: bool = False) -> list[str]:
    """Names accepted as ``model``.

    Parameters
    ----------
    offline : bool, default=False
        Only the names whose pretrained ``"DEFAULT"`` weights are available
        without network access (in ``$TORCH_HOME/hub/checkpoints`` or shipped by
        an installed package).

    Returns
    -------
    names : list of str
        Every torchvision classification model, ``"efficientnet_lite0"`` and
        the names that registered families add, sorted. Any timm model is also
        accepted as ``"timm/<name>"``.

    Examples
    --------
    >>> from sktransfer import list_backbones
    >>> "resnet18" in list_backbones()
    True
    """
    names = sorted(
        _torchvision_names() | {EFFICIENTNET_LITE0} | set(_families.added_names())
    )
    if offline:
        names = [name for name in names if weights_available(name)]
    return names


def weights_available(name: str) -> bool:
    """Whether the ``"DEFAULT"`` weights of backbone ``name`` can be loaded offline."""
    if name == EFFICIENTNET_LITE0:
        return _builders.lite0_weights_file() is not None
    if name in _torchvision_names():
        from torchvision.models import get_model_weights

        return _weights.cached_weights_path(get_model_weights(name).DEFAULT).is_file()
    return False


def check_model(model) -> None:
    """Raise :class:`UnknownBackboneError` unless ``model`` names a backbone."""
    if isinstance(model, nn.Module):
        return
    if not isinstance(model, str):
        raise UnknownBackboneError(
            "model must be a backbone name or a torch.nn.Module, got "
            f"{type(model).__name__}."
        )
    if model.startswith(TIMM_PREFIX):
        import timm

        arch = model[len(TIMM_PREFIX) :]
        if not timm.is_model(arch):
            hint = did_you_mean(arch, timm.list_models())
            raise UnknownBackboneError(f"Unknown timm model {arch!r}.{hint}")
        return
    known = _torchvision_names() | {EFFICIENTNET_LITE0}
    if model not in known and model not in _families.added_names():
        hint = did_you_mean(model, list_backbones())
        raise UnknownBackboneError(
            f"Unknown backbone {model!r}.{hint} Known backbones: list_backbones(); "
            "any timm model as 'timm/<name>'; or pass a torch.nn.Module."
        )


def on_cpu(backbone: Backbone | None) -> Backbone | None:
    """``backbone`` itself when its module is on the CPU, else a copy that is:
    pickles always hold CPU tensors, so they load on machines without a GPU."""
    if backbone is None:
        return None
    first = next(backbone.module.parameters(), None)
    if first is None or first.device.type == "cpu":
        return backbone
    cpu = copy.copy(backbone)
    cpu.module = copy.deepcopy(backbone.module).cpu()
    return cpu


# The last backbone built, kept for reuse: one can weigh hundreds of MB.
_built: LRU[Backbone] = LRU(max_items=1)


def cached_backbone(model, weights="DEFAULT", *, aux_logits: bool = False) -> Backbone:
    """:func:`build_backbone` for inference, reusing the last build of the same
    (model, weights).

    ``GridSearchCV`` fits one clone per candidate and fold: they share one
    read-only module instead of rebuilding, re-reading or copying it (layer
    taps are thread-safe, see :func:`~sktransfer._tap.forward_tap`). Whoever
    moves or trains the module copies it first (the extractor does before a
    device change; see :func:`trainable_backbone`). Modules passed as
    ``model`` are always built afresh.
    """
    key = _build_key(model, weights)
    if key is None:
        return build_backbone(model, weights, aux_logits=aux_logits)
    shared = _built.get_or_create(
        (*key, aux_logits),
        lambda: _build_aside(model, weights, aux_logits),
    )
    return copy.copy(shared)  # a Backbone of its own, around the shared module


def _build_aside(model, weights, aux_logits: bool) -> Backbone:
    """:func:`build_backbone` without drawing from the caller's random numbers
    (some builders initialise layers before loading weights), so that a
    seeded fit draws the same whether the build was cached or not."""
    with torch.random.fork_rng(devices=[]):
        return build_backbone(model, weights, aux_logits=aux_logits)


def trainable_backbone(
    model, weights="DEFAULT", *, aux_logits: bool = False
) -> Backbone:
    """A backbone whose module is the caller's own, to train: a copy of the
    last build of the same (model, weights) (:func:`cached_backbone`), which
    costs a third to a half of building Lite0 again, weights file and all
    (``benchmarks/bench_fit_overheads.py``); the fits of a grid search each
    take one."""
    backbone = cached_backbone(model, weights, aux_logits=aux_logits)
    if _build_key(model, weights) is not None:  # else built afresh for us
        backbone.module = copy.deepcopy(backbone.module)
    return backbone


def _build_key(model, weights) -> tuple | None:
    """What identifies a build: model, weights (file identity, TORCH_HOME) and
    the family table's version (a new entry may build the name differently)."""
    if not isinstance(model, str):
        return None
    key: tuple = (model, _families.version())
    if _weights.is_weights_path(weights):
        path = Path(weights).expanduser()
        if not path.is_file():
            return None  # let build_backbone raise its error
        return (*key, *_weights.file_identity(path))
    if weights is not None and not isinstance(weights, str):
        weights = str(weights)  # an enum member
    if weights == "DEFAULT" or (weights and model in _torchvision_names()):
        return (*key, weights, torch.hub.get_dir())  # TORCH_HOME may change
    return (*key, weights)


def build_backbone(model, weights="DEFAULT", *, aux_logits: bool = False) -> Backbone:
    """Build ``model`` with ``weights``; see :class:`~sktransfer.CNNFeatureExtractor`.

    ``aux_logits`` keeps the auxiliary classifiers of families that have them
    (GoogLeNet, Inception v3: fine-tuning); feature extraction drops them.
    """
    check_model(model)
    family = _families.family_named(model) if isinstance(model, str) else None
    if isinstance(model, nn.Module):
        backbone = _builders.from_module(model, weights)
    elif model == EFFICIENTNET_LITE0:
        backbone = _builders.from_lite0(weights)
    elif model.startswith(TIMM_PREFIX):
        backbone = _builders.from_timm(model[len(TIMM_PREFIX) :], weights)
    elif family is not None and model in family.added_names:
        backbone = _builders.from_family(model, family, weights, aux_logits)
    else:
        backbone = _builders.from_torchvision(model, weights, aux_logits)
    backbone.module.eval()
    backbone.groups = _families.groups_of(backbone.module, backbone.head)
    return backbone


def build_structure(model: str) -> Backbone:
    """Build ``model`` for its structure and shapes only: no weights, and
    parameters on the ``meta`` device (no memory).

    Builders that compute with tensors (RegNet) fail under the meta device;
    they are built with only ``torch.empty`` (what layers allocate their
    parameters with) sent to ``meta``, a mode that acts in this thread alone.
    """
    try:
        with torch.device("meta"):
            return build_backbone(model, weights=None)
    except NotImplementedError:
        with _EmptyOnMeta():
            return build_backbone(model, weights=None)


class _EmptyOnMeta(TorchFunctionMode):
    """``torch.empty`` without a device goes to ``meta`` (this thread only)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.empty and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def layer_groups(model="resnet18") -> list[list[str]]:
    """The ordered layer groups that ``frozen_layers`` counts, from the input.

    Parameters
    ----------
    model : str or torch.nn.Module
        A backbone name (see :func:`list_backbones`) or a module.

    Returns
    -------
    groups : list of list of str
        Each group lists the module (or parameter) names it holds, in
        forward order. The classifier head belongs to no group: it is always
        trained.

    Examples
    --------
    >>> from sktransfer import layer_groups
    >>> [group[0] for group in layer_groups("resnet18")]
    ['conv1', 'layer1', 'layer2', 'layer3', 'layer4']
    >>> len(layer_groups("vit_b_16"))  # the embedding, then each encoder block
    13
    """
    check_model(model)
    if isinstance(model, nn.Module):  # its head: its last classifier layer
        return _families.groups_of(model, _families.last_classifier(model))
    groups = _named_groups.get_or_create(  # every fit asks: build it once
        (model, _families.version()), lambda: build_structure(model).groups
    )
    return [list(group) for group in groups]


# layer groups of named networks, by (name, table version)
_named_groups: LRU[list[list[str]]] = LRU(max_items=32)
