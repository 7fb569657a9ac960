"""Frozen fine-tuning: FineTuneClassifier vs skorch's Freezer recipe.

    FineTuneClassifier(model, frozen_layers="all", augment=False, max_epochs=10)

against skorch's transfer-learning recipe with the same backbone, new head,
epochs, batch size and optimizer: a ``NeuralNetClassifier`` whose module is the
backbone with a new head and a ``Freezer`` callback freezing everything but the
head (its forward pass runs through the whole network every epoch). To favour
the recipe, its images are preprocessed once up front. Both are reported as
ratios to one plain ``CNNFeatureExtractor.transform`` pass over the same
training images, measured in the same process (floor: FineTuneClassifier
<= 2x one pass).

    python benchmarks/bench_finetune_frozen.py [--model resnet18] [--n 64] [--epochs 10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _common import best_of, photos
from skorch import NeuralNetClassifier
from skorch.callbacks import Freezer

from sktransfer import CNNFeatureExtractor, FineTuneClassifier
from sktransfer._backbones import build_backbone
from sktransfer._families import replace_head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    X = photos(args.n, size=(256, 256))
    y = np.array(["cat", "coffee", "astronaut", "rocket"])[np.arange(args.n) % 4]
    common = dict(max_epochs=args.epochs, batch_size=args.batch_size, lr=1e-2)

    extractor = CNNFeatureExtractor(args.model, weights=None).fit(X[:1])
    extractor.transform(X[:8])  # warm-up
    t_pass = best_of(lambda: extractor.transform(X), args.repeat)

    def ours():
        clf = FineTuneClassifier(
            args.model,
            weights=None,
            frozen_layers="all",
            augment=False,
            cache=None,  # the prefix once per fit: repeats must not share it
            random_state=0,
            device="cpu",
            **common,
        )
        clf.fit(X, y)
        assert clf.prefix_cached_

    t_ours = best_of(ours, args.repeat)

    # skorch's recipe: same backbone and new head, Freezer on all but the head.
    backbone = build_backbone(args.model, weights=None)
    module = backbone.module
    replace_head(module, backbone.head, 4)
    head = backbone.head
    X_pre = torch.cat(list(backbone_batches(X, backbone.preprocessing)))
    y_idx = np.unique(y, return_inverse=True)[1].astype(np.int64)

    def recipe():
        net = NeuralNetClassifier(
            module,
            criterion=torch.nn.CrossEntropyLoss,
            optimizer=torch.optim.AdamW,
            iterator_train__shuffle=True,
            train_split=None,
            callbacks=[Freezer(lambda name: not name.startswith(head + "."))],
            verbose=0,
            **common,
        )
        net.fit(X_pre, y_idx)

    t_recipe = best_of(recipe, args.repeat)

    print(
        f"model={args.model} n={args.n} epochs={args.epochs} "
        f"batch_size={args.batch_size} threads={torch.get_num_threads()}"
    )
    print(f"one plain transform pass:                 1.00  ({t_pass:.1f} s)")
    print(
        f"FineTuneClassifier (prefix once):         {t_ours / t_pass:.2f}"
        f"  ({t_ours:.1f} s)"
    )
    print(
        f"skorch Freezer recipe (preprocessed):     {t_recipe / t_pass:.2f}"
        f"  ({t_recipe:.1f} s)"
    )
    print(f"speed-up over the recipe:                 {t_recipe / t_ours:.1f}x")


def backbone_batches(X, preprocessing, batch_size=64):
    for start in range(0, len(X), batch_size):
        batch = torch.from_numpy(X[start : start + batch_size]).permute(0, 3, 1, 2)
        yield preprocessing(batch)


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - start:.0f} s")
