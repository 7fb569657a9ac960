"""The CUDA input pipeline: files read ahead in threads, uint8 to the device,
decoding and preprocessing on a side stream while the network runs.

::

    thread pool (n_jobs)      read bytes / Pillow fallback / array rows -> pinned uint8
    loader thread, stream S   copy to device, nvJPEG decode, resize, crop, normalise
    caller, default stream    waits on S's event for batch k, runs forward(k)
                              while S prepares k+1; results copied back async

Every batch has ``batch_size`` rows (the last one is padded), so cuDNN sees
one shape. Memory holds a few batches whatever the number of images.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator

import numpy as np
import torch

from . import _device_transforms as transforms
from ._decode import decode_encoded, read_encoded
from ._gpu_decode import decode_batch, gpu_decoder
from ._images import Images, Preprocessing

_DONE = object()
GPU_READERS = 16  # reading threads by default (n_jobs=None) when the device is CUDA


class Prefetcher:
    """Iterate ``source`` in a background thread, ``depth`` items ahead.

    Errors in the thread are raised in the consumer; closing the iterator
    early (an error in the consumer, ``break``) stops the thread.
    """

    def __init__(self, source: Iterator, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(source,), daemon=True, name="sktransfer-loader"
        )
        self._thread.start()

    def _run(self, source: Iterator) -> None:
        error = None
        try:
            for item in source:
                if not self._put((item, None)):
                    return  # the consumer has stopped
        except BaseException as exc:  # handed to the consumer
            error = exc
        finally:
            close = getattr(source, "close", None)
            try:
                if close is not None:
                    close()
            except BaseException as exc:
                error = error or exc
        self._put((_DONE, error))

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _get(self):
        while True:
            try:
                return self._queue.get(timeout=0.1)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError(
                        "The loader thread ended without a result."
                    ) from None

    def __iter__(self):
        try:
            while True:
                item, error = self._get()
                if error is not None:
                    raise error
                if item is _DONE:
                    return
                yield item
        finally:
            self.close()

    def close(self, wait: bool = True) -> None:
        """Stop the thread (it ends within 0.1 s of finishing its item);
        ``wait``: until it has ended."""
        self._stop.set()
        if wait:
            self._thread.join()


def device_batches(
    images: Images,
    preprocessing: Preprocessing,
    batch_size: int,
    device: torch.device,
    *,
    n_jobs: int | None = None,
    gpu_decode: bool = True,
) -> Iterator[tuple[torch.Tensor, int]]:
    """Yield ``(batch, n)``: preprocessed ``(batch_size, 3, crop, crop)`` float32
    channels-last batches on ``device``, of which the first ``n`` rows are
    images (the rest pads the last batch)."""
    decode_on_gpu = gpu_decode and gpu_decoder(device) is not None
    draft = preprocessing.resize_size

    def load_item(i: int):
        if images.kind == "paths" and decode_on_gpu:
            encoded = read_encoded(images.data[i])
            if encoded.gpu_mode is not None:
                return encoded
            return pinned(decode_encoded(encoded, draft))
        return pinned(images.image(i, draft))

    def load_rows(start: int, stop: int) -> torch.Tensor:
        return pinned(images.host_rows(start, stop))

    # Sized for a GPU, which outruns any CPU decoder: the threads mostly read
    # bytes, but decode with Pillow what nvJPEG does not take (progressive
    # JPEGs are common), and the network needs no CPU cores.
    workers = n_jobs or min(GPU_READERS, os.cpu_count() or 1)
    host = images.read_ahead(load_item, load_rows, batch_size, workers, ahead=3)
    cuda = device.type == "cuda"
    stream = torch.cuda.Stream(device) if cuda else None

    def on_device():
        for raw in host:
            with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
                if isinstance(raw, torch.Tensor):
                    batch = raw.to(device, non_blocking=True)
                    if images.scale != 1.0:
                        batch = batch * images.scale
                    batch = transforms.preprocess(batch, preprocessing)
                else:
                    if cuda:  # nvJPEG writes on its own stream into memory that
                        stream.synchronize()  # this stream may still be using
                    batch = transforms.preprocess(
                        decode_batch(raw, device), preprocessing
                    )
                n = len(batch)
                if n < batch_size:
                    pad = batch.new_zeros((batch_size - n, *batch.shape[1:]))
                    batch = torch.cat([batch, pad]).contiguous(
                        memory_format=torch.channels_last
                    )
                ready = None
                if cuda:
                    ready = torch.cuda.Event()
                    ready.record(stream)
            yield batch, n, ready

    consumer = torch.cuda.current_stream(device) if cuda else None
    for batch, n, ready in Prefetcher(on_device()):
        if cuda:
            consumer.wait_event(ready)
            batch.record_stream(consumer)  # made on the side stream, used here
        yield batch, n


def preprocessed_batches(
    images: Images, preprocessing: Preprocessing, batch_size: int, device
) -> Iterator[torch.Tensor]:
    """Preprocessed batches in order: on CUDA made on the device, else the CPU path."""
    if device.type != "cuda":
        yield from images.batches(preprocessing, batch_size)
        return
    # Pillow's draft decoding, as the dataset that predicts later decodes
    batches = device_batches(
        images, preprocessing, batch_size, device, gpu_decode=False
    )
    with contextlib.closing(batches):
        for batch, n in batches:
            yield batch[:n]


def pinned(tensor: torch.Tensor) -> torch.Tensor:
    """A page-locked copy for asynchronous host-to-device copies (where CUDA is).

    Views with gaps (RGBA cut to RGB) or repeated memory (grey expanded to
    RGB) are made dense first: pinning keeps strides, and cannot copy into
    memory that several elements share.
    """
    if not (
        tensor.is_contiguous()
        or (
            tensor.ndim == 4 and tensor.is_contiguous(memory_format=torch.channels_last)
        )
    ):
        layout = torch.channels_last if tensor.ndim == 4 else torch.contiguous_format
        tensor = tensor.contiguous(memory_format=layout)
    return tensor.pin_memory() if torch.cuda.is_available() else tensor


class ResultRing:
    """Copy ``(n, width)`` device results into a host array without a stall
    per batch: each lands in one of ``depth`` pinned slots asynchronously and
    is written out once a later batch has been queued."""

    def __init__(self, out: np.ndarray, batch_size: int, device, depth: int = 3):
        self.out = out
        self.cuda = device.type == "cuda"
        self.slots = [
            torch.empty((batch_size, out.shape[1]), pin_memory=self.cuda)
            for _ in range(depth)
        ]
        self.pending: deque = deque()
        self.next_slot = 0

    def put(self, result: torch.Tensor, start: int) -> None:
        if len(self.pending) == len(self.slots):
            self._drain_one()
        slot = self.slots[self.next_slot]
        self.next_slot = (self.next_slot + 1) % len(self.slots)
        n = len(result)
        slot[:n].copy_(result, non_blocking=self.cuda)
        done = None
        if self.cuda:
            done = torch.cuda.Event()
            done.record()
        self.pending.append((done, slot, start, n))

    def _drain_one(self) -> None:
        done, slot, start, n = self.pending.popleft()
        if done is not None:
            done.synchronize()
        self.out[start : start + n] = slot[:n].numpy()

    def finish(self) -> np.ndarray:
        while self.pending:
            self._drain_one()
        return self.out


def run_on_device(
    images: Images,
    preprocessing: Preprocessing,
    forward: Callable[[torch.Tensor], torch.Tensor],
    out: np.ndarray,
    *,
    device: torch.device,
    batch_size: int,
    n_jobs: int | None,
    gpu_decode: bool,
    on_batch: Callable[[int], None],
) -> np.ndarray:
    """Fill ``out`` with ``forward`` of every image, preprocessed on ``device``.

    Meant for CUDA; runs on the CPU too (no streams, no pinning), which is how
    the tests check it against the CPU path.

    ``torch.backends.cudnn.benchmark`` is left as the caller set it: the flag
    is process-wide (toggling it per job races with other threads' jobs), and
    an autotuned algorithm can differ from the heuristic one in the last bits,
    so an image's embedding would depend on the size of the job it came in.
    Every batch has one shape, so a process that turns autotuning on pays for
    it once per model and batch size.
    """
    ring = ResultRing(out, batch_size, device)
    start = 0
    cuda = device.type == "cuda"
    with torch.cuda.device(device) if cuda else contextlib.nullcontext():
        batches = device_batches(
            images,
            preprocessing,
            batch_size,
            device,
            n_jobs=n_jobs,
            gpu_decode=gpu_decode,
        )
        with contextlib.closing(batches):  # an error stops the loader at once
            for batch, n in batches:
                with torch.inference_mode():
                    result = forward(batch)
                ring.put(result[:n], start)
                start += n
                on_batch(n)
        return ring.finish()
