"""Loading ahead on CUDA: the next batches load while this one trains.

Each epoch's order is drawn in the iterating thread before the loading
thread starts (:func:`epoch_batches`), so a seeded fit draws its random
numbers in the same order every time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch

from .._pipeline import Prefetcher, pinned
from .data import ImageBatch


class DeviceLoader:
    """Iterate a ``DataLoader`` two batches ahead in a thread, copying each
    batch's tensors to a CUDA device on a side stream from pinned memory, so
    that loading overlaps the training step. Runs on the CPU too (tests
    check it there)."""

    def __init__(self, loader, device: torch.device):
        self.loader = loader
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None
        batches = _copied(epoch_batches(self.loader), self.device, stream)
        consumer = torch.cuda.current_stream(self.device) if cuda else None
        with contextlib.closing(Prefetcher(batches)) as prefetcher:
            for x, y, ready in prefetcher:
                if cuda:
                    consumer.wait_event(ready)
                    _map_tensors(lambda t: t.record_stream(consumer), x)
                yield x, y


def epoch_batches(loader) -> Iterator:
    """One epoch of ``loader``'s batches, its order drawn now, in the caller's
    thread; loading and collating happen where the result is iterated (for a
    map-style dataset loaded in-process; else the loader's own iterator,
    whose workers start now)."""
    dataset = loader.dataset
    if (
        loader.num_workers
        or loader.batch_sampler is None
        or isinstance(dataset, torch.utils.data.IterableDataset)
    ):
        return iter(loader)
    plan = list(loader.batch_sampler)
    fetch = getattr(dataset, "__getitems__", None)
    fetch = fetch or (lambda indices: [dataset[i] for i in indices])
    return (loader.collate_fn(fetch(indices)) for indices in plan)


def _copied(batches: Iterator, device: torch.device, stream) -> Iterator:
    """``(x, y, ready)``: x's tensors copied to ``device`` on ``stream``
    (``None``: the CPU), ``ready`` the event that marks the copy done."""
    for x, y in batches:
        if stream is None:
            yield _map_tensors(lambda t: t.to(device), x), y, None
            continue
        with torch.cuda.stream(stream):
            x = _map_tensors(lambda t: pinned(t).to(device, non_blocking=True), x)
            ready = torch.cuda.Event()
            ready.record(stream)
        yield x, y, ready


def _map_tensors(fn, x):
    """``fn`` over the tensors of a batch: a tensor, an ImageBatch or a dict."""
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, ImageBatch):
        return ImageBatch([fn(image) for image in x.images])
    if isinstance(x, Mapping):
        return {key: _map_tensors(fn, value) for key, value in x.items()}
    return x
