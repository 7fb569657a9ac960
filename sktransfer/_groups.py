"""Layer groups: the ordered blocks of a backbone that ``frozen_layers`` counts.

A group is a list of module (or parameter) names. Families of DESIGN.md's table
get their classic groups; timm models use timm's own ``group_matcher``; any other
network its top-level children with parameters (``features`` expanded).
"""

from __future__ import annotations

import torch
from torch import nn


def _layer_groups(backbone) -> list[list[str]]:
    module, head = backbone.module, backbone.head
    import torchvision.models as tvm

    if isinstance(module, tvm.ResNet):
        return [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]
    if isinstance(module, tvm.AlexNet):
        return _split_before(module.features, "features", nn.Conv2d) + _fc_groups()
    if isinstance(module, tvm.VGG):
        return _split_after(module.features, "features", nn.MaxPool2d) + _fc_groups()
    if isinstance(module, tvm.GoogLeNet):
        return [
            ["conv1", "maxpool1", "conv2", "conv3", "maxpool2"],
            ["inception3a", "inception3b", "maxpool3"],
            [
                "inception4a",
                "inception4b",
                "inception4c",
                "inception4d",
                "inception4e",
                "maxpool4",
            ],
            ["inception5a", "inception5b"],
        ]
    if isinstance(module, tvm.Inception3):
        stem = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1"]
        stem += ["Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2"]
        return [
            stem,
            ["Mixed_5b", "Mixed_5c", "Mixed_5d"],
            ["Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"],
            ["Mixed_7a", "Mixed_7b", "Mixed_7c"],
        ]
    if isinstance(module, (tvm.MobileNetV2, tvm.MobileNetV3)):
        groups = _split_at_strides(module.features)
        if isinstance(module, tvm.MobileNetV3):  # the hidden classifier layer
            groups.append(["classifier.0", "classifier.1"])
        return groups
    if hasattr(module, "group_matcher"):
        return _timm_groups(module, head)
    return _children_groups(module, head)


def _fc_groups() -> list[list[str]]:
    """fc6 and fc7 of AlexNet/VGG: (dropout,) linear, relu (, dropout)."""
    return [
        ["classifier.0", "classifier.1", "classifier.2"],
        ["classifier.3", "classifier.4", "classifier.5"],
    ]


def _split_before(seq: nn.Sequential, prefix: str, kind: type) -> list[list[str]]:
    """Start a new group at every ``kind`` layer (AlexNet: conv1 ... conv5)."""
    groups: list[list[str]] = []
    for index, layer in enumerate(seq):
        if isinstance(layer, kind) or not groups:
            groups.append([])
        groups[-1].append(f"{prefix}.{index}")
    return groups


def _split_after(seq: nn.Sequential, prefix: str, kind: type) -> list[list[str]]:
    """Close a group after every ``kind`` layer (VGG: blocks end at max-pools)."""
    groups: list[list[str]] = [[]]
    for index, layer in enumerate(seq):
        groups[-1].append(f"{prefix}.{index}")
        if isinstance(layer, kind):
            groups.append([])
    return [group for group in groups if group]


def _split_at_strides(features: nn.Sequential) -> list[list[str]]:
    """Stem, then a new group at every block that downsamples (MobileNet)."""
    groups: list[list[str]] = [["features.0"]]
    for index in range(1, len(features)):
        block = features[index]
        strided = any(
            isinstance(m, nn.Conv2d) and max(m.stride) > 1 for m in block.modules()
        )
        if strided or len(groups) == 1:
            groups.append([])
        groups[-1].append(f"features.{index}")
    return groups


def _timm_groups(module: nn.Module, head: str) -> list[list[str]]:
    from timm.models import group_modules

    grouped = group_modules(module, module.group_matcher(coarse=True))
    groups = []
    for key in sorted(grouped):
        names = [n for n in grouped[key] if n != head and not n.startswith(head + ".")]
        if names:
            groups.append(names)
    return groups


def _children_groups(module: nn.Module, head: str) -> list[list[str]]:
    """Top-level children that hold parameters (``features`` split per child)."""
    groups: list[list[str]] = []
    root_params = [name for name, _ in module.named_parameters(recurse=False)]
    for name, child in module.named_children():
        if name == "features" and isinstance(child, nn.Sequential):
            # named_children: DenseNet's ``features`` names its children (conv0, ...)
            groups += [
                [f"features.{n}"] for n, c in child.named_children() if _has_params(c)
            ]
            continue
        if name == head or (
            head.startswith(name + ".") and _only_head(child, name, head)
        ):
            continue
        if _has_params(child):
            groups.append([name])
    if root_params and groups:  # e.g. a ViT's class token trains with the first group
        groups[0] = root_params + groups[0]
    return groups


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _only_head(child: nn.Module, name: str, head: str) -> bool:
    """Whether every parameter of ``child`` belongs to the head."""
    prefix = head[len(name) + 1 :]
    return all(p.startswith(prefix + ".") for p, _ in child.named_parameters())


def group_parameters(
    module: nn.Module, group: list[str]
) -> list[tuple[str, torch.Tensor]]:
    """The ``(name, parameter)`` pairs that belong to ``group``."""
    return [
        (name, param)
        for name, param in module.named_parameters()
        if any(name == entry or name.startswith(entry + ".") for entry in group)
    ]
