"""Are the heat maps of ``sktransfer.explain`` right? A deletion test.

For an image folder (``ROOT/<class>/<image>``), one stratified split (seed 0),
and EfficientNet-Lite0 with its real ImageNet weights: fit
``FineTuneClassifier`` (defaults) and features + ``StandardScaler`` +
``LogisticRegression(C=0.1)`` on the training part. For ``--n`` test photos,
blur (Gaussian, sigma = 1/20 of the photo's side) the 20 % of the pixels
that the predicted class's map ranks highest, or the 20 % that a random map
of the same smoothness ranks highest (7 x 7 uniform noise resized to the
photo, as a Grad-CAM map of a 7 x 7 feature map is: blobs of the same kind
at random places; ``--repeat`` draws), and report the mean drop of the
predicted class's probability. Maps that point at the evidence make the
first drop far larger than the second (the ratio).

    python benchmarks/bench_explain_deletion.py ROOT [--n 60] [--fraction 0.2]
        [--repeat 3] [--model efficientnet_lite0]
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image, ImageFilter
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import (
    CNNFeatureExtractor,
    FineTuneClassifier,
    explain,
    load_image_folder,
)
from sktransfer.inspection import _displayed


def blurred(photo: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``photo`` with the pixels of ``mask`` replaced by a strong blur."""
    radius = max(photo.shape[:2]) / 20
    blur = np.asarray(Image.fromarray(photo).filter(ImageFilter.GaussianBlur(radius)))
    out = photo.copy()
    out[mask] = blur[mask]
    return out


def drops(model, photos, maps, fraction: float, repeat: int, rng) -> tuple:
    """Mean drop of the predicted class's probability: top of the map, random."""
    base = model.predict_proba(photos)
    cls = base.argmax(1)
    top, random = [], []
    for photo, heat in zip(photos, maps, strict=True):
        k = int(fraction * heat.size)
        order = np.argsort(-heat, axis=None, kind="stable")
        mask = np.zeros(heat.size, bool)
        mask[order[:k]] = True
        top.append(blurred(photo, mask.reshape(heat.shape)))
        for _ in range(repeat):
            noise = Image.fromarray(rng.random((7, 7)).astype(np.float32), mode="F")
            noise = np.asarray(noise.resize(heat.shape[::-1], Image.BILINEAR))
            order = np.argsort(-noise, axis=None, kind="stable")
            mask = np.zeros(heat.size, bool)
            mask[order[:k]] = True
            random.append(blurred(photo, mask.reshape(heat.shape)))
    p_top = model.predict_proba(top)[np.arange(len(photos)), cls]
    p_random = model.predict_proba(random)[
        np.arange(len(random)), np.repeat(cls, repeat)
    ]
    p = base[np.arange(len(photos)), cls]
    return float(np.mean(p - p_top)), float(np.mean(np.repeat(p, repeat) - p_random))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=600)
    args = parser.parse_args()

    data = load_image_folder(args.root)
    paths = np.asarray(data.filenames)
    y = np.asarray(data.target_names)[data.target]
    train, test = train_test_split(
        np.arange(len(y)), train_size=args.train_size, stratify=y, random_state=0
    )
    test = np.random.default_rng(0).permutation(test)[: args.n]
    photos = [_displayed(str(p)) for p in paths[test]]  # as displayed: upright
    models = {
        "FineTuneClassifier()": FineTuneClassifier(args.model, random_state=0),
        "features + LogReg": make_pipeline(
            CNNFeatureExtractor(args.model),
            StandardScaler(),
            LogisticRegression(C=0.1, max_iter=3000),
        ),
    }
    print(
        f"{args.root}: {len(train)} training photos, {len(test)} explained; "
        f"{args.fraction:.0%} of each photo blurred; model={args.model}"
    )
    print(f"{'model':22s} {'top of map':>10s} {'random map':>10s} {'ratio':>6s}")
    for name, model in models.items():
        model.fit(paths[train], y[train])
        maps = explain(model, photos)
        rng = np.random.default_rng(0)
        top, random = drops(model, photos, maps, args.fraction, args.repeat, rng)
        print(f"{name:22s} {top:10.3f} {random:10.3f} {top / max(random, 1e-9):6.1f}x")


if __name__ == "__main__":
    main()
