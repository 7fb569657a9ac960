"""CUDA check: the AMP / channels-last path against float32, and GPU throughput.

For a lent GPU machine: one short run that (1) embeds the same images with
``precision="float32"`` and ``"auto"`` (float16 autocast) and reports their
cosine similarity, (2) measures extractor throughput against a bare
``torch.inference_mode()`` forward under the same autocast, (3) fits a
FineTuneClassifier on CUDA, pickles it and predicts on the CPU copy.
Exits 0 with a message when CUDA is absent.

    python benchmarks/gpu_check.py [--model resnet50] [--n 512] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import io
import sys

import joblib
import numpy as np
import torch
from _common import best_of, photos

from sktransfer import CNNFeatureExtractor, FineTuneClassifier


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("CUDA is not available here: nothing to check.")
        return 0
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    images = photos(args.n, size=(256, 256))

    def extractor(precision: str) -> CNNFeatureExtractor:
        return CNNFeatureExtractor(
            args.model, weights=None, batch_size=args.batch_size, precision=precision
        ).fit(images[:1])

    full, amp = extractor("float32"), extractor("auto")
    a, b = full.transform(images[:128]), amp.transform(images[:128])
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    print(f"float16 autocast vs float32: min cosine {cosine.min():.5f}")

    module = amp.backbone_.module
    ready = amp.backbone_.preprocessing(torch.from_numpy(images).permute(0, 3, 1, 2))
    ready = ready.cuda().contiguous(memory_format=torch.channels_last)

    def bare() -> None:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
            for start in range(0, len(ready), args.batch_size):
                module(ready[start : start + args.batch_size])
        torch.cuda.synchronize()

    bare()
    t_bare = best_of(bare, repeat=3)
    t_ours = best_of(lambda: amp.transform(images), repeat=3)
    print(
        f"bare forward {args.n / t_bare:.0f} img/s; extractor {args.n / t_ours:.0f} "
        f"img/s ({t_bare / t_ours:.2f}x bare, uint8 arrays, preprocessing included)"
    )

    y = np.arange(64) % 4
    clf = FineTuneClassifier("resnet18", weights=None, max_epochs=2, random_state=0)
    clf.fit(images[:64], y)
    buffer = io.BytesIO()
    joblib.dump(clf, buffer)
    buffer.seek(0)
    loaded = joblib.load(buffer)
    loaded.set_params(device="cpu")
    agree = (loaded.predict(images[:64]) == clf.predict(images[:64])).mean()
    print(f"FineTuneClassifier fitted on CUDA, predicted on CPU: {agree:.0%} agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
