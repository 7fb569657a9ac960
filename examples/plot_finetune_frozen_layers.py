"""
How many layers to fine-tune?
=============================

Transfer learning by fine-tuning replaces the network's 1000-way ImageNet
classifier with a new one and trains it, together with some of the last
layers. How many layers to retrain is a hyper-parameter: few for small data
sets, more for data unlike ImageNet. :class:`~sktransfer.FineTuneClassifier`
counts *layer groups* from the input (:func:`~sktransfer.layer_groups`), so
``frozen_layers`` can be grid-searched like any other parameter.

The task: small grey patches of eight photographs shipped with scikit-image
(brick, grass, gravel, coffee beans, coins, the moon, a cameraman, an
astronaut): which photograph does a patch come from? We fine-tune the real
ImageNet weights of EfficientNet-Lite0 (8 layer groups), without augmentation
so that the frozen groups' output is computed once per fit, and at 112 px
instead of the weights' 224 px (the patches are only 32 px wide): four times
less computation, so that the example runs in a few minutes on a laptop CPU.
Epochs are the defaults': the new head alone first (``head_epochs``), then 5
epochs of the unfrozen groups with it.
"""

import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from skimage import data
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from sktransfer import FineTuneClassifier, layer_groups, top_k_scorers

plt.switch_backend("Agg")  # write files; no display needed
OUTPUT = Path(
    os.environ.get("SKTRANSFER_EXAMPLES_OUTPUT", Path(__file__).parent / "output")
)
OUTPUT.mkdir(parents=True, exist_ok=True)

PHOTOS = ("brick", "grass", "gravel", "coffee", "coins", "moon", "camera", "astronaut")


def photo_patches(size=32, per_class=12, seed=0):
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
n_groups = len(layer_groups("efficientnet_lite0"))
print(
    f"{len(X)} patches, {len(PHOTOS)} classes; efficientnet_lite0 has {n_groups} groups"
)

# %%
# Grid-search the number of frozen groups ("all" = only the new head trains).
start = time.perf_counter()
search = GridSearchCV(
    FineTuneClassifier(
        "efficientnet_lite0", augment=False, image_size=112, random_state=0
    ),
    {"frozen_layers": ["all", 7, 6, 5]},
    scoring=top_k_scorers((1, 5)),  # top-1 and top-5 accuracy
    refit="top1",
    cv=StratifiedKFold(3, shuffle=True, random_state=0),
).fit(X, y)
print(f"grid search: {time.perf_counter() - start:.0f} s")

frozen = [
    n_groups if p["frozen_layers"] == "all" else p["frozen_layers"]
    for p in search.cv_results_["params"]
]
mean = search.cv_results_["mean_test_top1"]
std = search.cv_results_["std_test_top1"]
top5 = search.cv_results_["mean_test_top5"]
for k, m, s, t in sorted(zip(frozen, mean, std, top5, strict=True)):
    print(f"frozen groups {k}: top-1 {m:.3f} +/- {s:.3f}, top-5 {t:.3f}")
print("best:", search.best_params_)

# %%
# Accuracy against the number of frozen groups.
order = np.argsort(frozen)
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.errorbar(
    np.array(frozen)[order], mean[order], yerr=std[order], marker="o", label="top-1"
)
ax.plot(np.array(frozen)[order], top5[order], marker="s", ls="--", label="top-5")
ax.legend()
ax.set_xticks(sorted(frozen))
ax.set_xlabel(f"frozen layer groups (of {n_groups}; {n_groups} = head only)")
ax.set_ylabel("3-fold CV accuracy")
ax.set_title("Fine-tuning EfficientNet-Lite0 on photo patches")
fig.tight_layout()
fig.savefig(OUTPUT / "finetune_frozen_layers.png", dpi=100)
print("saved", OUTPUT / "finetune_frozen_layers.png")
