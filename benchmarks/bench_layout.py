"""Channels-last vs contiguous (NCHW) batches on this machine's CPU.

Times one inference forward and one training step (forward, backward, SGD
step) of torchvision models at batch size 32, 224 px, for both memory
layouts, in the same process; prints the speed-up of channels-last.

    python benchmarks/bench_layout.py [--models resnet18 mobilenet_v3_small ...]
"""

from __future__ import annotations

import argparse

import torch
import torchvision
from _common import best_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["resnet18", "mobilenet_v3_small", "vgg11"]
    )
    args = parser.parse_args()
    x = torch.randn(32, 3, 224, 224)
    layouts = {
        "NCHW": x,
        "channels-last": x.contiguous(memory_format=torch.channels_last),
    }
    y = torch.randint(0, 1000, (32,))
    print(f"batch 32 x 3 x 224 x 224, threads={torch.get_num_threads()}")
    for name in args.models:
        model = torchvision.models.get_model(name)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        for label, step in (("inference", infer), ("training step", train)):
            times = {}
            for layout, batch in layouts.items():
                step(model, optimizer, batch, y)  # warm-up
                times[layout] = best_of(
                    lambda s=step, m=model, o=optimizer, b=batch: s(m, o, b, y),
                    repeat=2,
                )
            speedup = times["NCHW"] / times["channels-last"]
            print(
                f"{name:20s} {label:14s} NCHW {times['NCHW']:.3f} s, "
                f"channels-last {times['channels-last']:.3f} s ({speedup:.2f}x)"
            )


def infer(model, _optimizer, batch, _y) -> None:
    model.eval()
    with torch.inference_mode():
        model(batch)


def train(model, optimizer, batch, y) -> None:
    model.train()
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(batch), y).backward()
    optimizer.step()


if __name__ == "__main__":
    main()
