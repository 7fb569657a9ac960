"""Training steps of a depthwise network's top groups on a CPU, by precision.

``FineTuneClassifier`` trains the unfrozen groups on the frozen groups'
stored outputs. On a CPU with native bfloat16, ``precision="auto"`` steps in
bfloat16 autocast but runs the trained grouped (depthwise) convolutions in
float32 (``_devices.float32_grouped_convolutions``), since their bfloat16
backward pass is slow. This times one training step (forward, backward,
AdamW) of the trained part at batch size ``--batch-size``, for each cut
point, three ways, in alternating rounds in one process:

* float32 throughout (the baseline of the ratios),
* bfloat16 throughout (grouped convolutions included),
* bfloat16 with float32 grouped convolutions (the default).

Ratios above 1 are faster than float32. A last column times the default
against itself without the hook that gives the gradient into global
pooling the channels-last layout of the maps before it
(``_finetune.data.channels_last_gradients``): above 1, the hook is faster.
Weights are random (speed does not depend on them).

    python benchmarks/bench_tail_precision.py [--model efficientnet_lite0]
        [--frozen 7,6,5] [--batch-size 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from sktransfer import FineTuneClassifier, _devices
from sktransfer._finetune.data import gradient_as_input


def trained_part(model: str, frozen_layers, batch_size: int, precision: str):
    """The network of a fitted classifier, the cut that its training steps
    run (the rest of the network from the frozen part's stored output), a
    batch of stored outputs for it, and its trainable parameters."""
    images = np.random.default_rng(0).integers(0, 255, (4, 224, 224, 3), np.uint8)
    clf = FineTuneClassifier(
        model,
        weights=None,
        frozen_layers=frozen_layers,
        max_epochs=1,
        head_epochs=0,
        device="cpu",
        precision=precision,
        random_state=0,
    ).fit(images, np.arange(4) % 2)
    cut = clf._cut("train")
    boundary = cut.activation
    features = torch.randn(batch_size, *boundary.shape)
    features = features.contiguous(memory_format=boundary.layout)
    params = [p for p in clf.module_.parameters() if p.requires_grad]
    return clf.module_, cut, features, params


FLOAT32_CONVOLUTIONS = (_devices._leave_cpu_autocast, _devices._resume_cpu_autocast)


def without(module: torch.nn.Module, hooks_off: tuple):
    """Take the hooks ``hooks_off`` off (returns a function that puts them back)."""
    removed = []
    for m in module.modules():
        for hooks in (m._forward_pre_hooks, m._forward_hooks):
            for key, hook in list(hooks.items()):
                if hook in hooks_off:
                    removed.append((hooks, key, hook))
                    del hooks[key]

    def restore():
        for hooks, key, hook in removed:
            hooks[key] = hook

    return restore


def step_time(tail, features, optimizer, dtype, seconds: float = 0.5) -> float:
    """The mean time of the steps that fit in ``seconds`` (at least 3)."""

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            out = tail(features)
        out = out[0] if isinstance(out, tuple) else out
        loss = out.float().logsumexp(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up
    steps, start = 0, time.perf_counter()
    while steps < 3 or time.perf_counter() - start < seconds:
        step()
        steps += 1
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--frozen", default="7,6,5")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(
        f"{args.model}, batch {args.batch_size}, {torch.get_num_threads()} threads; "
        "training step vs float32 (median of rounds, rounds in brackets)"
    )
    print(
        f"{'frozen_layers':>13s}  {'bfloat16 throughout':>24s}  {'default':>24s}  "
        f"{'layout hook':>24s}"
    )
    for frozen in args.frozen.split(","):
        frozen = frozen if frozen == "all" else int(frozen)
        _, tail32, features32, params32 = trained_part(
            args.model, frozen, args.batch_size, "float32"
        )
        module, tail, features, params = trained_part(
            args.model, frozen, args.batch_size, "auto"
        )
        optimizer32 = torch.optim.AdamW(params32, lr=1e-4)
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        plain, default, layout = [], [], []
        for _ in range(args.rounds):
            t32 = step_time(tail32, features32, optimizer32, None)
            restore = without(module, FLOAT32_CONVOLUTIONS)
            t_plain = step_time(tail, features, optimizer, torch.bfloat16)
            restore()
            restore = without(module, (gradient_as_input,))
            t_mixed = step_time(tail, features, optimizer, torch.bfloat16)
            restore()
            t_default = step_time(tail, features, optimizer, torch.bfloat16)
            plain.append(t32 / t_plain)
            default.append(t32 / t_default)
            layout.append(t_mixed / t_default)

        def cell(ratios):
            rounds = ", ".join(f"{r:.2f}" for r in ratios)
            return f"{statistics.median(ratios):.2f}x ({rounds})"

        print(
            f"{frozen!s:>13s}  {cell(plain):>24s}  {cell(default):>24s}  "
            f"{cell(layout):>24s}"
        )


if __name__ == "__main__":
    main()
