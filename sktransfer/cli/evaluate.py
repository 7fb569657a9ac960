"""``sktransfer evaluate``: cross-validate a classifier on an image folder."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import classifiers
from ._shared import add_common, check_folder_of, int_at_least, print_table


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "evaluate",
        help="cross-validate a classifier on CNN features of an image folder",
        description="Embed an image folder root/<class>/<image> and cross-validate "
        "a classifier on the embeddings (or fine-tune the network itself with "
        "--classifier finetune); print mean and standard deviation of top-1 and "
        "top-5 accuracy across folds. --report writes a page to open: the "
        "confusion matrix, precision and recall per class, and the most "
        "confidently wrong photos with what the model saw.",
        epilog="example: sktransfer evaluate flowers/ --model resnet18 --cv 5 "
        "--report flowers-report/",
    )
    parser.add_argument(
        "root", metavar="ROOT", help="image folder root/<class>/<image>"
    )
    classifiers.add_options(parser)
    parser.add_argument(
        "--cv", type=int_at_least(2), default=5, help="number of folds (default: 5)"
    )
    parser.add_argument("--plot", metavar="FILE", help="save a confusion matrix (.png)")
    parser.add_argument(
        "--report",
        metavar="DIR",
        help="write index.html, confusion.png, top_losses.png and per_class.csv "
        "to DIR (created if missing)",
    )
    add_common(parser)
    parser.set_defaults(run=run)


@dataclass
class Folds:
    """Out-of-fold results: top-k scores per fold, each image's prediction,
    the probability of its predicted class, its fold, and the fitted
    estimators (to explain their mistakes)."""

    scores: dict[int, list[float]]
    predicted: np.ndarray
    confidence: np.ndarray
    fold: np.ndarray
    estimators: list = field(default_factory=list)


def run(args) -> int:
    from sklearn.model_selection import StratifiedKFold

    from ..datasets import load_image_folder

    if args.plot:
        check_folder_of(Path(args.plot), "--plot")
    data = load_image_folder(args.root)
    names = np.asarray(data.target_names, dtype=object)
    counts = np.bincount(data.target)
    if len(names) < 2:
        raise ValueError(
            f"Image folder {args.root!r} has one class ({names[0]!r}); evaluating a "
            "classifier needs at least 2 class folders."
        )
    if counts.min() < args.cv:
        small = names[counts.argmin()]
        raise ValueError(
            f"Class {small!r} has {counts.min()} image(s), fewer than --cv {args.cv} "
            "folds: each fold needs an image of every class. Lower --cv or add images."
        )
    extractor = None
    if args.classifier == "finetune":
        X, classifier = data.filenames, classifiers.finetune(args)
        what = classifiers.describe(args)
    else:
        # The extractor learns nothing from the data: embedding once and
        # cross-validating the classifier is cross-validating the pipeline.
        extractor = classifiers.extractor(args)
        X = extractor.fit_transform(data.filenames)
        per_class = int(counts.min() * (args.cv - 1) // args.cv)
        classifier = classifiers.on_features(args.classifier, per_class)
        what = (
            f"{extractor.backbone_.name} embeddings ({X.shape[1]}) + {args.classifier}"
        )
    cv = StratifiedKFold(args.cv, shuffle=True, random_state=args.seed)
    ks = [k for k in (1, 5) if k < len(names)]
    folds = _cross_validate(args, classifier, X, data.target, cv, ks)

    print(f"{len(X)} images, {len(names)} classes, {what}, {args.cv}-fold CV")
    rows = []
    for k in (1, 5):
        if k in ks:
            values = np.asarray(folds.scores[k])
            rows.append((f"top-{k}", f"{values.mean():.3f} ± {values.std():.3f}"))
        else:
            rows.append((f"top-{k}", f"n/a (needs more than {k} classes)"))
    print_table(("accuracy", "mean ± std"), rows)
    if args.plot:
        _plot_confusion(args, data.target, folds.predicted, names)
    if args.report:
        from .report import write_report

        index = write_report(
            Path(args.report), args, data, folds, what, rows, extractor
        )
        print(f"Wrote the report to {index}", file=sys.stderr)
    return 0


def _cross_validate(args, classifier, X, y, cv, ks) -> Folds:
    """Top-k scores per fold and out-of-fold predictions, in one pass."""
    from sklearn.base import clone
    from tqdm.auto import tqdm

    from .._scoring import _scores, top_k_accuracy
    from ..inspection import softmax

    folds = Folds(
        scores={k: [] for k in ks},
        predicted=np.zeros(len(y), dtype=np.int64),
        confidence=np.zeros(len(y)),
        fold=np.zeros(len(y), dtype=np.int64),
    )
    splits = tqdm(
        cv.split(X, y),
        total=args.cv,
        desc=f"Cross-validating ({args.classifier})",
        unit="fold",
        disable=args.quiet,
    )
    for index, (train, test) in enumerate(splits):
        fitted = clone(classifier).fit(X[train], y[train])
        classes = np.asarray(fitted.classes_)
        scores = _scores(fitted, X[test], len(classes))
        for k in ks:
            folds.scores[k].append(top_k_accuracy(y[test], scores, classes, k))
        if args.classifier == "finetune":  # its predict is this argmax
            folds.predicted[test] = classes[np.asarray(scores).argmax(1)]
        else:
            folds.predicted[test] = fitted.predict(X[test])
        folds.fold[test] = index
        if args.report:  # the probability of the predicted class
            proba = np.asarray(scores, dtype=np.float64)
            if not hasattr(fitted, "predict_proba"):  # decision scores
                proba = softmax(proba)
            folds.confidence[test] = proba.max(1)
            folds.estimators.append(fitted)
    return folds


def _plot_confusion(args, target, predicted, names) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..inspection import plot_confusion_matrix

    ax = plot_confusion_matrix(
        names[target],
        names[predicted],
        labels=names,
        title=f"{args.model} + {args.classifier}, {args.cv}-fold CV",
    )
    ax.figure.savefig(args.plot, dpi=100)
    plt.close(ax.figure)
    print(f"Saved the confusion matrix to {args.plot}", file=sys.stderr)
