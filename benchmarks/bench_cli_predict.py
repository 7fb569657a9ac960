"""``sktransfer predict --estimator`` against the estimator's own ``predict``.

Fits a model on ``--train`` photos of an image folder (features +
``StandardScaler`` + ``LogisticRegression``, or ``--finetune``) and saves it
with :func:`sktransfer.save_model`; then, for ``--n`` other photos of the
folder, times in fresh processes, alternating, ``--repeat`` times:

* the estimator's own ``predict`` on the file paths in Python (the model
  loaded beforehand: the call alone), the baseline;
* the whole command ``sktransfer predict LIST.txt --estimator MODEL -q``
  (start-up, imports, loading the model, reading the files, printing);
* the same command on one photo: its fixed cost (Python, torch,
  torchvision and scikit-learn imports, loading the model);
* ``sktransfer predict --help``, and the imports a saved model needs, each
  in the order unpickling meets them (torch, torchvision, scikit-learn,
  timm: the time of each on top of those before it).

Two ratios of the baseline's median: over the whole command's (the
command's speed end to end), and over the whole command's less its fixed
cost (the speed at which it goes through photos).

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

IMPORTS = """
import json, time
seconds = {}
for name in ("torch", "torchvision", "sklearn.linear_model", "timm"):
    start = time.perf_counter()
    __import__(name)
    seconds[name] = time.perf_counter() - start
print(json.dumps(seconds))
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
    one = folder / "one.txt"
    one.write_text(paths[test][0] + "\n")

    def command(files: Path) -> float:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "sktransfer.cli", "predict", str(files),
             "--estimator", str(model), "-q"],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        return time.perf_counter() - start

    python, cli, fixed, helps, imports = [], [], [], [], []
    for _ in range(args.repeat):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "sktransfer.cli", "predict", "--help"],
            check=True, capture_output=True,
        )  # fmt: skip
        helps.append(time.perf_counter() - start)
        out = subprocess.run(
            [sys.executable, "-c", IMPORTS], check=True, capture_output=True, text=True
        )
        imports.append(json.loads(out.stdout.strip().splitlines()[-1]))
        out = subprocess.run(
            [sys.executable, "-c", BASELINE, str(listed), str(model)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        python.append(json.loads(out.stdout.strip().splitlines()[-1]))
        cli.append(command(listed))
        fixed.append(command(one))
    t_python, t_cli = float(np.median(python)), float(np.median(cli))
    t_fixed = float(np.median(fixed))
    kind = "FineTuneClassifier" if args.finetune else "features + LogReg"
    print(f"{kind} ({args.model}) on {len(test)} photos of {args.root}")
    print(f"estimator.predict in Python (call only): {t_python:6.1f} s")
    print(f"sktransfer predict --estimator (whole):  {t_cli:6.1f} s")
    print(f"  of which fixed (the command on 1 photo): {t_fixed:6.1f} s")
    print(f"speed of the command vs Python, end to end: {t_python / t_cli:6.2f}x")
    print(
        "speed of the command vs Python, photos:     "
        f"{t_python / max(t_cli - t_fixed, 1e-9):6.2f}x"
    )
    print(f"sktransfer predict --help:                {np.median(helps):6.2f} s")
    for name in imports[0]:
        seconds = float(np.median([run[name] for run in imports]))
        print(f"  import {name + ':':<34}{seconds:6.2f} s")


if __name__ == "__main__":
    main()
