"""Extractor throughput vs a bare ``torch.inference_mode()`` forward.

Both run the same model at the same batch size and the same precision in the
same process: the bare forward runs under the autocast dtype the extractor
resolves ``--precision`` to (``"auto"``: bfloat16 on CPUs that run it
natively, else float32). The bare forward starts from ready, preprocessed
channels-last tensors; the extractor starts from uint8 arrays or JPEG files
(decoding and resizing included). Prints throughput ratios (extractor / bare;
1.0 = no overhead).

    python benchmarks/bench_extractor.py [--model resnet18] [--n 256]
        [--batch-size 32] [--precision auto]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from _common import best_of, photos, write_jpegs

from sktransfer import CNNFeatureExtractor
from sktransfer._devices import autocast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()

    images = photos(args.n)
    extractor = CNNFeatureExtractor(
        args.model,
        weights=None,
        batch_size=args.batch_size,
        device="cpu",
        precision=args.precision,
    )
    extractor.fit(images[:1])
    cpu = torch.device("cpu")
    dtype = extractor._autocast_dtype(cpu)  # what the extractor runs under
    module = extractor.backbone_.module.eval()
    prep = extractor.backbone_.preprocessing
    ready = prep(torch.from_numpy(images).permute(0, 3, 1, 2))
    # The baseline at its fastest layout: channels-last (as the extractor runs).
    ready = ready.contiguous(memory_format=torch.channels_last)

    def bare() -> None:
        with torch.inference_mode(), autocast(cpu, dtype):
            for start in range(0, len(ready), args.batch_size):
                module(ready[start : start + args.batch_size])

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(images, Path(tmp))
        extractor.transform(images[: args.batch_size])  # warm-up
        runs = {
            "bare": bare,
            "arrays": lambda: extractor.transform(images),
            "paths": lambda: extractor.transform(paths),
        }
        # Interleaved rounds, best of each: drifts of the machine hit all three.
        best = {name: float("inf") for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                best[name] = min(best[name], best_of(run, repeat=1))
        t_bare, t_arrays, t_paths = best["bare"], best["arrays"], best["paths"]

    print(
        f"model={args.model} n={args.n} batch_size={args.batch_size} "
        f"images={images.shape[1]}x{images.shape[2]} threads={torch.get_num_threads()} "
        f"precision={args.precision} ({dtype or torch.float32})"
    )
    print(f"bare forward:           {args.n / t_bare:7.1f} img/s (1.00)")
    print(
        f"extractor, uint8 array: {args.n / t_arrays:7.1f} img/s "
        f"({t_bare / t_arrays:.2f}x bare)"
    )
    print(
        f"extractor, JPEG paths:  {args.n / t_paths:7.1f} img/s "
        f"({t_bare / t_paths:.2f}x bare)"
    )


if __name__ == "__main__":
    main()
