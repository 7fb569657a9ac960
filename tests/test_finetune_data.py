"""FineTuneClassifier's data path on a device: batches fetched whole, loaded an
epoch ahead in a thread, labels that cross without a wait; checked on the CPU
(the CUDA-only parts, streams and pinning, are what tests/test_cuda.py runs)."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sktransfer._device_transforms import to_device
from sktransfer._finetune.data import IMAGES, Collate, FitData
from sktransfer._finetune.loader import DeviceLoader, epoch_batches
from sktransfer._images import check_images

CPU = torch.device("cpu")


@pytest.mark.parametrize("layout", ["NHWC", "NCHW", "grey", "RGBA", "read-only"])
def test_array_rows_are_fetched_as_images_rows_gives_them(layout, rng):
    X = rng.integers(0, 256, (12, 20, 24, 4), dtype=np.uint8)
    X = {
        "NHWC": X[..., :3],
        "NCHW": np.ascontiguousarray(X[..., :3].transpose(0, 3, 1, 2)),
        "grey": X[..., 0],
        "RGBA": X,
        "read-only": np.require(X[..., :3], requirements="C"),
    }[layout]
    X.flags.writeable = layout != "read-only"
    images = check_images(X)
    indices = [7, 0, 3, 3, 11]
    fetched = FitData(images, np.arange(12) % 3).__getitems__(indices)
    assert [target for _, target in fetched] == [1, 0, 0, 0, 2]
    x, labels = Collate(np.array(["a", "b", "c"]))(fetched)
    expected = images.rows(np.asarray(indices))
    torch.testing.assert_close(x[IMAGES], expected, rtol=0, atol=0)
    assert x[IMAGES].shape == (5, 3, 20, 24) and list(labels) == list("baaac")


def _loader(n: int = 10, batch_size: int = 4, **kwargs) -> DataLoader:
    images = check_images(np.arange(n, dtype=np.uint8).repeat(12).reshape(n, 2, 2, 3))
    dataset = FitData(images, np.arange(n) % 2)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        collate_fn=Collate(np.array(["even", "odd"])),
        **kwargs,
    )


def _ids(x: dict) -> list[int]:
    """Which images a batch holds (image i is filled with the value i)."""
    return x[IMAGES][:, 0, 0, 0].tolist()


def test_an_epoch_is_what_the_dataloader_gives():
    loader = _loader(shuffle=True)
    batches = list(epoch_batches(loader))
    assert [len(x[IMAGES]) for x, _ in batches] == [4, 4, 2]
    ids = [i for x, _ in batches for i in _ids(x)]
    assert sorted(ids) == list(range(10))
    for x, labels in batches:  # labels follow their images
        assert list(labels) == ["odd" if i % 2 else "even" for i in _ids(x)]
    in_order = [i for x, _ in epoch_batches(_loader()) for i in _ids(x)]
    assert in_order == list(range(10))
    # not batched by a sampler: the loader's own iterator
    unbatched = DataLoader(_loader().dataset, batch_size=None)
    assert [target for _, target in epoch_batches(unbatched)] == [0, 1] * 5


def _epochs(seed: int, epochs: int = 3) -> list:
    """Batches seen and random numbers drawn between them, seeded."""
    torch.manual_seed(seed)
    loader = DeviceLoader(_loader(shuffle=True), CPU)
    seen = []
    for _ in range(epochs):
        for x, labels in loader:
            seen.append((_ids(x), list(labels), float(torch.rand(()))))
    return seen


def test_epochs_load_ahead_and_a_seeded_fit_is_reproducible():
    """The shuffle is drawn in the iterating thread: the random numbers the
    training step draws (augmentation) come in the same order every run."""
    first = _epochs(seed=0)
    assert len(first) == 9
    for epoch in range(3):
        ids = [i for batch in first[3 * epoch : 3 * epoch + 3] for i in batch[0]]
        assert sorted(ids) == list(range(10))
    assert first == _epochs(seed=0)
    assert first != _epochs(seed=1)


def test_an_epoch_left_early_stops_its_loading_thread():
    before = set(threading.enumerate())
    batches = iter(DeviceLoader(_loader(n=40, batch_size=2), CPU))
    next(batches)
    (thread,) = set(threading.enumerate()) - before
    assert thread.is_alive()  # blocked: 2 batches are queued
    del batches
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_small_tensors_cross_to_the_device():
    labels = torch.tensor([2, 0, 1])
    assert torch.equal(to_device(labels, CPU), labels)


def test_gradients_into_global_pooling_keep_the_maps_channels_last_layout():
    """The backward pass of a mean over the map broadcasts the gradient in the
    default layout; the hook gives it the maps' channels-last layout, changes
    no output and no gradient beyond rounding, and keys no plan or rows."""
    from torch import nn

    from sktransfer._finetune.data import channels_last_gradients, gradient_as_input
    from sktransfer._finetune.fingerprint import neutral_hooks

    def network():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU6(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
        )  # fmt: skip

    x = torch.randn(4, 3, 9, 9).contiguous(memory_format=torch.channels_last)
    outputs, grads, layouts = [], [], []

    def watch(module, args):  # the layout of the gradient into the pool
        channels_last = torch.channels_last
        if not args[0].requires_grad:
            return
        args[0].register_hook(
            lambda g: layouts.append(g.is_contiguous(memory_format=channels_last))
        )

    for hooked in (False, True):
        net = network()
        if hooked:
            channels_last_gradients(net)
            channels_last_gradients(net)  # idempotent
            assert list(net[3]._forward_pre_hooks.values()) == [gradient_as_input]
        net[3].register_forward_pre_hook(watch)  # after the hook under test
        out = net(x)
        out.square().sum().backward()
        outputs.append(out.detach())
        grads.append([p.grad for p in net.parameters()])
    assert layouts == [False, True]
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    for plain, hooked in zip(*grads, strict=True):
        torch.testing.assert_close(plain, hooked)
    with torch.no_grad():  # no gradient asked: none registered (it would raise)
        net(x)
    assert gradient_as_input in neutral_hooks(CPU, torch.bfloat16)
    assert gradient_as_input in neutral_hooks(CPU, None)
