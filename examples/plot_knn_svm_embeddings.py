"""
SVM and k-NN on CNN embeddings
==============================

The first transfer-learning strategy: feed the activations that feed a
pretrained network's ImageNet classifier to a classic classifier. Here an SVM
and a k-nearest-neighbour classifier (cosine distance) learn to tell faces
from non-faces (scikit-image's ``lfw_subset``: 100 + 100 real 25x25 photos)
from few labelled examples, on EfficientNet-Lite0 embeddings and, for
comparison, on raw pixels.

The embeddings are computed once: :class:`~sktransfer.CNNFeatureExtractor`
learns nothing from the data, so this is the same as putting it first in
each classifier's Pipeline, only faster.
"""

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from skimage import data
from sklearn.model_selection import StratifiedShuffleSplit, cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer
from sklearn.svm import SVC

from sktransfer import CNNFeatureExtractor, top_k_scorer

plt.switch_backend("Agg")  # write files; no display needed
OUTPUT = Path(
    os.environ.get("SKTRANSFER_EXAMPLES_OUTPUT", Path(__file__).parent / "output")
)
OUTPUT.mkdir(parents=True, exist_ok=True)

# %%
# 100 faces and 100 non-faces, grayscale floats in [0, 1].
images = data.lfw_subset()
y = np.array(["face"] * 100 + ["non-face"] * 100)
pixels = images.reshape(len(images), -1)
embeddings = CNNFeatureExtractor("efficientnet_lite0").fit_transform(images)
print(f"{len(images)} images; pixels: {pixels.shape[1]} values, "
      f"embeddings: {embeddings.shape[1]} values")  # fmt: skip

classifiers = {
    "linear SVM": lambda: make_pipeline(Normalizer(), SVC(kernel="linear")),
    "1-NN (cosine)": lambda: make_pipeline(Normalizer(), KNeighborsClassifier(1)),
}

# %%
# Accuracy against the number of labelled training images per class, each
# averaged over 10 random splits; the rest of the images are the test set.
per_class = [1, 2, 5, 10, 25, 50]
results = {}
for space, X in [("embeddings", embeddings), ("pixels", pixels)]:
    for name, make in classifiers.items():
        curve = []
        for n in per_class:
            cv = StratifiedShuffleSplit(10, train_size=2 * n, random_state=0)
            scores = cross_val_score(make(), X, y, cv=cv, scoring=top_k_scorer(1))
            curve.append(scores.mean())
        results[f"{name} on {space}"] = curve

print(f"{'training images per class':>30}: " + "  ".join(f"{n:>5}" for n in per_class))
for label, curve in results.items():
    print(f"{label:>30}: " + "  ".join(f"{a:5.3f}" for a in curve))

# %%
fig, (ax_images, ax) = plt.subplots(
    1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1, 1.6]}
)
montage = np.vstack([np.hstack(list(images[i : i + 100 : 20])) for i in (0, 100)])
ax_images.imshow(montage, cmap="gray")
ax_images.set_yticks([12, 37], ["faces", "non-faces"])
ax_images.set_xticks([])
ax_images.set_title("lfw_subset (25x25)")
for label, curve in results.items():
    style = "-" if "embeddings" in label else "--"
    ax.plot(per_class, curve, style, marker="o", label=label)
ax.set_xscale("log")
ax.set_xticks(per_class, [str(n) for n in per_class])
ax.set_xlabel("labelled training images per class")
ax.set_ylabel("test accuracy (mean of 10 splits)")
ax.set_title("Few-shot classification with EfficientNet-Lite0 embeddings")
ax.legend()
ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig(OUTPUT / "knn_svm_embeddings.png", dpi=100)
print(f"Saved {OUTPUT / 'knn_svm_embeddings.png'}")
