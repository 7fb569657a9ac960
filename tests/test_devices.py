"""Device resolution and the network's place: checked without CUDA, and on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sktransfer import CNNFeatureExtractor
from sktransfer._devices import resolve_device, warm_up


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda as on a machine with two GPUs, CUDA not started yet."""
    state = {"initialized": False, "current": 0}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: state["initialized"])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: state["current"])
    return state


def test_cuda_resolves_to_the_indexed_device_tensors_report(fake_cuda):
    # A tensor moved to "cuda" reports "cuda:<current>"; the index-less device
    # compares unequal to it, so a resolved device must carry the index.
    assert torch.device("cuda") != torch.device("cuda", 0)
    for given in ("auto", "cuda", torch.device("cuda")):
        assert resolve_device(given) == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    fake_cuda.update(initialized=True, current=1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"2 CUDA device\(s\).*'cuda:N'"):
        resolve_device("cuda:2")
    assert resolve_device("cpu") == torch.device("cpu")


def test_resolving_does_not_start_cuda(fake_cuda, monkeypatch):
    """``fit`` resolves the device before the warm-up thread starts CUDA."""

    def refuse():
        raise AssertionError("current_device() starts CUDA")

    monkeypatch.setattr(torch.cuda, "current_device", refuse)
    assert resolve_device("auto") == torch.device("cuda", 0)


def test_no_cuda_is_reported():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    assert warm_up(torch.device("cpu")) is None


def test_transform_keeps_the_fitted_module_and_its_hooks(images):
    """The network is moved in ``fit``; ``transform`` runs that very module,
    so hooks put on ``backbone_.module`` after ``fit`` fire."""
    extractor = CNNFeatureExtractor("resnet18", weights=None, device="cpu")
    extractor.fit(images)
    module = extractor.backbone_.module
    seen = []
    module.layer1.register_forward_hook(lambda *_: seen.append(1))
    extractor.transform(images)
    extractor.transform(images[:3])
    assert extractor.backbone_.module is module
    assert len(seen) == 2


@pytest.mark.cuda
def test_on_cuda_the_network_moves_once_in_fit(images):
    extractor = CNNFeatureExtractor("resnet18", weights=None, device="cuda")
    extractor.fit(images)
    module = extractor.backbone_.module
    assert next(module.parameters()).device == resolve_device("cuda")
    seen = []
    module.layer1.register_forward_hook(lambda *_: seen.append(1))
    first = extractor.transform(images)
    again = extractor.transform(images)
    assert extractor.backbone_.module is module
    assert len(seen) >= 2
    np.testing.assert_array_equal(first, again)
