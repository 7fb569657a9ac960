"""precision="auto" on the CPU: bfloat16 where the CPU runs it natively.

The capability probe (``_devices.cpu_bfloat16``) is a probe of the machine,
not the thing under test: tests set its answer to check both kinds of CPU on
any machine (bfloat16 is emulated, slowly but correctly, where it is not
native).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from sklearn.base import clone
from torch import nn

from sktransfer import (
    CNNFeatureExtractor,
    FineTuneClassifier,
    ImageNetClassifier,
    _devices,
)
from sktransfer._backbones import build_backbone
from sktransfer._devices import (
    autocast_dtype,
    cpu_bfloat16,
    float32_grouped_convolutions,
)

CPU = torch.device("cpu")


@pytest.fixture
def native(monkeypatch):
    """A CPU that runs bfloat16 natively."""
    monkeypatch.setattr(_devices, "cpu_bfloat16", lambda: True)


@pytest.fixture
def emulated(monkeypatch):
    """A CPU without native bfloat16."""
    monkeypatch.setattr(_devices, "cpu_bfloat16", lambda: False)


def _cpu_flags() -> set[str]:
    with open("/proc/cpuinfo") as info:
        line = next((line for line in info if line.startswith("flags")), "")
    return set(line.split())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/cpuinfo")
def test_probe_reads_the_cpu_flags_with_any_torch(monkeypatch):
    held_below = torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2")
    expected = bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"}) and not held_below
    assert cpu_bfloat16.__wrapped__() is expected
    # torch before 2.8 has no get_capabilities: the kernel's flags answer
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    assert cpu_bfloat16.__wrapped__() is expected


def test_probe_says_no_without_onednn(monkeypatch):
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert cpu_bfloat16.__wrapped__() is False


def test_auto_follows_the_cpu(monkeypatch):
    for native, expected in [(True, torch.bfloat16), (False, None)]:
        monkeypatch.setattr(_devices, "cpu_bfloat16", lambda native=native: native)
        assert autocast_dtype("auto", CPU) is expected
        assert autocast_dtype("auto", CPU, training=True) is expected
        # explicit precisions mean the same on every CPU
        assert autocast_dtype("float32", CPU) is None
        assert autocast_dtype("bfloat16", CPU) is torch.bfloat16
        assert autocast_dtype("float16", CPU) is torch.float16


def test_networks_where_bfloat16_does_not_pay_keep_float32(native, monkeypatch):
    resnet = build_backbone("resnet18", None).module
    mobilenet = build_backbone("mobilenet_v3_small", None).module
    monkeypatch.setattr(_devices, "CPU_FLOAT32_NETWORKS", frozenset({"ResNet"}))
    assert autocast_dtype("auto", CPU, network=resnet) is None
    assert autocast_dtype("auto", CPU, network=mobilenet) is torch.bfloat16
    assert autocast_dtype("bfloat16", CPU, network=resnet) is torch.bfloat16


def test_trained_grouped_convolutions_step_in_float32(native):
    """Their bfloat16 backward is the slow one on CPUs: under CPU autocast the
    grouped convolutions that train run in float32, every other convolution
    (dense, or frozen) in bfloat16; the network's dtype stays bfloat16."""
    mobilenet = build_backbone("mobilenet_v3_small", None).module.train()
    assert autocast_dtype("auto", CPU, training=True, network=mobilenet) is (
        torch.bfloat16
    )
    mobilenet.features[:6].requires_grad_(False)
    float32_grouped_convolutions(mobilenet)
    float32_grouped_convolutions(mobilenet)  # idempotent
    convolutions = [m for m in mobilenet.modules() if isinstance(m, nn.Conv2d)]
    seen = {}
    for conv in convolutions:
        conv.register_forward_hook(lambda m, args, out: seen.__setitem__(m, out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mobilenet(torch.randn(2, 3, 64, 64)).float().sum().backward()
        assert torch.is_autocast_enabled("cpu")  # left and resumed
    kinds = set()
    for conv in convolutions:
        trained_grouped = conv.groups > 1 and conv.weight.requires_grad
        kinds.add((conv.groups > 1, conv.weight.requires_grad))
        assert seen[conv] == (torch.float32 if trained_grouped else torch.bfloat16)
        assert len(conv._forward_pre_hooks) == trained_grouped
    assert kinds == {(True, True), (True, False), (False, True), (False, False)}
    mobilenet(torch.randn(2, 3, 64, 64))  # outside autocast: float32 throughout
    assert set(seen.values()) == {torch.float32}


def test_autocast_resumes_after_a_failing_grouped_convolution():
    conv = nn.Conv2d(4, 4, 3, groups=4)
    float32_grouped_convolutions(conv)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(RuntimeError):
            conv(torch.randn(2, 5, 8, 8))  # 5 channels for 4
        assert torch.is_autocast_enabled("cpu")
        assert conv(torch.randn(2, 4, 8, 8)).dtype == torch.float32


def _extract(images, **params):
    return (
        CNNFeatureExtractor("resnet18", weights=None, device="cpu", **params)
        .fit(images)
        .transform(images)
    )


def _proba(images, **params):
    return (
        ImageNetClassifier("resnet18", weights=None, device="cpu", **params)
        .fit(images)
        .predict_proba(images)
    )


def _fine_tune(images, labels, **params):
    return FineTuneClassifier(
        "resnet18",
        weights=None,
        frozen_layers=3,
        max_epochs=2,
        batch_size=4,
        image_size=64,
        device="cpu",
        random_state=0,
        **params,
    ).fit(images, labels)


def test_without_native_bfloat16_auto_is_float32_bit_for_bit(emulated, images, labels):
    np.testing.assert_array_equal(
        _extract(images), _extract(images, precision="float32")
    )
    np.testing.assert_array_equal(_proba(images), _proba(images, precision="float32"))
    auto = _fine_tune(images, labels)
    float32 = _fine_tune(images, labels, precision="float32")
    np.testing.assert_array_equal(
        auto.predict_proba(images), float32.predict_proba(images)
    )
    for name, value in auto.module_.state_dict().items():
        assert torch.equal(value, float32.module_.state_dict()[name]), name


def test_with_native_bfloat16_auto_is_bfloat16_with_float32_outputs(native, images):
    auto = _extract(images)
    assert auto.dtype == np.float32
    np.testing.assert_array_equal(auto, _extract(images, precision="bfloat16"))
    assert not np.array_equal(auto, _extract(images, precision="float32"))
    proba = _proba(images)
    assert proba.dtype == np.float64
    np.testing.assert_array_equal(proba, _proba(images, precision="bfloat16"))


def test_cache_key_holds_the_resolved_dtype(monkeypatch, images):
    def space(precision):
        return (
            CNNFeatureExtractor(
                "resnet18", weights=None, device="cpu", precision=precision
            )
            .fit(images)
            ._cache_namespace()
        )

    monkeypatch.setattr(_devices, "cpu_bfloat16", lambda: True)
    assert space("auto") == space("bfloat16") != space("float32")
    monkeypatch.setattr(_devices, "cpu_bfloat16", lambda: False)
    assert space("auto") == space("float32") != space("bfloat16")


def test_fine_tuning_under_bfloat16_keeps_float32_weights(native, images, labels):
    clf = _fine_tune(images, labels)
    same = _fine_tune(images, labels, precision="bfloat16")
    proba = clf.predict_proba(images)
    assert proba.dtype == np.float64
    np.testing.assert_array_equal(proba, same.predict_proba(images))
    assert all(p.dtype == torch.float32 for p in clf.module_.parameters())
    moments = [
        value
        for state in clf.optimizer_.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor) and value.ndim > 0
    ]
    assert moments and all(m.dtype == torch.float32 for m in moments)
    assert "grad_scaler_" not in clf.__dict__  # bfloat16 needs no gradient scaling


@pytest.mark.parametrize("model", ["resnet18", "mobilenet_v2"])
def test_frozen_prefix_under_bfloat16_matches_the_full_network(
    native, images, labels, model
):
    """The cached prefix's outputs reach the rest of the network as the
    uncached run's do: same results at the same precision."""
    params = dict(
        weights=None,
        frozen_layers=3,
        augment=False,
        max_epochs=2,
        head_epochs=2,
        batch_size=4,
        image_size=64,
        device="cpu",
        random_state=0,
    )
    cached = FineTuneClassifier(model, **params).fit(images, labels)
    plain = clone(cached).set_params(cache_frozen=False).fit(images, labels)
    assert cached.prefix_cached_ and not plain.prefix_cached_
    np.testing.assert_array_equal(
        cached.predict_proba(images), plain.predict_proba(images)
    )


def test_bfloat16_embeddings_agree_across_batch_sizes(native, images):
    """One image or a batch: the same vector up to bfloat16 rounding (float32
    gives it to float32 rounding; tests/test_extractor.py)."""
    extractor = CNNFeatureExtractor("resnet18", weights=None, device="cpu").fit(images)
    full = extractor.transform(images)
    single = np.concatenate([extractor.transform(image[None]) for image in images])
    cosine = (full * single).sum(1) / (
        np.linalg.norm(full, axis=1) * np.linalg.norm(single, axis=1)
    )
    assert cosine.min() >= 0.999
