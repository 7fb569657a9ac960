"""The backbone family table: what makes each family of networks special.

One :class:`Family` entry per family says, declaratively: which modules (and
registry names) it covers, its classifier head, its auxiliary heads and where
they tap the network, its layer groups, and the arguments its builder needs.
The registry and builders (:mod:`sktransfer._backbones`,
:mod:`sktransfer._builders`), head replacement (here) and fine-tuning read it
(freezing takes the groups and heads it gives); adding a family of networks is
adding an entry (:func:`register_family`). Two sources keep builders of their
own, since their weights come from elsewhere: timm models (``"timm/<name>"``,
one generic entry) and the EfficientNet-Lite0 package.

Families are tried in order: the first whose ``applies`` accepts the module
wins, so specific entries come before the generic timm and fallback ones.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from . import _groups as g
from ._images import Preprocessing


@dataclass(frozen=True)
class AuxHead:
    """An auxiliary classifier used only in training.

    ``head``: its final layer, replaced like the main head; ``branch``: the
    child module holding the whole branch (dropped when it would not train);
    ``attach``: the layer whose output it taps, so the branch trains only
    while the group holding that layer trains.
    """

    head: str
    branch: str
    attach: str


@dataclass(frozen=True)
class Family:
    """Everything sktransfer needs to know about one family of networks.

    Parameters
    ----------
    name : str
        For messages and docs.
    applies : callable
        ``module -> bool``: whether a built module belongs to the family.
    groups : callable
        ``(module, head) -> list of groups`` (forward order, head excluded).
    head : callable, optional
        ``module -> name`` of the final classifier; default: the last
        ``Linear`` (else ``Conv2d``) in registration order.
    aux : tuple of AuxHead
        Auxiliary heads, used only while training.
    aux_note : str
        Warned when auxiliary heads train from scratch next to pretrained
        weights (torchvision's GoogLeNet ships none).
    names : callable, optional
        ``registry name -> bool``: the torchvision names built with this
        family's ``builder_kwargs`` (known before the module exists).
    builder_kwargs : callable, optional
        ``(weights enum or None, weights preset) -> dict`` for torchvision's
        builder.
    added_names : tuple of str
        Registry names this family adds, built by ``build``.
    build : callable, optional
        ``name -> module`` with random weights, for ``added_names``
        (``weights=None`` or a local state dict file).
    preprocessing : Preprocessing, optional
        Of ``build``'s networks; default: torchvision's ImageNet preset.
    """

    name: str
    applies: Callable[[nn.Module], bool]
    groups: Callable[[nn.Module, str], list[list[str]]]
    head: Callable[[nn.Module], str] | None = None
    aux: tuple[AuxHead, ...] = ()
    aux_note: str = ""
    names: Callable[[str], bool] | None = None
    builder_kwargs: Callable[..., dict] | None = None
    added_names: tuple[str, ...] = ()
    build: Callable[[str], nn.Module] | None = None
    preprocessing: Preprocessing | None = None

    def head_of(self, module: nn.Module) -> str:
        return self.head(module) if self.head else last_classifier(module)


def _tv(cls_name: str) -> Callable[[nn.Module], bool]:
    """``isinstance`` against a torchvision model class, imported lazily."""

    def applies(module: nn.Module) -> bool:
        import torchvision.models as tvm

        return isinstance(module, getattr(tvm, cls_name))

    return applies


def _fc(_module) -> list[list[str]]:
    """fc6 and fc7 of AlexNet/VGG: (dropout,) linear, relu (, dropout)."""
    return [
        ["classifier.0", "classifier.1", "classifier.2"],
        ["classifier.3", "classifier.4", "classifier.5"],
    ]


def _aux_kwargs(enum, preset) -> dict:
    # Pretrained GoogLeNet/Inception weights come with aux branches and the
    # input transform of their original training.
    pretrained = enum is not None
    return {
        "aux_logits": True,
        "init_weights": not pretrained,
        "transform_input": pretrained,
    }


def _vit_groups(module, head) -> list[list[str]]:
    blocks = g.each_child(module, "encoder.layers")
    blocks[-1].append("encoder.ln")
    return [["class_token", "conv_proj", "encoder.pos_embedding"], *blocks]


def _mobilenet_groups(module, head) -> list[list[str]]:
    groups = g.split_at_strides(module.features)
    if _tv("MobileNetV3")(module):  # its hidden classifier layer
        groups.append(["classifier.0", "classifier.1"])
    return groups


_GOOGLENET_STAGES = [
    ["conv1", "maxpool1", "conv2", "conv3", "maxpool2"],
    ["inception3a", "inception3b", "maxpool3"],
    [f"inception4{x}" for x in "abcde"] + ["maxpool4"],
    ["inception5a", "inception5b"],
]
_INCEPTION3_STAGES = [
    ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1"]
    + ["Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2"],
    ["Mixed_5b", "Mixed_5c", "Mixed_5d"],
    ["Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"],
    ["Mixed_7a", "Mixed_7b", "Mixed_7c"],
]

FAMILIES: list[Family] = [
    Family(
        "ResNet",
        _tv("ResNet"),
        lambda m, h: [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]],
    ),
    Family(
        "AlexNet",
        _tv("AlexNet"),
        lambda m, h: g.split_before(m.features, "features", nn.Conv2d) + _fc(m),
    ),
    Family(
        "VGG",
        _tv("VGG"),
        lambda m, h: g.split_after(m.features, "features", nn.MaxPool2d) + _fc(m),
    ),
    Family(
        "GoogLeNet",
        _tv("GoogLeNet"),
        lambda m, h: [list(stage) for stage in _GOOGLENET_STAGES],
        aux=(
            AuxHead("aux1.fc2", "aux1", attach="inception4a"),
            AuxHead("aux2.fc2", "aux2", attach="inception4d"),
        ),
        aux_note=(
            "torchvision's pretrained GoogLeNet has no pretrained auxiliary heads: "
            "aux1 and aux2 start from random weights"
        ),
        names=lambda name: name == "googlenet",
        builder_kwargs=_aux_kwargs,
    ),
    Family(
        "Inception v3",
        _tv("Inception3"),
        lambda m, h: [list(stage) for stage in _INCEPTION3_STAGES],
        aux=(AuxHead("AuxLogits.fc", "AuxLogits", attach="Mixed_6e"),),
        names=lambda name: name == "inception_v3",
        builder_kwargs=_aux_kwargs,
    ),
    Family(
        "MobileNet",
        lambda m: _tv("MobileNetV2")(m) or _tv("MobileNetV3")(m),
        _mobilenet_groups,
    ),
    Family(
        "ViT",
        _tv("VisionTransformer"),
        _vit_groups,
        names=lambda name: name.startswith("vit_"),
        # the input size follows the preset even for random weights, so the
        # network matches the preprocessing (vit_h_14's DEFAULT is 518 px)
        builder_kwargs=lambda enum, preset: {"image_size": preset.meta["min_size"][0]},
    ),
    Family(
        "RegNet",
        _tv("RegNet"),
        lambda m, h: [["stem"], *g.each_child(m, "trunk_output")],
    ),
    Family(
        "MNASNet",
        _tv("MNASNet"),
        lambda m, h: g.split_at_stacks(m.layers, "layers"),
    ),
    Family(
        "MaxViT",
        _tv("MaxVit"),
        lambda m, h: [
            ["stem"],
            *g.each_child(m, "blocks"),
            ["classifier.2", "classifier.3"],
        ],
        names=lambda name: name.startswith("maxvit_"),
        builder_kwargs=lambda enum, preset: {"input_size": preset.meta["min_size"]},
    ),
    Family(
        "timm",
        lambda m: hasattr(m, "group_matcher") and hasattr(m, "get_classifier"),
        g.timm_groups,
        head=lambda m: next(
            n for n, sub in m.named_modules() if sub is m.get_classifier()
        ),
    ),
    Family("other", lambda m: True, g.children_groups),
]
_lock = threading.Lock()
_version = 0


def version() -> int:
    """How many times the table changed: caches of what was built from it
    (shared builds, embedding widths) put it in their keys, so that entries
    made under an older table are never served, without the table knowing
    who caches what."""
    return _version


def register_family(family: Family) -> None:
    """Add ``family`` to the table, ahead of the existing entries.

    Builds and embedding widths made before are no longer reused: they may
    have come from another entry (see :func:`version`).
    """
    global _version
    with _lock:
        if family in FAMILIES:
            raise ValueError(f"Family {family.name!r} is registered already.")
        FAMILIES.insert(0, family)
        _version += 1


def unregister_family(family: Family) -> None:
    """Remove ``family`` from the table (and stop reusing what it built)."""
    global _version
    with _lock:
        FAMILIES.remove(family)
        _version += 1


def family_of(module: nn.Module) -> Family:
    """The first family whose ``applies`` accepts ``module``."""
    return next(family for family in list(FAMILIES) if family.applies(module))


def family_named(name: str) -> Family | None:
    """The family that builds registry name ``name`` or gives it builder
    arguments, if any."""
    for family in list(FAMILIES):
        if name in family.added_names or (family.names and family.names(name)):
            return family
    return None


def added_names() -> list[str]:
    """Registry names that families add beyond torchvision's."""
    return [name for family in list(FAMILIES) for name in family.added_names]


def last_classifier(module: nn.Module) -> str:
    """The last ``Linear`` in registration order, else the last ``Conv2d``
    (SqueezeNet's classifier is a 1x1 convolution)."""
    for kind in (nn.Linear, nn.Conv2d):
        names = [name for name, m in module.named_modules() if isinstance(m, kind)]
        if names:
            return names[-1]
    from .exceptions import UnknownBackboneError

    raise UnknownBackboneError(
        f"{type(module).__name__} has no Linear or Conv2d layer to use as its "
        "classifier."
    )


def present_aux(module: nn.Module) -> tuple[AuxHead, ...]:
    """The family's auxiliary heads that ``module`` has."""
    modules = dict(module.named_modules())
    return tuple(aux for aux in family_of(module).aux if aux.head in modules)


def drop_aux(module: nn.Module) -> None:
    """Remove the auxiliary branches (and torchvision's ``aux_logits`` flag)."""
    for aux in family_of(module).aux:
        owner, attr = owner_of(module, aux.branch)
        if getattr(owner, attr, None) is not None:
            setattr(owner, attr, None)
    if hasattr(module, "aux_logits"):
        module.aux_logits = False


def trained_aux(
    aux: tuple[AuxHead, ...], groups: list[list[str]], n_frozen: int
) -> tuple[AuxHead, ...]:
    """The auxiliary heads whose branch taps a group that is trained."""
    return tuple(
        a
        for a in aux
        if (index := g.group_index(groups, a.attach)) is not None and index >= n_frozen
    )


def owner_of(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The submodule that holds the submodule ``name`` of ``module``, and the
    attribute it holds it under."""
    parent, _, attr = name.rpartition(".")
    return (module.get_submodule(parent) if parent else module), attr


def replace_head(
    module: nn.Module, name: str, n_classes: int, dropout: float = 0.0
) -> None:
    """Put a new, randomly initialised classifier for ``n_classes`` at ``name``."""
    parent, attr = owner_of(module, name)
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


def groups_of(module: nn.Module, head: str) -> list[list[str]]:
    """The layer groups of ``module`` (its family's), head excluded."""
    return family_of(module).groups(module, head)
