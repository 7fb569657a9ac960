"""
ImageNet top-5 predictions
==========================

A pretrained network is already a classifier: :class:`~sktransfer.ImageNetClassifier`
wraps its own 1000-way softmax, with the ImageNet category names as
``classes_``. We show EfficientNet-Lite0's five most probable categories for a
few sample photographs, then score the network with
:func:`~sktransfer.top_k_scorers`: top-1 accuracy counts only the first guess,
top-5 accuracy any of the five (the measure the ImageNet challenge reported).
"""

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image
from skimage import data
from sklearn.datasets import load_sample_images

from sktransfer import ImageNetClassifier, top_k_scorers

plt.switch_backend("Agg")  # write files; no display needed
OUTPUT = Path(
    os.environ.get("SKTRANSFER_EXAMPLES_OUTPUT", Path(__file__).parent / "output")
)
OUTPUT.mkdir(parents=True, exist_ok=True)

# %%
# Photographs of different sizes, as PIL images, with an ImageNet category
# that a human would choose for each.
china, flower = load_sample_images().images
photos = {
    "palace": china,
    "daisy": flower,
    "tabby": data.chelsea(),
    "espresso": data.coffee(),
    "moped": data.stereo_motorcycle()[0],
    "space shuttle": data.rocket(),
}
images = [Image.fromarray(photo) for photo in photos.values()]
labels = list(photos)

clf = ImageNetClassifier("efficientnet_lite0").fit(images, labels)
names, probabilities = clf.top_k(images, k=5)
for label, row_names, row_probs in zip(labels, names, probabilities, strict=True):
    ranked = ", ".join(
        f"{n} {p:.0%}" for n, p in zip(row_names, row_probs, strict=True)
    )
    print(f"{label:>14}: {ranked}")

# %%
# Top-1 and top-5 accuracy, as scikit-learn scorers.
for metric, scorer in top_k_scorers((1, 5)).items():
    print(f"{metric} accuracy: {scorer(clf, images, labels):.2f}")

# %%
fig, axes = plt.subplots(2, len(images), figsize=(3 * len(images), 5.5))
for i, (image, label) in enumerate(zip(images, labels, strict=True)):
    axes[0, i].imshow(image)
    axes[0, i].set_title(f"label: {label}")
    axes[0, i].axis("off")
    bars = axes[1, i]
    colours = ["tab:green" if n == label else "tab:gray" for n in names[i]]
    bars.barh(np.arange(5)[::-1], probabilities[i], color=colours)
    bars.set_yticks(np.arange(5)[::-1], names[i])
    bars.set_xlim(0, 1)
    bars.set_xlabel("probability")
fig.suptitle("EfficientNet-Lite0: top-5 ImageNet categories (green: the label)")
fig.tight_layout()
fig.savefig(OUTPUT / "imagenet_top5.png", dpi=100)
print(f"Saved {OUTPUT / 'imagenet_top5.png'}")
