"""
Fine-tuning versus pretrained features
======================================

Two ways to reuse a network pretrained on ImageNet: (1) embed the images with
it and train any scikit-learn classifier on the embeddings
(:class:`~sktransfer.CNNFeatureExtractor` + ``LogisticRegression``), or (2)
replace its classifier and train the network further
(:class:`~sktransfer.FineTuneClassifier`). We compare their cross-validated
accuracy on the same folds, with EfficientNet-Lite0's real ImageNet weights, on
patches of eight photographs shipped with scikit-image.
"""

import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from skimage import data
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline

from sktransfer import CNNFeatureExtractor, FineTuneClassifier

plt.switch_backend("Agg")  # write files; no display needed
OUTPUT = Path(
    os.environ.get("SKTRANSFER_EXAMPLES_OUTPUT", Path(__file__).parent / "output")
)
OUTPUT.mkdir(parents=True, exist_ok=True)

PHOTOS = ("brick", "grass", "gravel", "coffee", "coins", "moon", "camera", "astronaut")


def photo_patches(size=32, per_class=15, seed=0):
    """``size`` x ``size`` grey patches of eight packaged photographs."""
    rng = np.random.default_rng(seed)
    X, y = [], []
    for name in PHOTOS:
        image = getattr(data, name)()
        if image.ndim == 3:
            image = image[..., :3].mean(axis=-1).astype(np.uint8)
        for _ in range(per_class):
            top, left = rng.integers(0, np.array(image.shape) - size)
            X.append(image[top : top + size, left : left + size])
            y.append(name)
    return np.stack(X), np.array(y)


X, y = photo_patches()
cv = StratifiedKFold(3, shuffle=True, random_state=0)  # the same folds for all

models = {
    "features + LogisticRegression": make_pipeline(
        CNNFeatureExtractor("efficientnet_lite0", cache="memory"),
        LogisticRegression(max_iter=2000),
    ),
    # defaults: new head only, on the image and its mirror image computed once
    "fine-tune: new head only": FineTuneClassifier(
        "efficientnet_lite0", random_state=0
    ),
    "fine-tune: head + last group": FineTuneClassifier(
        "efficientnet_lite0", frozen_layers=7, random_state=0
    ),
}
scores = {}
for name, model in models.items():
    start = time.perf_counter()
    scores[name] = cross_val_score(model, X, y, cv=cv)
    print(
        f"{name:32s} accuracy {scores[name].mean():.3f} +/- {scores[name].std():.3f}"
        f"  ({time.perf_counter() - start:.0f} s)"
    )

# %%
fig, ax = plt.subplots(figsize=(6, 3))
names = list(scores)
ax.barh(names, [scores[n].mean() for n in names], xerr=[scores[n].std() for n in names])
ax.set_xlabel("3-fold CV accuracy")
ax.set_xlim(0, 1)
fig.tight_layout()
fig.savefig(OUTPUT / "finetune_vs_features.png", dpi=100)
print("saved", OUTPUT / "finetune_vs_features.png")
