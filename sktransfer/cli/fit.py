"""``sktransfer fit``: train on an image folder and save the model."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from . import classifiers
from ._shared import add_common, check_folder_of

TRUST = (
    "A model file is a pickle: loading one runs code that the file chooses, so "
    "only load files you trust."
)


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "fit",
        help="train on an image folder and save the model",
        description="Train a classifier on an image folder root/<class>/<image>: "
        "CNN features + svm, knn or logreg, or a fine-tuned network (--classifier "
        "finetune, with the options of 'evaluate'). Save it, with a record of "
        "what it was trained on (classes, counts, backbone, versions), to a "
        f"model file for 'sktransfer predict --estimator'. {TRUST}",
        epilog="example: sktransfer fit flowers/ --model efficientnet_lite0 "
        "--classifier logreg -o flowers.joblib",
    )
    parser.add_argument(
        "root", metavar="ROOT", help="image folder root/<class>/<image>"
    )
    parser.add_argument(
        "-o", "--output", required=True, metavar="FILE",
        help="the model file to write (e.g. model.joblib)",
    )  # fmt: skip
    classifiers.add_options(parser)
    add_common(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..datasets import load_image_folder
    from ..persistence import save_model

    output = Path(args.output)
    check_folder_of(output, "--output")
    data = load_image_folder(args.root)
    names = np.asarray(data.target_names, dtype=object)
    if len(names) < 2:
        raise ValueError(
            f"Image folder {args.root!r} has one class ({names[0]!r}); a classifier "
            "needs at least 2 class folders."
        )
    labels = names[data.target]
    estimator = _estimator(args, np.bincount(data.target).min())
    estimator.fit(data.filenames, labels)
    record = save_model(estimator, output, y=labels, source=args.root)
    counts = ", ".join(f"{name} {n}" for name, n in record["counts"].items())
    print(
        f"Trained {classifiers.describe(args)} on {record['n_images']} images of "
        f"{len(names)} classes ({counts}); saved to {output}",
        file=sys.stderr,
    )
    return 0


def _estimator(args, smallest_class: int):
    """The fine-tuned network, or the extractor followed by the classifier's
    steps in one pipeline (which ``explain`` can look into)."""
    from sklearn.pipeline import Pipeline

    if args.classifier == "finetune":
        return classifiers.finetune(args).set_params(verbose=0 if args.quiet else 1)
    classifier = classifiers.on_features(args.classifier, smallest_class)
    if args.classifier == "svm":  # predict reports probabilities
        classifier.set_params(svc__probability=True, svc__random_state=args.seed)
    steps = [("cnnfeatureextractor", classifiers.extractor(args)), *classifier.steps]
    return Pipeline(steps)
