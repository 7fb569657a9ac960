"""The family table: every registered network's layer groups, and a family
added from this file alone."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import list_models

from sktransfer import (
    CNNFeatureExtractor,
    FineTuneClassifier,
    layer_groups,
    list_backbones,
)
from sktransfer._backbones import build_backbone, build_structure
from sktransfer._families import (
    AuxHead,
    Family,
    family_of,
    register_family,
    unregister_family,
)
from sktransfer._groups import group_index, is_under


def _forward_order(module: nn.Module, crop: int) -> dict[str, int]:
    """Module name -> position of its first call in one forward (meta device)."""
    module = module.to("meta")
    order: dict[str, int] = {}

    def record(name):
        def hook(_module, _args):
            order.setdefault(name, len(order))

        return hook

    hooks = [
        sub.register_forward_pre_hook(record(name))
        for name, sub in module.named_modules()
        if name
    ]
    with torch.no_grad():
        module(torch.empty(1, 3, crop, crop, device="meta"))
    for hook in hooks:
        hook.remove()
    return order


@pytest.mark.parametrize(
    "name", sorted(list_models(module=__import__("torchvision").models))
)
def test_every_registered_network_has_its_stages_as_groups(name):
    """For every torchvision classification network: several groups, in
    forward order and not interleaved, covering every parameter but the
    head's, none holding the head."""
    backbone = build_structure(name)
    groups, head = backbone.groups, backbone.head
    assert len(groups) >= 4, groups
    order = _forward_order(backbone.module, backbone.preprocessing.crop_size)
    spans = []
    for group in groups:
        calls = [i for n, i in order.items() if is_under(n, group)]
        assert calls, f"group {group} never runs"
        spans.append((min(calls), max(calls)))
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert end < start, f"groups out of forward order: {spans}"
    grouped = [entry for group in groups for entry in group]
    assert not is_under(head, grouped)
    for param, _ in backbone.module.named_parameters():
        assert is_under(param, grouped) or is_under(param, [head]), param


def test_efficientnet_lite0_and_timm_groups_run_in_forward_order():
    for name in ("efficientnet_lite0", "timm/resnet18"):
        backbone = build_structure(name)
        order = _forward_order(backbone.module, backbone.preprocessing.crop_size)
        firsts = [
            min(i for n, i in order.items() if is_under(n, g)) for g in backbone.groups
        ]
        assert firsts == sorted(firsts) and len(firsts) >= 4


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_auxiliary_heads_of_the_table_exist_and_tap_a_group(name):
    backbone = build_backbone(name, weights=None, aux_logits=True)
    modules = dict(backbone.module.named_modules())
    assert backbone.aux_heads == family_of(backbone.module).aux
    for aux in backbone.aux_heads:
        assert aux.head in modules and aux.branch in modules
        assert is_under(aux.head, [aux.branch])
        assert group_index(backbone.groups, aux.attach) is not None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "vit_b_16",
            [["class_token", "conv_proj", "encoder.pos_embedding"]]
            + [[f"encoder.layers.encoder_layer_{i}"] for i in range(11)]
            + [["encoder.layers.encoder_layer_11", "encoder.ln"]],
        ),
        (
            "regnet_y_400mf",
            [["stem"]] + [[f"trunk_output.block{i}"] for i in range(1, 5)],
        ),
        (
            "mnasnet0_5",
            [[f"layers.{i}" for i in range(8)]]
            + [[f"layers.{i}"] for i in range(8, 14)]
            + [["layers.14", "layers.15", "layers.16"]],
        ),
        (
            "maxvit_t",
            [["stem"]]
            + [[f"blocks.{i}"] for i in range(4)]
            + [["classifier.2", "classifier.3"]],
        ),
    ],
)
def test_transformer_and_regnet_stages(name, expected):
    assert layer_groups(name) == expected


def test_every_vit_has_one_group_per_encoder_block():
    for name in [n for n in list_backbones() if n.startswith("vit_")]:
        module = build_structure(name).module
        assert len(layer_groups(name)) == len(module.encoder.layers) + 1


class ToyNet(nn.Module):
    """A network of a family sktransfer does not know: stem, two stages, an
    auxiliary classifier on stage one, and a head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU())
        self.one = nn.Sequential(nn.Conv2d(8, 8, 3), nn.ReLU())
        self.side = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
        )
        self.two = nn.Sequential(nn.Conv2d(8, 16, 3), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out = nn.Linear(16, 10)

    def forward(self, x):
        x = self.one(self.stem(x))
        aux = self.side(x) if self.training and self.side is not None else None
        logits = self.out(self.pool(self.two(x)).flatten(1))
        return (logits, aux) if aux is not None else logits


TOY = Family(
    "ToyNet",
    applies=lambda module: isinstance(module, ToyNet),
    groups=lambda module, head: [["stem"], ["one"], ["two"]],
    head=lambda module: "out",
    aux=(AuxHead("side.2", branch="side", attach="one"),),
    added_names=("toynet",),
    build=lambda name: ToyNet(),
)


@pytest.fixture
def toy_family():
    register_family(TOY)
    yield TOY
    unregister_family(TOY)


def test_a_family_added_from_a_test_file(toy_family, images, labels):
    """The registry, layer groups, the embedding tap, head replacement,
    auxiliary heads and freezing all follow the new entry."""
    assert "toynet" in list_backbones()
    assert layer_groups("toynet") == [["stem"], ["one"], ["two"]]
    assert layer_groups(ToyNet()) == [["stem"], ["one"], ["two"]]
    X = CNNFeatureExtractor("toynet", weights=None, device="cpu").fit_transform(images)
    assert X.shape == (len(images), 16)  # the input of the head "out"

    def fine_tune(frozen_layers):
        return FineTuneClassifier(
            "toynet",
            weights=None,
            frozen_layers=frozen_layers,
            max_epochs=1,
            device="cpu",
            random_state=0,
            image_size=32,
        ).fit(images, labels)

    clf = fine_tune(1)
    module = clf.module_
    assert module.out[-1].out_features == 2 and module.side[2].out_features == 2
    assert clf.aux_heads_ == ("side.2",)
    assert not any(p.requires_grad for p in module.stem.parameters())
    assert all(p.requires_grad for p in module.one.parameters())
    assert clf.predict(images).shape == (len(images),)

    # the branch taps group "one": freezing it drops the auxiliary head
    frozen = fine_tune(2)
    assert frozen.aux_heads_ == () and frozen.module_.side is None
    np.testing.assert_allclose(frozen.predict_proba(images).sum(1), 1.0)


def test_toynet_unknown_without_its_family(images):
    with pytest.raises(ValueError, match="Unknown backbone 'toynet'"):
        layer_groups("toynet")
    register_family(TOY)
    try:
        with pytest.raises(ValueError, match="registered already"):
            register_family(TOY)
        CNNFeatureExtractor("toynet", weights=None, device="cpu").fit(images)
    finally:
        unregister_family(TOY)
    # nothing built with the family outlives it
    with pytest.raises(ValueError, match="Unknown backbone 'toynet'"):
        CNNFeatureExtractor("toynet", weights=None, device="cpu").fit(images)


def test_builds_and_widths_follow_a_changed_table(images):
    """A name re-registered by another entry is built and measured afresh:
    caches key on the table's version, the table knows none of them."""
    extract = CNNFeatureExtractor("toynet", weights=None, device="cpu")
    register_family(TOY)
    try:
        assert extract.fit(images).n_features_out_ == 16  # the input of "out"
    finally:
        unregister_family(TOY)
    other = dataclasses.replace(TOY, build=lambda name: _wider(ToyNet()))
    register_family(other)
    try:
        assert extract.fit(images).n_features_out_ == 32  # built by the new entry
    finally:
        unregister_family(other)


def _wider(net: ToyNet) -> ToyNet:
    net.two = nn.Sequential(nn.Conv2d(8, 32, 3), nn.ReLU())
    net.out = nn.Linear(32, 10)
    return net
