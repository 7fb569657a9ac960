"""Layer-group helpers: split a network into the ordered blocks that
``frozen_layers`` counts. Which helper a family uses is said in its entry of
:mod:`sktransfer._families`; these functions only read module structure.

A group is a list of module (or parameter) names.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

Groups = list[list[str]]


def is_under(name: str, prefixes: Iterable[str]) -> bool:
    """Whether ``name`` is one of ``prefixes`` or a module/parameter inside one
    (looked up by its dotted ancestors: a network's hundreds of parameters
    against a group list each)."""
    prefixes = prefixes if isinstance(prefixes, (set, frozenset)) else set(prefixes)
    while name not in prefixes:
        name, dot, _ = name.rpartition(".")
        if not dot:
            return False
    return True


def ancestors(name: str) -> list[str]:
    """The dotted ancestors of module ``name``, the root first:
    ``ancestors("a.b.c") == ["", "a", "a.b"]``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts))]


def group_index(groups: Groups, name: str) -> int | None:
    """The index of the group holding ``name``, or ``None``."""
    for index, group in enumerate(groups):
        if is_under(name, group):
            return index
    return None


def each_child(module: nn.Module, prefix: str) -> Groups:
    """One group per child of the sub-module at ``prefix`` (stages in a list)."""
    return [
        [f"{prefix}.{name}"]
        for name, _ in module.get_submodule(prefix).named_children()
    ]


def split_before(seq: nn.Sequential, prefix: str, kind: type) -> Groups:
    """Start a new group at every ``kind`` layer (AlexNet: conv1 ... conv5)."""
    groups: Groups = []
    for index, layer in enumerate(seq):
        if isinstance(layer, kind) or not groups:
            groups.append([])
        groups[-1].append(f"{prefix}.{index}")
    return groups


def split_after(seq: nn.Sequential, prefix: str, kind: type) -> Groups:
    """Close a group after every ``kind`` layer (VGG: blocks end at max-pools)."""
    groups: Groups = [[]]
    for index, layer in enumerate(seq):
        groups[-1].append(f"{prefix}.{index}")
        if isinstance(layer, kind):
            groups.append([])
    return [group for group in groups if group]


def split_at_strides(features: nn.Sequential, prefix: str = "features") -> Groups:
    """Stem, then a new group at every block that downsamples (MobileNet)."""
    groups: Groups = [[f"{prefix}.0"]]
    for index in range(1, len(features)):
        strided = any(
            isinstance(m, nn.Conv2d) and max(m.stride) > 1
            for m in features[index].modules()
        )
        if strided or len(groups) == 1:
            groups.append([])
        groups[-1].append(f"{prefix}.{index}")
    return groups


def split_at_stacks(seq: nn.Sequential, prefix: str) -> Groups:
    """Each nested ``Sequential`` (a stage) its own group; runs of single
    layers between them (stem, final convolution) one group each (MNASNet)."""
    groups: Groups = []
    loose = False
    for index, layer in enumerate(seq):
        stage = isinstance(layer, nn.Sequential)
        if stage or not loose:
            groups.append([])
        groups[-1].append(f"{prefix}.{index}")
        loose = not stage
    return groups


def timm_groups(module: nn.Module, head: str) -> Groups:
    """timm's own coarse ``group_matcher`` stages, without the head."""
    from timm.models import group_modules

    grouped = group_modules(module, module.group_matcher(coarse=True))
    groups = []
    for key in sorted(grouped):
        names = [n for n in grouped[key] if not is_under(n, [head])]
        if names:
            groups.append(names)
    return _root_parameters_first(module, groups)


def _root_parameters_first(module: nn.Module, groups: Groups) -> Groups:
    """Parameters of the root module (a class token, position embeddings),
    which the input meets first, join the first group."""
    root = [name for name, _ in module.named_parameters(recurse=False)]
    if root and groups:
        groups[0] = root + groups[0]
    return groups


def children_groups(module: nn.Module, head: str) -> Groups:
    """Top-level children that hold parameters, in registration order.

    ``features`` is split per child (DenseNet, EfficientNet, ConvNeXt, Swin);
    a child that holds the head contributes its other parameterised children
    (ConvNeXt's classifier norm); parameters of the root (a class token) join
    the first group.
    """
    groups: Groups = []
    for name, child in module.named_children():
        if name == "features" and isinstance(child, nn.Sequential):
            groups += [
                [f"features.{n}"] for n, c in child.named_children() if has_params(c)
            ]
        elif is_under(head, [name]):
            rest = [
                f"{name}.{n}"
                for n, c in child.named_children()
                if has_params(c) and not is_under(head, [f"{name}.{n}"])
            ]
            if rest:
                groups.append(rest)
        elif has_params(child):
            groups.append([name])
    return _root_parameters_first(module, groups)


def has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())
