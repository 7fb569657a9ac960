"""The default precision vs ``precision="float32"`` on the CPU, per family.

On a CPU that runs bfloat16 natively (AVX512-BF16 or AMX-BF16),
``precision="auto"`` runs bfloat16 autocast; elsewhere it is float32 and this
script has nothing to compare (it says so and stops). Three measurements:

* speed, per family (``--families``): ``CNNFeatureExtractor.transform`` of
  real photos given as JPEG paths, and one ``FineTuneClassifier`` epoch with
  its defaults (``frozen_layers="all"``, augmentation on) and, with
  ``--finetune-all``, with ``frozen_layers=0``. Default and float32 runs
  alternate in one process (``--rounds`` rounds, after a warm-up of each);
  each round gives one ratio (float32 time / default time: above 1 means the
  default is faster) and the median ratio is reported, so drifts in the
  machine's load hit both sides alike. Random weights: speed does not depend
  on them.
  ``--against bfloat16`` times explicit bfloat16 instead of the default.
* quality, with real EfficientNet-Lite0 weights on ``--quality-n`` real
  photos: per-photo cosine of the default embedding to the float32 one, and
  ImageNet top-1 agreement of ``ImageNetClassifier`` default vs float32.

Real photos: scikit-learn's and scikit-image's sample photographs, then
photo sets under ``~/.cache/sktransfer-data/<set>/<class>/`` if present.

    python benchmarks/bench_precision.py [--families resnet50,efficientnet_lite0]
        [--n 32] [--epoch-n 32] [--rounds 3] [--threads N] [--quality-n 160]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import real_photo_paths

from sktransfer import CNNFeatureExtractor, FineTuneClassifier, ImageNetClassifier
from sktransfer._devices import autocast_dtype, cpu_bfloat16

FAMILIES = (
    "alexnet",
    "vgg16",
    "googlenet",
    "inception_v3",
    "resnet50",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "efficientnet_lite0",
)
CPU = torch.device("cpu")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(runs: dict, rounds: int) -> list[float]:
    """Per-round ratios ``float32 time / default time`` of the two ``runs``
    (``{"default": fn, "float32": fn}``, each returning the seconds it took),
    after one warm-up of each; the order alternates from round to round."""
    for run in runs.values():
        run()
    ratios = []
    for i in range(rounds):
        order = list(runs) if i % 2 == 0 else list(runs)[::-1]
        took = {name: runs[name]() for name in order}
        ratios.append(took["float32"] / took["default"])
    return ratios


def extraction(family, paths, batch_size: int, rounds: int, against: str):
    extractors = {
        precision: CNNFeatureExtractor(
            family,
            weights=None,
            device="cpu",
            batch_size=batch_size,
            precision=precision,
        ).fit(paths[:1])
        for precision in (against, "float32")
    }
    runs = {
        "default": lambda: timed(lambda: extractors[against].transform(paths)),
        "float32": lambda: timed(lambda: extractors["float32"].transform(paths)),
    }
    return alternate(runs, rounds)


def epoch(family, paths, y, batch_size: int, rounds: int, frozen_layers, against):
    def fit(precision):
        clf = FineTuneClassifier(
            family,
            weights=None,
            device="cpu",
            max_epochs=1,
            batch_size=batch_size,
            frozen_layers=frozen_layers,
            precision=precision,
            random_state=0,
        ).fit(paths, y)
        return clf.history[-1, "dur"]  # the epoch alone, not building the network

    return alternate(
        {"default": lambda: fit(against), "float32": lambda: fit("float32")}, rounds
    )


def quality(paths: list[str], batch_size: int) -> dict:
    embeddings, labels = {}, {}
    for precision in ("auto", "float32"):
        embeddings[precision] = (
            CNNFeatureExtractor(
                "efficientnet_lite0",
                device="cpu",
                batch_size=batch_size,
                precision=precision,
            )
            .fit(paths[:1])
            .transform(paths)
        )
        labels[precision] = (
            ImageNetClassifier(
                "efficientnet_lite0",
                device="cpu",
                batch_size=batch_size,
                precision=precision,
            )
            .fit(paths[:1])
            .predict(paths)
        )
    a, b = embeddings["auto"], embeddings["float32"]
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {
        "n": len(paths),
        "cosine_min": float(cosine.min()),
        "cosine_mean": float(cosine.mean()),
        "top1_agreement": float((labels["auto"] == labels["float32"]).mean()),
    }


def describe(ratios: list[float]) -> str:
    return (
        f"{statistics.median(ratios):.2f}x  (rounds: "
        + ", ".join(f"{r:.2f}" for r in ratios)
        + ")"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--n", type=int, default=32, help="photos per extraction")
    parser.add_argument("--epoch-n", type=int, default=32, help="photos per epoch")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quality-n", type=int, default=160)
    parser.add_argument(
        "--finetune-all",
        action="store_true",
        help="also time epochs with frozen_layers=0",
    )
    parser.add_argument(
        "--against",
        default="auto",
        help="the precision timed against float32 (default: the default)",
    )
    parser.add_argument("--skip", default="", help="extract,finetune,quality")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if args.threads:
        torch.set_num_threads(args.threads)

    print(
        f"CPU: {cpu_name()}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; native bfloat16: {cpu_bfloat16()}"
    )
    if not cpu_bfloat16():
        print('precision="auto" is float32 on this CPU: nothing to compare.')
        return
    with tempfile.TemporaryDirectory() as tmp:
        n_photos = max(args.n, args.epoch_n, args.quality_n)
        paths = real_photo_paths(n_photos, Path(tmp))
        if len(paths) < n_photos:
            print(f"only {len(paths)} photos found (of {n_photos} asked)")
        y = np.arange(len(paths)) % 2
        for family in args.families.split(","):
            network = (
                CNNFeatureExtractor(family, weights=None)
                .fit(paths[:1])
                .backbone_.module
            )
            print(
                f"{family}: auto = "
                f"{autocast_dtype('auto', CPU, network=network) or 'float32'}",
                flush=True,
            )
            if "extract" not in skip:
                ratios = extraction(
                    family, paths[: args.n], args.batch_size, args.rounds, args.against
                )
                print(
                    f"  extraction, {args.n} JPEGs:     {describe(ratios)}", flush=True
                )
            if "finetune" in skip:
                continue
            variants = ["all", 0] if args.finetune_all else ["all"]
            for frozen in variants:
                ratios = epoch(
                    family,
                    paths[: args.epoch_n],
                    y[: args.epoch_n],
                    args.batch_size,
                    args.rounds,
                    frozen,
                    args.against,
                )
                print(
                    f"  epoch, frozen_layers={frozen!r:5}: {describe(ratios)}",
                    flush=True,
                )
        if "quality" not in skip:
            q = quality(paths[: args.quality_n], args.batch_size)
            print(
                f"efficientnet_lite0 (real weights), {q['n']} photos: embedding "
                f"cosine min {q['cosine_min']:.4f}, mean {q['cosine_mean']:.5f}; "
                f"top-1 agreement {q['top1_agreement']:.1%}"
            )


if __name__ == "__main__":
    main()
