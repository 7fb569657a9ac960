"""``evaluate --report DIR``: the cross-validation as files a user opens.

``index.html`` shows the accuracy, the confusion matrix (``confusion.png``),
precision, recall and F1 of every class (also ``per_class.csv``) and the
most confidently wrong photos with what the model saw in them
(``top_losses.png``), all from the out-of-fold predictions that ``evaluate``
computes anyway.
"""

from __future__ import annotations

import csv
import datetime
import html
import shlex
import sys
from pathlib import Path

import numpy as np

TOP_LOSSES = 12


def write_report(folder: Path, args, data, folds, what: str, rows, extractor) -> Path:
    """Write the report of ``evaluate`` to ``folder``; return its page."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_fscore_support

    from ..inspection import plot_confusion_matrix

    folder.mkdir(parents=True, exist_ok=True)
    names = np.asarray(data.target_names, dtype=object)
    y, predicted = data.target, folds.predicted

    ax = plot_confusion_matrix(
        names[y], names[predicted], labels=names, title=f"{what}, {args.cv}-fold CV"
    )
    ax.figure.savefig(folder / "confusion.png", dpi=100)
    plt.close(ax.figure)

    precision, recall, f1, support = precision_recall_fscore_support(
        y, predicted, labels=np.arange(len(names)), zero_division=0
    )
    per_class = list(zip(names, precision, recall, f1, support, strict=True))
    with open(folder / "per_class.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "precision", "recall", "f1", "images"])
        for name, p, r, f, n in per_class:
            writer.writerow([name, f"{p:.4f}", f"{r:.4f}", f"{f:.4f}", int(n)])

    losses, with_maps = _top_losses(folder, args, data, folds, extractor)
    page = folder / "index.html"
    page.write_text(
        _page(args, data, what, rows, per_class, losses, with_maps), encoding="utf-8"
    )
    return page


def _top_losses(folder: Path, args, data, folds, extractor) -> tuple[int, bool]:
    """Draw the most confidently wrong photos (with heat maps where the
    classifier can be explained); return how many and whether with maps."""
    import matplotlib.pyplot as plt

    from .._images import check_images
    from ..inspection import explain, grid

    names = np.asarray(data.target_names, dtype=object)
    wrong = np.flatnonzero(folds.predicted != data.target)
    order = wrong[np.argsort(-folds.confidence[wrong], kind="stable")][:TOP_LOSSES]
    if len(order) == 0:
        return 0, False
    images = check_images(list(np.asarray(data.filenames)[order]))
    maps: list | None = [None] * len(order)
    for fold in np.unique(folds.fold[order]):
        rows = np.flatnonzero(folds.fold[order] == fold)
        explained = _explainable(folds.estimators[fold], extractor)
        try:
            for row, heat in zip(
                rows, explain(explained, images.subset(rows)), strict=True
            ):
                maps[row] = heat
        except TypeError:  # svm, knn: no maps
            maps = None
            break
    titles = [
        f"{Path(data.filenames[i]).name}\ntrue {names[data.target[i]]}\n"
        f"predicted {names[folds.predicted[i]]} ({folds.confidence[i]:.0%})"
        for i in order
    ]
    fig = grid(images, maps, titles, ncols=4)
    fig.savefig(folder / "top_losses.png", dpi=90)
    plt.close(fig)
    return len(order), maps is not None


def _explainable(fitted, extractor):
    """A fold's estimator as one that takes images: on embeddings, behind
    the (fitted) extractor."""
    if extractor is None:
        return fitted
    from sklearn.pipeline import Pipeline

    steps = fitted.steps if isinstance(fitted, Pipeline) else [("classifier", fitted)]
    return Pipeline([("cnnfeatureextractor", extractor), *steps])


def _page(args, data, what, rows, per_class, losses, with_maps) -> str:
    from .. import __version__

    e = html.escape
    accuracy = "".join(f"<tr><td>{e(a)}</td><td>{e(b)}</td></tr>" for a, b in rows)
    classes = "".join(
        f"<tr><td>{e(str(name))}</td><td>{p:.3f}</td><td>{r:.3f}</td>"
        f"<td>{f:.3f}</td><td>{int(n)}</td></tr>"
        for name, p, r, f, n in per_class
    )
    if losses == 0:
        mistakes = "<p>No photo was misclassified.</p>"
    else:
        note = (
            "Each with a heat map of what raised the predicted class's score "
            "(Grad-CAM)."
            if with_maps
            else f"Heat maps need a linear classifier or fine-tuning; "
            f"{e(args.classifier)} has none."
        )
        mistakes = (
            f"<p>The {losses} most confidently wrong predictions, each by the "
            f"model of the fold that held the photo out. {note}</p>"
            '<img src="top_losses.png" alt="most confidently wrong photos">'
        )
    command = " ".join(shlex.quote(a) for a in ["sktransfer", *sys.argv[1:]])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>sktransfer evaluate: {e(str(args.root))}</title>
<style>
body {{ font-family: sans-serif; max-width: 60em; margin: 2em auto; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: .2em .6em; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{e(str(args.root))}</h1>
<p>{len(data.filenames)} images, {len(data.target_names)} classes; {e(what)};
{args.cv}-fold cross-validation (seed {args.seed}).</p>
<h2>Accuracy</h2>
<table><tr><th>accuracy</th><th>mean ± std over folds</th></tr>{accuracy}</table>
<h2>Confusion matrix</h2>
<p>Rows: the true class; columns: the predicted one (out-of-fold).</p>
<img src="confusion.png" alt="confusion matrix">
<h2>Per class</h2>
<p>Also in <a href="per_class.csv">per_class.csv</a>.</p>
<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>
<th>images</th></tr>{classes}</table>
<h2>Most confident mistakes</h2>
{mistakes}
<hr><p><small><code>{e(command)}</code> &middot; sktransfer {e(__version__)}
&middot; {datetime.date.today().isoformat()}</small></p>
</body></html>
"""
