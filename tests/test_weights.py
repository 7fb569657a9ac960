"""Weights: torchvision's offline cache, local files, safety and mismatches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models import ResNet18_Weights

from sktransfer import (
    CNNFeatureExtractor,
    WeightsError,
    WeightsNotAvailableError,
    _weights,
)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    _weights.clear_cache()
    yield tmp_path / "torch"
    _weights.clear_cache()


def _random_resnet18(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.resnet18()


def _embed(module, extractor, images):
    """Reference: a bare forward of ``module`` without its fc, on the same batch."""
    module.fc = torch.nn.Identity()
    batch = extractor.backbone_.preprocessing(
        torch.from_numpy(images).permute(0, 3, 1, 2)
    )
    with torch.inference_mode():
        return module.eval()(batch).numpy()


def test_torchvision_cache_is_used_offline(torch_home, images):
    """A state dict under the expected file name in TORCH_HOME is loaded, no network."""
    reference = _random_resnet18(seed=1)
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(reference.state_dict(), checkpoints / "resnet18-f37072fd.pth")
    for weights in ("DEFAULT", "IMAGENET1K_V1", ResNet18_Weights.IMAGENET1K_V1):
        # compared at atol=1e-5 with a float32 forward on the CPU
        extractor = CNNFeatureExtractor(
            "resnet18", weights=weights, device="cpu", precision="float32"
        )
        extractor.fit(images)
        assert extractor.backbone_.weights_id == "ResNet18_Weights.IMAGENET1K_V1"
        np.testing.assert_allclose(
            extractor.transform(images), _embed(reference, extractor, images), atol=1e-5
        )


def test_missing_download_offline_names_file_folder_and_fix(torch_home, images):
    with pytest.raises(WeightsNotAvailableError, match="resnet18-f37072fd.pth") as info:
        CNNFeatureExtractor("resnet18").fit(images)
    message = str(info.value)
    assert str(torch_home / "hub" / "checkpoints") in message
    assert "TORCH_HOME" in message and "weights=None" in message


def test_local_pth_and_safetensors(tmp_path, images):
    from safetensors.torch import save_file

    reference = _random_resnet18(seed=2)
    pth, st = tmp_path / "mine.pth", tmp_path / "mine.safetensors"
    torch.save({"state_dict": reference.state_dict()}, pth)  # checkpoint layout
    save_file(reference.state_dict(), st)
    # device="cpu": compared at atol=1e-5 with a float32 forward on the CPU
    exact = dict(device="cpu", precision="float32")  # vs a float32 forward
    a = CNNFeatureExtractor("resnet18", weights=str(pth), **exact).fit(images)
    b = CNNFeatureExtractor("resnet18", weights=st, **exact).fit(images)
    expected = _embed(reference, a, images)
    np.testing.assert_allclose(a.transform(images), expected, atol=1e-5)
    np.testing.assert_allclose(b.transform(images), expected, atol=1e-5)


def test_weights_file_is_read_once(tmp_path, images, monkeypatch):
    path = tmp_path / "once.pth"
    torch.save(_random_resnet18(seed=3).state_dict(), path)
    _weights.clear_cache()
    reads = []
    original = _weights._read_state_dict
    monkeypatch.setattr(
        _weights, "_read_state_dict", lambda p: reads.append(p) or original(p)
    )
    for _ in range(3):  # e.g. three GridSearchCV candidates
        CNNFeatureExtractor("resnet18", weights=str(path)).fit(images[:1])
    assert len(reads) == 1


def test_weights_for_another_architecture(tmp_path, images):
    path = tmp_path / "r18.pth"
    torch.save(_random_resnet18(seed=0).state_dict(), path)
    with pytest.raises(WeightsError, match="do not fit this architecture"):
        CNNFeatureExtractor("resnet34", weights=str(path)).fit(images)
    with pytest.raises(WeightsError, match="another architecture"):
        CNNFeatureExtractor("resnet34", weights=ResNet18_Weights.DEFAULT).fit(images)


def test_unknown_weights_name_suggests(images):
    with pytest.raises(WeightsError, match="Did you mean 'IMAGENET1K_V1'"):
        CNNFeatureExtractor("resnet18", weights="IMAGENET1K_V").fit(images)


def test_pickled_module_file_is_refused_not_executed(tmp_path, images):
    path = tmp_path / "whole_model.pth"
    torch.save(_random_resnet18(seed=0), path)  # a pickled nn.Module, not a state dict
    with pytest.raises(WeightsError, match="arbitrary unpickling"):
        CNNFeatureExtractor("resnet18", weights=str(path)).fit(images)


def test_missing_local_file(tmp_path, images):
    with pytest.raises(WeightsNotAvailableError, match="does not exist"):
        CNNFeatureExtractor("resnet18", weights=str(tmp_path / "none.pth")).fit(images)
