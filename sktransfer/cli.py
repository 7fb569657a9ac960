"""The ``sktransfer`` command: list backbones, embed, evaluate and predict images.

Every sub-command has ``--help``. Errors print one line on stderr and exit with
status 1 (2 for a wrong command line); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from pathlib import Path

import numpy as np

PROG = "sktransfer"
OUTPUT_FORMATS = (".npy", ".csv", ".parquet")


class _UsageError(Exception):
    """A wrong command line: exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise _UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def main(argv=None) -> int:
    """Run the ``sktransfer`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns the exit status: 0 on success, 1 on an error, 2 on a wrong command
    line.
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if getattr(args, "debug", False):
        with _one_line_warnings():
            return args.run(args) or 0
    try:
        with _one_line_warnings():
            return args.run(args) or 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `sktransfer predict ... | head`: stop quietly
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:  # never a traceback: one line, non-zero exit
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, (OSError, ValueError, ImportError)):
        text = f"{type(exc).__name__}: {text} (rerun with --debug for the traceback)"
    return text


@contextlib.contextmanager
def _one_line_warnings():
    """Show warnings as ``sktransfer: warning: ...`` lines, without source lines."""

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{PROG}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=ResourceWarning)
        warnings.showwarning = show
        yield


# ----------------------------------------------------------------------------- parser


def _build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(
        prog=PROG,
        description="Transfer learning with pretrained CNNs: embeddings, evaluation "
        "and ImageNet predictions for image files and folders.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    models = sub.add_parser(
        "models",
        help="list backbones, embedding widths and offline weights",
        description="List the backbone names accepted by --model, the width of "
        "their default embedding and whether their pretrained weights are "
        "available offline. Any timm model is also accepted as 'timm/<name>'.",
    )
    models.add_argument(
        "--offline", action="store_true", help="only backbones usable without network"
    )
    _common(models, model=False)
    models.set_defaults(run=_run_models)

    embed = sub.add_parser(
        "embed",
        help="write image embeddings to .npy, .csv or .parquet",
        description="Embed images with a pretrained CNN and write one row per image. "
        "INPUT is image files, a folder of images, or an image folder "
        "root/<class>/<image> (then the class is written too). .npy files get a "
        "sidecar <name>.files.csv with the file names (and classes).",
        epilog="example: sktransfer embed photos/ --model efficientnet_lite0 -o e.npy",
    )
    embed.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="image files or a folder"
    )
    embed.add_argument(
        "-o", "--output", required=True, help="output file: .npy, .csv or .parquet"
    )
    embed.add_argument(
        "--layer", default=None, help="module to tap (default: embedding)"
    )
    embed.add_argument(
        "--pooling",
        default="avg",
        choices=["avg", "max", "avgmax"],
        help="spatial pooling",
    )
    _common(embed)
    embed.set_defaults(run=_run_embed)

    evaluate = sub.add_parser(
        "evaluate",
        help="cross-validate a classifier on CNN features of an image folder",
        description="Embed an image folder root/<class>/<image> and cross-validate "
        "a classifier on the embeddings (or fine-tune the network itself with "
        "--classifier finetune); print mean and standard deviation of top-1 and "
        "top-5 accuracy across folds.",
        epilog="example: sktransfer evaluate flowers/ --model resnet18 --cv 5 "
        "--plot confusion.png",
    )
    evaluate.add_argument(
        "root", metavar="ROOT", help="image folder root/<class>/<image>"
    )
    evaluate.add_argument(
        "--classifier",
        default="svm",
        choices=list(_CLASSIFIERS),
        help="svm (RBF SVC on L2-normalised embeddings), knn (cosine k-NN, k <= 5), "
        "logreg (logistic regression on embeddings) or finetune "
        "(FineTuneClassifier trained on the images) (default: svm)",
    )
    evaluate.add_argument(
        "--epochs",
        type=_epochs,
        default="auto",
        help="finetune: training epochs, or 'auto' (FineTuneClassifier's "
        "max_epochs; default: auto)",
    )
    evaluate.add_argument(
        "--frozen-layers",
        type=_frozen_layers,
        default="all",
        help="finetune: layer groups kept frozen, 'all' or a number (default: all)",
    )
    evaluate.add_argument(
        "--backbone-lr-ratio",
        type=_positive_float,
        default=1.0,
        help="finetune: learning rate of unfrozen groups relative to the head's "
        "(default: 1.0)",
    )
    evaluate.add_argument(
        "--image-size",
        type=_int_at_least(16),
        default=None,
        help="finetune: crop size in pixels (default: the weights' own)",
    )
    evaluate.add_argument(
        "--cv", type=_int_at_least(2), default=5, help="number of folds (default: 5)"
    )
    evaluate.add_argument(
        "--plot", metavar="FILE", help="save a confusion matrix (.png)"
    )
    evaluate.add_argument(
        "--layer", default=None, help="module to tap (default: embedding)"
    )
    evaluate.add_argument("--seed", type=int, default=0, help="fold shuffling seed")
    _common(evaluate)
    evaluate.set_defaults(run=_run_evaluate)

    predict = sub.add_parser(
        "predict",
        help="print the pretrained network's top-k ImageNet categories",
        description="Print, for each image, the k most probable categories of the "
        "pretrained network's own classifier, with their probabilities.",
        epilog="example: sktransfer predict cat.jpg --model efficientnet_lite0 --top 3",
    )
    predict.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="image files or a folder"
    )
    predict.add_argument(
        "--top",
        type=_int_at_least(1),
        default=5,
        help="categories per image (default: 5)",
    )
    _common(predict)
    predict.set_defaults(run=_run_predict)
    return parser


def _common(parser: argparse.ArgumentParser, model: bool = True) -> None:
    if model:
        parser.add_argument(
            "--model",
            default="resnet18",
            help="backbone name (see 'sktransfer models'; default: resnet18)",
        )
        parser.add_argument(
            "--weights",
            default="DEFAULT",
            help="DEFAULT, a weights name (IMAGENET1K_V1), a local .pth/.safetensors "
            "file, or 'none' for a random network",
        )
        parser.add_argument("--batch-size", type=_int_at_least(1), default=32)
        parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
        parser.add_argument(
            "-q", "--quiet", action="store_true", help="no progress bar"
        )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show tracebacks instead of one-line errors",
    )


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer, got {text!r}"
            ) from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def _weights(args) -> str | None:
    return None if str(args.weights).lower() == "none" else args.weights


# ----------------------------------------------------------------------------- models


def _run_models(args) -> int:
    from ._backbones import list_backbones, weights_available

    rows = []
    for name in list_backbones(offline=args.offline):
        rows.append((name, str(_embedding_width(name)), _yes(weights_available(name))))
    _print_table(("backbone", "embedding", "offline weights"), rows)
    print("\nAlso: any timm model as 'timm/<name>'.")
    return 0


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _embedding_width(name: str) -> int | str:
    """Width of the default embedding, from a build without memory or weights."""
    from torch import nn

    from ._backbones import build_structure
    from ._tap import find_layer

    try:
        backbone = build_structure(name)
    except Exception:
        return "?"
    head = find_layer(backbone.module, backbone.head)
    if isinstance(head, nn.Linear):
        return head.in_features
    return getattr(head, "in_channels", "?")


def _print_table(header, rows) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(
                str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)
            ).rstrip()
        )


# ----------------------------------------------------------------------------- inputs


def _collect(
    inputs: list[str],
) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """File names (and labels for an image folder) from INPUT arguments.

    A single folder with class sub-folders is an image folder
    ``root/<class>/<image>``: its labels are returned too. Otherwise each
    argument is an image file, or a folder standing for the image files below
    it (sorted, hidden names skipped), in the order given.
    """
    from .datasets import IMAGE_EXTENSIONS, _class_files, load_image_folder

    if len(inputs) == 1 and os.path.isdir(inputs[0]):
        with os.scandir(inputs[0]) as scan:
            entries = list(scan)
        if any(e.is_dir() and not e.name.startswith(".") for e in entries):
            data = load_image_folder(inputs[0])
            return data.filenames, data.target, data.target_names
    filenames: list[str] = []
    for path in inputs:
        if os.path.isdir(path):
            files = _class_files(Path(path), IMAGE_EXTENSIONS, skipped=[])
            if not files:
                raise ValueError(
                    f"Folder {path!r} holds no image files (extensions: "
                    f"{', '.join(IMAGE_EXTENSIONS)})."
                )
            filenames.extend(os.path.join(path, f) for f in files)
        elif os.path.exists(path):
            filenames.append(path)
        else:
            raise FileNotFoundError(f"Input {path!r} does not exist.")
    return np.asarray(filenames), None, None


# ----------------------------------------------------------------------------- embed


def _run_embed(args) -> int:
    from ._extractor import CNNFeatureExtractor

    output = Path(args.output)
    _check_output(output)
    filenames, target, target_names = _collect(args.inputs)
    extractor = CNNFeatureExtractor(
        args.model,
        weights=_weights(args),
        layer=args.layer,
        pooling=args.pooling,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.quiet,
    )
    embeddings = extractor.fit_transform(filenames)
    labels = None if target is None else np.asarray(target_names)[target]
    columns = [str(c) for c in extractor.get_feature_names_out()]
    _write(output, embeddings, filenames, labels, columns)
    print(
        f"Wrote {embeddings.shape[0]} embeddings of width {embeddings.shape[1]} "
        f"({extractor.backbone_.name}) to {output}",
        file=sys.stderr,
    )
    return 0


def _check_output(output: Path) -> None:
    """Fail before embedding: unknown format, missing folder, missing pyarrow."""
    suffix = output.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(
            f"Cannot write {str(output)!r}: unknown format "
            f"{suffix or '(no extension)'!r}; use one of {', '.join(OUTPUT_FORMATS)}."
        )
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"Output folder {str(parent)!r} does not exist.")
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise ImportError(
                "Writing .parquet needs pyarrow, which is not installed: "
                "pip install pyarrow, or write .npy or .csv instead."
            ) from None


def sidecar_path(output: Path) -> Path:
    """``emb.npy`` -> ``emb.files.csv``: the file names (and classes) of the rows."""
    return output.with_name(output.stem + ".files.csv")


def _write(output: Path, embeddings, filenames, labels, columns) -> None:
    import csv

    suffix = output.suffix.lower()
    meta = {"filename": [str(f) for f in filenames]}
    if labels is not None:
        meta["label"] = [str(label) for label in labels]
    if suffix == ".npy":
        np.save(output, embeddings)
        with open(sidecar_path(output), "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(list(meta))
            writer.writerows(zip(*meta.values(), strict=True))
    elif suffix == ".csv":
        with open(output, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow([*meta, *columns])
            for i, row in enumerate(embeddings):
                writer.writerow(
                    [*(v[i] for v in meta.values()), *map(repr, row.tolist())]
                )
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        data = {key: pa.array(values) for key, values in meta.items()}
        data.update(
            {name: pa.array(embeddings[:, j]) for j, name in enumerate(columns)}
        )
        pq.write_table(pa.table(data), output)


# ----------------------------------------------------------------------------- evaluate


def _svm():
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer
    from sklearn.svm import SVC

    return make_pipeline(Normalizer(), SVC())


def _knn():
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    return make_pipeline(Normalizer(), KNeighborsClassifier(weights="distance"))


def _logreg():
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=2000)


def _finetune(args):
    from ._finetune import FineTuneClassifier

    return FineTuneClassifier(
        args.model,
        weights=_weights(args),
        frozen_layers=args.frozen_layers,
        max_epochs=args.epochs,
        backbone_lr_ratio=args.backbone_lr_ratio,
        image_size=args.image_size,
        batch_size=args.batch_size,
        device=args.device,
        random_state=args.seed,
    )


# On embeddings (computed once) except finetune, which trains on the images.
_CLASSIFIERS = {"svm": _svm, "knn": _knn, "logreg": _logreg, "finetune": _finetune}


def _word_or_int_at_least(word: str, low: int):
    """``word`` itself, or an integer of at least ``low``."""

    def parse(text: str):
        if text == word:
            return word
        try:
            return _int_at_least(low)(text)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"expected {word!r} or an integer >= {low}, got {text!r}"
            ) from None

    return parse


_epochs = _word_or_int_at_least("auto", 1)
_frozen_layers = _word_or_int_at_least("all", 0)


def _run_evaluate(args) -> int:
    from sklearn.model_selection import StratifiedKFold

    from .datasets import load_image_folder

    if args.plot:
        _check_plot_path(Path(args.plot))
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
    if args.classifier == "finetune":
        X, classifier = data.filenames, _finetune(args)
        what = (
            f"fine-tuned {args.model} (frozen_layers={args.frozen_layers}, "
            f"{args.epochs} epochs)"
        )
    else:
        X, width, backbone = _embed_for_evaluate(args, data.filenames)
        classifier = _CLASSIFIERS[args.classifier]()
        if args.classifier == "knn":  # at most as many neighbours as a class has
            per_class = int(counts.min() * (args.cv - 1) // args.cv)
            classifier.set_params(
                kneighborsclassifier__n_neighbors=max(1, min(5, per_class))
            )
        what = f"{backbone} embeddings ({width}) + {args.classifier}"
    cv = StratifiedKFold(args.cv, shuffle=True, random_state=args.seed)
    ks = [k for k in (1, 5) if k < len(names)]
    scores, predicted = _cross_validate(args, classifier, X, data.target, cv, ks)

    print(f"{len(X)} images, {len(names)} classes, {what}, {args.cv}-fold CV")
    rows = []
    for k in (1, 5):
        if k in ks:
            values = np.asarray(scores[k])
            rows.append((f"top-{k}", f"{values.mean():.3f} ± {values.std():.3f}"))
        else:
            rows.append((f"top-{k}", f"n/a (needs more than {k} classes)"))
    _print_table(("accuracy", "mean ± std"), rows)
    if args.plot:
        _plot_confusion(args, data.target, predicted, names)
    return 0


def _embed_for_evaluate(args, filenames):
    from ._extractor import CNNFeatureExtractor

    extractor = CNNFeatureExtractor(
        args.model,
        weights=_weights(args),
        layer=args.layer,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.quiet,
    )
    # The extractor learns nothing from the data, so embedding once and
    # cross-validating the classifier is the same as cross-validating the pipeline.
    features = extractor.fit_transform(filenames)
    return features, features.shape[1], extractor.backbone_.name


def _cross_validate(args, classifier, X, y, cv, ks):
    """Top-k scores per fold and out-of-fold predictions, in one pass."""
    from sklearn.base import clone
    from tqdm.auto import tqdm

    from ._scoring import _scores, top_k_accuracy

    scores: dict[int, list[float]] = {k: [] for k in ks}
    predicted = np.zeros(len(y), dtype=np.int64)
    folds = tqdm(
        cv.split(X, y),
        total=args.cv,
        desc=f"Cross-validating ({args.classifier})",
        unit="fold",
        disable=args.quiet,
    )
    for train, test in folds:
        fitted = clone(classifier).fit(X[train], y[train])
        classes = np.asarray(fitted.classes_)
        fold_scores = _scores(fitted, X[test], len(classes))
        for k in ks:
            scores[k].append(top_k_accuracy(y[test], fold_scores, classes, k))
        predicted[test] = fitted.predict(X[test]) if args.plot else 0
    return scores, predicted


def _check_plot_path(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"Folder {str(parent)!r} for --plot does not exist.")


def _plot_confusion(args, target, predicted, names) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    size = min(4 + 0.4 * len(names), 20)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay.from_predictions(
        names[target], names[predicted], labels=names, ax=ax, colorbar=False,
        xticks_rotation="vertical",
    )  # fmt: skip
    ax.set_title(f"{args.model} + {args.classifier}, {args.cv}-fold CV")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=100)
    plt.close(fig)
    print(f"Saved the confusion matrix to {args.plot}", file=sys.stderr)


# ----------------------------------------------------------------------------- predict


def _run_predict(args) -> int:
    from ._imagenet import ImageNetClassifier

    filenames, _, _ = _collect(args.inputs)
    clf = ImageNetClassifier(
        args.model,
        weights=_weights(args),
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.quiet,
    )
    clf.fit(filenames[:1])
    names, probabilities = clf.top_k(filenames, k=args.top)
    for filename, row_names, row_probs in zip(
        filenames, names, probabilities, strict=True
    ):
        ranked = ", ".join(
            f"{name} {p:.1%}" for name, p in zip(row_names, row_probs, strict=True)
        )
        print(f"{filename}: {ranked}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
