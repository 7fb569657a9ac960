"""Loading ahead on CUDA: the next batches load while this one trains.

Each epoch's order is drawn in the iterating thread before the loading
thread starts (:func:`epoch_batches`), so a seeded fit draws its random
numbers in the same order every time.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator, Mapping

import torch

from .._pipeline import Prefetcher, pinned
from .data import ImageBatch


class DeviceLoader:
    """Iterate a ``DataLoader`` two batches ahead in a thread, copying each
    batch's tensors to a CUDA device on a side stream from pinned memory, so
    that loading overlaps the training step.

    With ``next_epoch`` (training), the next epoch starts loading once this
    one's batches are used, while validation and callbacks run. ``phase()``
    names what the dataset gives now: an epoch loaded ahead in another phase
    (the head's) is dropped. Runs on the CPU too (tests check it there).
    """

    def __init__(
        self,
        loader,
        device: torch.device,
        *,
        next_epoch: bool = False,
        phase: Callable[[], object] = lambda: None,
    ):
        self.loader = loader
        self.device = torch.device(device)
        self.next_epoch = next_epoch
        self.phase = phase
        self._ahead: tuple[object, Prefetcher] | None = None
        self._stop_ahead: weakref.finalize | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        cuda = self.device.type == "cuda"
        ahead, self._ahead = self._ahead, None
        if self._stop_ahead is not None:
            self._stop_ahead.detach()  # it is this epoch's now, or dropped
        if ahead is not None and ahead[0] != self.phase():
            ahead[1].close(False)
            ahead = None
        prefetcher = ahead[1] if ahead is not None else self._start()
        consumer = torch.cuda.current_stream(self.device) if cuda else None
        with contextlib.closing(prefetcher):
            for x, y, ready in prefetcher:
                if cuda:
                    consumer.wait_event(ready)
                    _map_tensors(lambda t: t.record_stream(consumer), x)
                yield x, y
        if self.next_epoch:
            self._ahead = (self.phase(), self._start())
            # An epoch loaded ahead that never comes (the fit ended) stops
            # when this loader goes (the thread holds no reference to it).
            self._stop_ahead = weakref.finalize(self, self._ahead[1].close, False)

    def _start(self) -> Prefetcher:
        batches = epoch_batches(self.loader)
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        return Prefetcher(_copied(batches, self.device, stream))


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
    return _fetched(dataset, loader.collate_fn, plan)


def _fetched(dataset, collate: Callable, plan: list) -> Iterator:
    getitems = getattr(dataset, "__getitems__", None)
    for indices in plan:
        items = getitems(indices) if getitems else [dataset[i] for i in indices]
        yield collate(items)


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
