"""Backbone registry: names, layer groups, unknown names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sktransfer import (
    CNNFeatureExtractor,
    UnknownBackboneError,
    UnknownLayerError,
    layer_groups,
    list_backbones,
)
from sktransfer._backbones import build_backbone


def test_every_torchvision_classifier_is_registered():
    names = list_backbones()
    expected = set(torchvision_names())
    assert expected <= set(names)
    assert "efficientnet_lite0" in names and names == sorted(names)


def torchvision_names():
    import torchvision.models as tvm

    return tvm.list_models(module=tvm)


def test_offline_listing_includes_the_shipped_weights():
    assert "efficientnet_lite0" in list_backbones(offline=True)


@pytest.mark.parametrize(
    ("model", "n_groups", "first", "last"),
    [
        ("alexnet", 7, "features.0", "classifier.5"),
        ("vgg16", 7, "features.0", "classifier.5"),
        ("googlenet", 4, "conv1", "inception5b"),
        ("inception_v3", 4, "Conv2d_1a_3x3", "Mixed_7c"),
        ("resnet18", 5, "conv1", "layer4"),
        ("resnet50", 5, "conv1", "layer4"),
        ("mobilenet_v2", 6, "features.0", "features.18"),
        ("mobilenet_v3_small", 6, "features.0", "classifier.1"),
        ("efficientnet_lite0", 8, "conv_stem", "bn2"),
    ],
)
def test_layer_groups(model, n_groups, first, last):
    groups = layer_groups(model)
    assert len(groups) == n_groups
    assert groups[0][0] == first and groups[-1][-1] == last


def test_layer_groups_cover_every_trainable_parameter_but_the_head():
    for model in (
        "resnet18",
        "vgg11",
        "mobilenet_v3_small",
        "googlenet",
        "efficientnet_b0",
    ):
        backbone = build_backbone(model, weights=None)
        entries = [e for group in backbone.groups for e in group]
        for name, _ in backbone.module.named_parameters():
            in_group = any(name == e or name.startswith(e + ".") for e in entries)
            in_head = name.startswith(backbone.head + ".")
            assert in_group != in_head, (model, name)


def test_layer_groups_of_a_module_and_timm():
    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 2),
    )
    assert layer_groups(module) == [["0"]]
    assert len(layer_groups("timm/resnet18")) == 5


def test_unknown_model_suggests_the_closest_name():
    with pytest.raises(UnknownBackboneError, match="Did you mean 'vgg16'"):
        CNNFeatureExtractor("vgg61", weights=None).fit(np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(UnknownBackboneError, match="Did you mean 'resnet50'"):
        layer_groups("resnet_50")
    with pytest.raises(UnknownBackboneError, match="Unknown timm model 'resnett18'"):
        layer_groups("timm/resnett18")
    with pytest.raises(UnknownBackboneError, match="torch.nn.Module, got int"):
        layer_groups(3)


def test_unknown_layer_suggests_the_closest_names():
    extractor = CNNFeatureExtractor("resnet18", weights=None, layer="layer5")
    with pytest.raises(UnknownLayerError, match="Did you mean 'layer4'"):
        extractor.fit(np.zeros((1, 8, 8, 3), np.uint8))


def test_aux_heads_are_kept_only_on_request():
    assert build_backbone("googlenet", weights=None).aux_heads == ()
    kept = build_backbone("googlenet", weights=None, aux_logits=True)
    assert [a.head for a in kept.aux_heads] == ["aux1.fc2", "aux2.fc2"]
    inception = build_backbone("inception_v3", weights=None, aux_logits=True)
    assert [a.head for a in inception.aux_heads] == ["AuxLogits.fc"]
