"""The classifiers that ``evaluate`` cross-validates and ``fit`` trains."""

from __future__ import annotations

from ._shared import int_at_least, positive_float, weights, word_or_int_at_least

NAMES = ("svm", "knn", "logreg", "finetune")


def add_options(parser) -> None:
    """``--classifier`` and the fine-tuning options."""
    parser.add_argument(
        "--classifier",
        default="svm",
        choices=NAMES,
        help="svm (RBF SVC on L2-normalised embeddings), knn (cosine k-NN, k <= 5), "
        "logreg (standardised embeddings, logistic regression) or finetune "
        "(FineTuneClassifier trained on the images) (default: svm)",
    )
    parser.add_argument(
        "--epochs",
        type=word_or_int_at_least("auto", 1),
        default="auto",
        help="finetune: training epochs, or 'auto' (FineTuneClassifier's "
        "max_epochs; default: auto)",
    )
    parser.add_argument(
        "--frozen-layers",
        type=word_or_int_at_least("all", 0),
        default="all",
        help="finetune: layer groups kept frozen, 'all' or a number (default: all)",
    )
    parser.add_argument(
        "--backbone-lr-ratio",
        type=positive_float,
        default=1.0,
        help="finetune: learning rate of unfrozen groups relative to the head's "
        "(default: 1.0)",
    )
    parser.add_argument(
        "--image-size",
        type=int_at_least(16),
        default=None,
        help="finetune: crop size in pixels (default: the weights' own)",
    )
    parser.add_argument(
        "--layer", default=None, help="module to tap (default: embedding)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")


def on_features(name: str, smallest_class: int):
    """The classifier ``name`` for embeddings (``knn``: at most as many
    neighbours as the smallest class has images)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler
    from sklearn.svm import SVC

    if name == "svm":
        return make_pipeline(Normalizer(), SVC())
    if name == "knn":
        k = max(1, min(5, smallest_class))
        return make_pipeline(
            Normalizer(), KNeighborsClassifier(n_neighbors=k, weights="distance")
        )
    return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))


def extractor(args):
    from .._extractor import CNNFeatureExtractor

    return CNNFeatureExtractor(
        args.model,
        weights=weights(args),
        layer=args.layer,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.quiet,
    )


def finetune(args):
    from .._finetune import FineTuneClassifier

    return FineTuneClassifier(
        args.model,
        weights=weights(args),
        frozen_layers=args.frozen_layers,
        max_epochs=args.epochs,
        backbone_lr_ratio=args.backbone_lr_ratio,
        image_size=args.image_size,
        batch_size=args.batch_size,
        device=args.device,
        random_state=args.seed,
    )


def describe(args) -> str:
    if args.classifier == "finetune":
        return (
            f"fine-tuned {args.model} (frozen_layers={args.frozen_layers}, "
            f"{args.epochs} epochs)"
        )
    return f"{args.model} embeddings + {args.classifier}"
