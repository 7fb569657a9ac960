"""``sktransfer predict --estimator`` against the estimator's own ``predict``.

Fits a model on ``--train`` photos of an image folder (features +
``StandardScaler`` + ``LogisticRegression``, or ``--finetune``) and saves it
with :func:`sktransfer.save_model`; then, for ``--n`` other photos of the
folder, times in fresh processes, alternating, ``--repeat`` times:

* the estimator's own ``predict`` on the file paths in Python (the model
  loaded beforehand: the call alone), the baseline;
* the whole command ``sktransfer predict LIST.txt --estimator MODEL -q``
  (start-up, imports, loading the model, reading the files, printing).

The ratio is the baseline's median over the command's: the command's speed
relative to the estimator's own.

    python benchmarks/bench_cli_predict.py ROOT [--n 1000] [--train 100]
        [--finetune] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BASELINE = """
import json, sys, time
from sktransfer import load_model
files = open(sys.argv[1]).read().split()
estimator = load_model(sys.argv[2]).estimator
start = time.perf_counter()
estimator.predict(files)
print(json.dumps(time.perf_counter() - start))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--train", type=int, default=100)
    parser.add_argument("--finetune", action="store_true")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--model", default="efficientnet_lite0")
    args = parser.parse_args()

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from sktransfer import (
        CNNFeatureExtractor,
        FineTuneClassifier,
        load_image_folder,
        save_model,
    )

    data = load_image_folder(args.root)
    paths = np.asarray(data.filenames)
    y = np.asarray(data.target_names)[data.target]
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[: args.train], order[args.train : args.train + args.n]
    estimator = (
        FineTuneClassifier(args.model, random_state=0)
        if args.finetune
        else make_pipeline(
            CNNFeatureExtractor(args.model),
            StandardScaler(),
            LogisticRegression(C=0.1, max_iter=3000),
        )
    )
    estimator.fit(paths[train], y[train])
    folder = Path(tempfile.mkdtemp())
    model, listed = folder / "model.joblib", folder / "photos.txt"
    save_model(estimator, model, y=y[train])
    listed.write_text("\n".join(paths[test]) + "\n")
    command = [sys.executable, "-m", "sktransfer.cli", "predict", str(listed),
               "--estimator", str(model), "-q"]  # fmt: skip

    python, cli = [], []
    for _ in range(args.repeat):
        out = subprocess.run(
            [sys.executable, "-c", BASELINE, str(listed), str(model)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        python.append(json.loads(out.stdout.strip().splitlines()[-1]))
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, text=True)
        cli.append(time.perf_counter() - start)
    t_python, t_cli = float(np.median(python)), float(np.median(cli))
    kind = "FineTuneClassifier" if args.finetune else "features + LogReg"
    print(f"{kind} ({args.model}) on {len(test)} photos of {args.root}")
    print(f"estimator.predict in Python (call only): {t_python:6.1f} s")
    print(f"sktransfer predict --estimator (whole):  {t_cli:6.1f} s")
    print(f"speed of the command vs Python:          {t_python / t_cli:6.2f}x")


if __name__ == "__main__":
    main()
