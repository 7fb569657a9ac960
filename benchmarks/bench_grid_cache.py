"""GridSearchCV over an SVM's C, with and without the embedding cache.

    GridSearchCV(Pipeline([("cnn", CNNFeatureExtractor(..., cache="memory")),
                           ("svm", SVC())]), {"svm__C": [0.1, 1, 10, 100]}, cv=5)

Reported as ratios to one plain ``transform`` pass over the same images,
measured in the same process (floor: cached <= 1.5x one pass).

    python benchmarks/bench_grid_cache.py [--model resnet18] [--n 60] [--skip-uncached]
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import best_of, photos
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC

from sktransfer import CNNFeatureExtractor
from sktransfer._cache import memory_cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument(
        "--skip-uncached", action="store_true", help="skip the slow baseline"
    )
    args = parser.parse_args()

    X = photos(args.n, size=(256, 256))
    y = np.arange(args.n) % 3
    grid = {"svm__C": [0.1, 1, 10, 100]}

    def search(cache):
        pipe = Pipeline(
            [
                ("cnn", CNNFeatureExtractor(args.model, weights=None, cache=cache)),
                ("svm", SVC()),
            ]
        )
        GridSearchCV(pipe, grid, cv=5).fit(X, y)

    plain = CNNFeatureExtractor(args.model, weights=None).fit(X[:1])
    plain.transform(X[:8])  # warm-up
    t_pass = best_of(lambda: plain.transform(X))

    def cached_search():
        memory_cache().clear()  # every repetition starts cold
        search("memory")

    t_cached = best_of(cached_search)
    print(
        f"model={args.model} n={args.n} grid=4 values of C, cv=5 (21 fits incl. refit)"
    )
    print("one plain transform pass:      1.00")
    print(f"GridSearchCV, cache='memory':  {t_cached / t_pass:.2f}x one pass")
    if not args.skip_uncached:
        t_uncached = best_of(lambda: search(None), repeat=1)
        print(f"GridSearchCV, no cache:        {t_uncached / t_pass:.2f}x one pass")


if __name__ == "__main__":
    main()
