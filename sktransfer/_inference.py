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
    gpu_decode: bool = True,
) -> np.ndarray:
    """Run ``forward`` on every preprocessed batch, under ``torch.inference_mode``.

    The ``(b, width)`` results are written into one preallocated ``(n, width)``
    array: memory holds the output plus a few batches, whatever the number of
    images. On the CPU, batches are decoded and resized in a thread pool ahead
    of the forward pass (:meth:`Images.batches`) and laid out channels-last
    (faster CPU convolutions: benchmarks/bench_layout.py). On CUDA, uint8
    images are preprocessed on the device, overlapped with the forward pass
    (:mod:`sktransfer._pipeline`); ``gpu_decode`` lets nvJPEG decode JPEGs.
    """
    from tqdm.auto import tqdm

    out = np.empty((len(images), width), dtype=dtype)
    with tqdm(total=len(images), disable=not progress, unit="img", desc=desc) as bar:
        if device.type == "cuda":
            from ._pipeline import run_on_device

            return run_on_device(
                images,
                preprocessing,
                forward,
                out,
                device=device,
                batch_size=batch_size,
                n_jobs=n_jobs,
                gpu_decode=gpu_decode,
                on_batch=bar.update,
            )
        start = 0
        for batch in images.batches(preprocessing, batch_size, n_jobs):
            batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                result = forward(batch.to(device))
            out[start : start + len(batch)] = result.cpu().numpy()
            start += len(batch)
            bar.update(len(batch))
    return out
