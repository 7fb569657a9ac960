"""Batched inference: stream images through a network into one array."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ._images import Images, Preprocessing


def stream(
    images: Images,
    preprocessing: Preprocessing,
    forward: Callable[[torch.Tensor], torch.Tensor],
    *,
    width: int,
    device: torch.device,
    batch_size: int,
    n_jobs: int | None = None,
    dtype=np.float32,
    progress: bool = False,
    desc: str = "",
) -> np.ndarray:
    """Run ``forward`` on every preprocessed batch, under ``torch.inference_mode``.

    Batches are prepared in a thread pool ahead of the forward pass (see
    :meth:`Images.batches`), laid out channels-last (1.45-1.56x faster
    inference on CPU: benchmarks/bench_layout.py; the tensor-core layout on
    GPUs), pinned for non-blocking copies on CUDA, and their ``(b, width)``
    results written into one preallocated ``(n, width)`` array:
    memory holds the output plus a few batches, whatever the number of images.
    """
    from tqdm.auto import tqdm

    out = np.empty((len(images), width), dtype=dtype)
    start = 0
    batches = images.batches(preprocessing, batch_size, n_jobs)
    with tqdm(total=len(images), disable=not progress, unit="img", desc=desc) as bar:
        for batch in batches:
            batch = batch.contiguous(memory_format=torch.channels_last)
            if device.type == "cuda":
                batch = batch.pin_memory()
            with torch.inference_mode():
                result = forward(batch.to(device, non_blocking=True))
            out[start : start + len(batch)] = result.cpu().numpy()
            start += len(batch)
            bar.update(len(batch))
    return out
