"""``sktransfer predict``: each image's most probable classes.

With ``--estimator``, the classes of a model file that ``sktransfer fit`` (or
:func:`~sktransfer.save_model`) wrote; without, the pretrained network's own
ImageNet categories. Images go in chunks: a file that cannot be read is
reported by name and skipped, and the others are predicted.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import numpy as np

from ._shared import UsageError, add_common, check_folder_of, collect, int_at_least
from .fit import TRUST

CHUNK = 512  # images per call: a file that fails costs at most one chunk again
SKIPPED = 3  # exit status when some files could not be read


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "predict",
        help="print each image's most probable classes",
        description="Print, for each image, the k most probable classes with their "
        "probabilities: of a model file written by 'sktransfer fit' "
        "(--estimator), or else the pretrained network's ImageNet categories "
        "(--model). INPUT is image files, folders, glob patterns ('photos/*.jpg') "
        "or .txt files listing image paths. Files that cannot be read are "
        f"reported and skipped (exit status {SKIPPED}). {TRUST}",
        epilog="examples: sktransfer predict photos/ --estimator flowers.joblib "
        "--csv predictions.csv; sktransfer predict cat.jpg --model "
        "efficientnet_lite0 --top 3",
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT",
        help="image files, folders, globs or .txt lists of paths",
    )  # fmt: skip
    parser.add_argument(
        "--estimator", metavar="FILE",
        help="a model file from 'sktransfer fit' (default: ImageNet categories)",
    )  # fmt: skip
    parser.add_argument(
        "--top", type=int_at_least(1), default=None,
        help="classes per image (default: 5, or all when there are fewer)",
    )  # fmt: skip
    parser.add_argument(
        "--csv", metavar="FILE",
        help="write filename, class_1, probability_1, ... rows to FILE",
    )  # fmt: skip
    add_common(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from tqdm.auto import tqdm

    if args.csv:
        check_folder_of(Path(args.csv), "--csv")
    filenames, _, _ = collect(args.inputs)
    estimator = _estimator(args, filenames)
    classes = np.asarray(estimator.classes_)
    top = min(5, len(classes)) if args.top is None else args.top
    if top > len(classes):
        raise UsageError(
            f"sktransfer predict: error: --top {top} is more than the "
            f"{len(classes)} classes of the model"
        )
    skipped: dict[str, str] = {}
    with (
        _writer(args.csv, args.top) as write,
        tqdm(
            total=len(filenames), desc="Predicting", unit="image", disable=args.quiet
        ) as bar,
    ):
        for start in range(0, len(filenames), CHUNK):
            chunk = [str(f) for f in filenames[start : start + CHUNK]]
            done, proba = _predict(estimator, chunk, skipped)
            for filename, row in zip(done, proba, strict=True):
                best = np.argsort(-row, kind="stable")[:top]
                write(filename, classes[best], row[best])
            bar.update(len(chunk))
    for filename, reason in skipped.items():
        print(f"sktransfer: skipped {filename!r}: {reason}", file=sys.stderr)
    if skipped:
        print(
            f"sktransfer: {len(skipped)} of {len(filenames)} files could not be "
            "read and were skipped",
            file=sys.stderr,
        )
        return SKIPPED
    return 0


def _estimator(args, filenames):
    if args.estimator:
        from ..persistence import load_model

        estimator = load_model(args.estimator).estimator
        _check_takes_images(estimator, args.estimator)
        if hasattr(estimator, "set_params") and "device" in estimator.get_params():
            estimator.set_params(device=args.device)  # saved on a GPU, here a CPU
        return estimator
    from .._imagenet import ImageNetClassifier
    from ._shared import weights

    clf = ImageNetClassifier(
        args.model,
        weights=weights(args),
        batch_size=args.batch_size,
        device=args.device,
    )
    return clf.fit(filenames[:1])


def _check_takes_images(estimator, path) -> None:
    """A model file's estimator must take image files (its first step, in a
    pipeline, tagged for string input: the paths)."""
    from sklearn.pipeline import Pipeline
    from sklearn.utils import get_tags

    first = estimator
    while isinstance(first, Pipeline):
        first = first.steps[0][1]
    if not get_tags(first).input_tags.string or not hasattr(estimator, "classes_"):
        raise ValueError(
            f"Model file {str(path)!r} holds {type(estimator).__name__}, which does "
            "not classify image files; predict needs a FineTuneClassifier, an "
            "ImageNetClassifier or a Pipeline starting with a CNNFeatureExtractor "
            "(what 'sktransfer fit' saves)."
        )


def _predict(
    estimator, chunk: list[str], skipped: dict
) -> tuple[list[str], np.ndarray]:
    """The probabilities of the readable files of ``chunk``; the others go to
    ``skipped`` with the reason."""
    from ..exceptions import ImageDecodeError
    from ..inspection import probabilities

    pending = []
    for filename in chunk:  # cheap checks first: gone, a folder, unreadable
        if not os.path.isfile(filename):
            skipped[filename] = "no such file"
        elif not os.access(filename, os.R_OK):
            skipped[filename] = "permission denied"
        else:
            pending.append(filename)
    while pending:
        try:
            return pending, probabilities(estimator, pending)
        except (ImageDecodeError, OSError) as exc:  # names the file it failed on
            bad = getattr(exc, "path", None) or getattr(exc, "filename", None)
            if bad not in pending:
                raise
            skipped[bad] = " ".join(str(exc).split())
            pending.remove(bad)
    return [], np.empty((0, 0))


class _writer:
    """Each image's classes as a line on stdout, or as a CSV row."""

    def __init__(self, path: str | None, top: int):
        self.path, self.top = path, top

    def __enter__(self):
        if self.path is None:
            return self._print
        self.handle = open(self.path, "w", newline="", encoding="utf-8")
        self.rows = csv.writer(self.handle)
        header = ["filename"]
        for k in range(1, self.top + 1):
            header += [f"class_{k}", f"probability_{k}"]
        self.rows.writerow(header)
        return self._row

    def __exit__(self, *exc):
        if self.path is not None:
            self.handle.close()
            if exc[0] is None:
                print(f"Wrote the predictions to {self.path}", file=sys.stderr)

    @staticmethod
    def _print(filename, names, probabilities) -> None:
        ranked = ", ".join(
            f"{name} {p:.1%}" for name, p in zip(names, probabilities, strict=True)
        )
        print(f"{filename}: {ranked}")

    def _row(self, filename, names, probabilities) -> None:
        row = [filename]
        for name, p in zip(names, probabilities, strict=True):
            row += [name, f"{p:.6f}"]
        self.rows.writerow(row)
