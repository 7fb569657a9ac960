"""
Which layer to take features from
=================================

The default embedding is what feeds the network's 1000-way ImageNet
classifier, the most *ImageNet-specific* representation. Earlier layers hold
more generic features (edges, textures, parts); for data unlike ImageNet, or
for very few training images, they can be the better choice, and they are
cheaper to compute: the forward pass stops at the tapped layer.

We tap stages of EfficientNet-Lite0 (``layer="blocks.0"``, ``"blocks.1"``,
``"blocks.3"``, ``"blocks.5"``, average-pooled) and the default embedding,
and measure the accuracy of a logistic regression trained on only 8 images
per class, for two tasks of real photographs: textures (brick / grass /
gravel) and faces vs non-faces.
"""

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from skimage import data
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedShuffleSplit, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import CNNFeatureExtractor

plt.switch_backend("Agg")  # write files; no display needed
OUTPUT = Path(
    os.environ.get("SKTRANSFER_EXAMPLES_OUTPUT", Path(__file__).parent / "output")
)
OUTPUT.mkdir(parents=True, exist_ok=True)

# %%
# Two small datasets of real grayscale photographs (36 images each).
rng = np.random.default_rng(0)
textures, texture_labels = [], []
for name in ["brick", "grass", "gravel"]:
    photo = getattr(data, name)()
    for _ in range(12):
        top, left = rng.integers(0, photo.shape[0] - 32, size=2)
        textures.append(
            np.rot90(photo[top : top + 32, left : left + 32], rng.integers(4))
        )
        texture_labels.append(name)
faces = (data.lfw_subset()[np.r_[0:18, 100:118]] * 255).astype(np.uint8)
tasks = {
    "textures (3 classes)": (np.stack(textures), np.array(texture_labels)),
    "faces vs non-faces": (faces, np.array(["face"] * 18 + ["non-face"] * 18)),
}

# %%
# Cross-validated accuracy per layer, trained on 8 images per class.
layers = ["blocks.0", "blocks.1", "blocks.3", "blocks.5", None]
model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
accuracy = {task: [] for task in tasks}
widths = []
for layer in layers:
    extractor = CNNFeatureExtractor("efficientnet_lite0", layer=layer)
    for task, (X, y) in tasks.items():
        features = extractor.fit_transform(X)
        n_classes = len(np.unique(y))
        cv = StratifiedShuffleSplit(20, train_size=8 * n_classes, random_state=0)
        accuracy[task].append(cross_val_score(model, features, y, cv=cv).mean())
    widths.append(features.shape[1])
    scores = "  ".join(f"{task}: {accuracy[task][-1]:.3f}" for task in tasks)
    print(f"{layer or 'default embedding':>17} ({widths[-1]:4d} features)  {scores}")

# %%
names = [f"{layer}\n({w})" for layer, w in zip(layers[:-1], widths, strict=False)]
names.append(f"default\n({widths[-1]})")
fig, ax = plt.subplots(figsize=(9, 4.2))
for task, values in accuracy.items():
    ax.plot(range(len(layers)), values, marker="o", label=task)
ax.set_xticks(range(len(layers)), names, fontsize=8)
ax.set_xlabel("EfficientNet-Lite0 layer (feature width), from input to output")
ax.set_ylabel("accuracy, 8 training images per class")
ax.set_title("Which layer to take features from")
ax.grid(alpha=0.3)
ax.legend()
fig.tight_layout()
fig.savefig(OUTPUT / "layer_choice.png", dpi=100)
print(f"Saved {OUTPUT / 'layer_choice.png'}")
