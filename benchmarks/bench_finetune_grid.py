"""A grid search over fine-tuning settings against one fit: frozen work done once.

    GridSearchCV(FineTuneClassifier(model), {"frozen_layers": ["all", <top group>],
                 "lr": [1e-3, 3e-3]}, cv=3)

on ``--n`` photos of an image folder (stratified sample, seed 0), as a ratio
to one ``FineTuneClassifier(model).fit`` on the same photos. Each side runs
in a fresh process (empty stores, nothing built yet), ``--repeat`` times,
alternating; the ratio is of the medians. Without reuse the grid costs 13
fits (12 candidate-folds and the refit), most of them more expensive than
the default one; with the store of frozen outputs (``cache="memory"``, the
default) each photo goes through the frozen part once per cut point,
predictions of test folds take the stored outputs, and the top group's
candidates train their head alone on the head-only candidates' stored
outputs. ``--cache none`` shows the grid without the store.

    python benchmarks/bench_finetune_grid.py ROOT [--model efficientnet_lite0]
        [--n 120] [--cache memory|none] [--device cpu] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import torch
from sklearn.model_selection import GridSearchCV, train_test_split

from sktransfer import FineTuneClassifier, layer_groups, load_image_folder


def side(args) -> dict:
    """One side, in this process: its wall time (and the grid's scores)."""
    data = load_image_folder(args.root)
    paths = np.asarray(data.filenames)
    y = np.asarray(data.target_names)[data.target]
    index, _ = train_test_split(
        np.arange(len(y)), train_size=args.n, stratify=y, random_state=0
    )
    X, y = paths[index], y[index]
    top = len(layer_groups(args.model)) - 1
    cache = None if args.cache == "none" else "memory"
    estimator = FineTuneClassifier(
        args.model, cache=cache, device=args.device, random_state=0
    )
    start = time.perf_counter()
    if args.side == "fit":
        estimator.fit(X, y)
        return {"seconds": time.perf_counter() - start}
    grid = {"frozen_layers": ["all", top], "lr": [1e-3, 3e-3]}
    search = GridSearchCV(estimator, grid, cv=3).fit(X, y)
    seconds = time.perf_counter() - start
    results = search.cv_results_
    scores = [
        f"{params}: {score:.3f}"
        for params, score in zip(
            results["params"], results["mean_test_score"], strict=True
        )
    ]
    return {"seconds": seconds, "scores": scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--n", type=int, default=120)
    parser.add_argument("--cache", default="memory", choices=["memory", "none"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--side", choices=["fit", "grid"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:  # a fresh process's one side
        print(json.dumps(side(args)))
        return

    def fresh(which: str) -> dict:
        command = [sys.executable, __file__, *sys.argv[1:], "--side", which]
        out = subprocess.run(command, check=True, capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    fits, grids = [], []
    for _ in range(args.repeat):
        fits.append(fresh("fit")["seconds"])
        grid = fresh("grid")
        grids.append(grid["seconds"])
    t_fit, t_grid = float(np.median(fits)), float(np.median(grids))
    print(
        f"{args.model} on {args.n} photos of {args.root}; cache={args.cache} "
        f"device={args.device} threads={torch.get_num_threads()}; "
        f"medians of {args.repeat} runs, each side in a fresh process"
    )
    print(f"one default fit:                      1.00  ({t_fit:.1f} s)")
    print(
        f"GridSearchCV, 4 candidates x 3 folds: {t_grid / t_fit:.2f}  ({t_grid:.1f} s)"
    )
    runs = ", ".join(f"{g / f:.2f}" for f, g in zip(fits, grids, strict=True))
    print(f"  run by run: {runs}")
    for line in grid["scores"]:
        print(f"  {line}")


if __name__ == "__main__":
    main()
