"""The fixed costs of a fine-tuning fit that a grid search pays once per fit.

Four ratios, each against its baseline measured in the same run (best of
``--repeat`` timings):

* a training step of the new head on stored embeddings (``--batch`` x 1280 ->
  512 -> 10 classes, dropout 0.5, fused AdamW, label smoothing) under a fit's
  own generators (``FitRandomness``: dropout masks of float32 uniforms,
  every torch call through a torch function mode) against the same step
  with torch's dropout and no mode, and the two masks' draws alone;
* a head-only fit's training step (skorch's loop, the cut run from stored
  rows, fetching them, callbacks; float32, random weights, ``4 * --batch``
  images) against that bare step, taken from the epochs' durations;
* a fit's network taken as a copy of the last build
  (``_backbones.trainable_backbone``) against building it again
  (``build_backbone``: the model, and the weights file read);
* hashing the network's weights (what keys stored rows, for every fit and
  prediction that uses the store) against one forward pass of ``--batch``
  images at 224 px (random weights: speed does not depend on them).

    python benchmarks/bench_fit_overheads.py [--model efficientnet_lite0]
        [--batch 32] [--repeat 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from sktransfer import FineTuneClassifier, _cache
from sktransfer._backbones import build_backbone, trainable_backbone
from sktransfer._finetune.head import new_head
from sktransfer._randomness import FitRandomness


def best_of(repeat: int, run, number: int = 1) -> float:
    """The fastest of ``repeat`` timings of ``number`` calls, per call."""
    run()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            run()
        times.append((time.perf_counter() - start) / number)
    return min(times)


def head_step(batch: int, seeded: bool):
    torch.manual_seed(0)
    head = new_head(1280, 10, 512, 0.5).train()
    x, y = torch.randn(batch, 1280), torch.randint(10, (batch,))
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, fused=True)

    def step():
        loss = criterion(head(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    if not seeded:
        return step
    randomness = FitRandomness(0)

    def seeded_step():
        with randomness:
            step()

    return seeded_step


def fit_step(model: str, batch: int, repeat: int) -> float:
    """The fastest of ``repeat`` head-only fits' mean time per step."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4 * batch, 64, 64, 3), dtype=np.uint8)
    labels = np.arange(4 * batch) % 10
    clf = FineTuneClassifier(
        model,
        weights=None,
        image_size=64,
        max_epochs=50,
        batch_size=batch,
        precision="float32",
        device="cpu",
        random_state=0,
    )
    times = []
    for _ in range(repeat):
        history = clf.fit(images, labels).history_
        steps = sum(len(epoch["batches"]) for epoch in history)
        times.append(sum(epoch["dur"] for epoch in history) / steps)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    r = args.repeat

    x = torch.randn(args.batch, 1280)
    randomness = FitRandomness(0)

    def our_dropout():
        with randomness:
            nn.functional.dropout(x, 0.5, True)

    torch_mask = best_of(r, lambda: nn.functional.dropout(x, 0.5, True), 200)
    our_mask = best_of(r, our_dropout, 200)
    torch_step = best_of(r, head_step(args.batch, seeded=False), 200)
    our_step = best_of(r, head_step(args.batch, seeded=True), 200)
    in_fit = fit_step(args.model, args.batch, r)
    build = best_of(r, lambda: build_backbone(args.model))
    copied = best_of(r, lambda: trainable_backbone(args.model))

    print(f"threads={torch.get_num_threads()}; best of {r}")
    print(f"head step, torch -> a fit's own generators: {torch_step / our_step:.2f}x")
    print(f"dropout on {args.batch}x1280 alone:  {torch_mask / our_mask:.2f}x faster")
    print(f"head step, bare -> in a fit:  {in_fit / our_step:.2f}x the time")
    print(f"{args.model}: build -> copy of the last: {build / copied:.2f}x faster")
    module = build_backbone(args.model, None).module.eval()
    named = [*module.named_parameters(), *module.named_buffers()]
    digest = best_of(r, lambda: _cache.tensors_digest(named))
    x = torch.randn(args.batch, 3, 224, 224)
    with torch.inference_mode():
        forward = best_of(r, lambda: module(x))
    print(
        f"{args.model}: hashing its weights: {digest / forward:.2f}x "
        f"a forward pass of {args.batch} images"
    )


if __name__ == "__main__":
    main()
