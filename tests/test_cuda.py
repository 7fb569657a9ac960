"""What only a GPU can show: the CUDA path against the CPU path.

Every test here is marked ``cuda`` and skipped without CUDA (tests/conftest.py).
Real photographs (scikit-image) and real EfficientNet-Lite0 weights.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from PIL import Image

from sktransfer import (
    CNNFeatureExtractor,
    FineTuneClassifier,
    ImageDecodeError,
    ImageNetClassifier,
)

pytestmark = pytest.mark.cuda


def _photos() -> list[np.ndarray]:
    """Five distinct colour photographs shipped with scikit-image."""
    from skimage import data

    return [
        data.chelsea(),
        data.coffee(),
        data.astronaut(),
        data.rocket(),
        data.stereo_motorcycle()[0],
    ]


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for i, photo in enumerate(_photos()):
        path = folder / f"{i}.jpg"
        Image.fromarray(photo).save(path, quality=90)
        paths.append(str(path))
    return paths


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_gpu_embeddings_match_the_cpu_path_on_real_photos(photo_files):
    cpu = CNNFeatureExtractor("efficientnet_lite0", device="cpu").fit(photo_files)
    gpu = CNNFeatureExtractor("efficientnet_lite0", device="cuda").fit(photo_files)
    reference = cpu.transform(photo_files)
    for X in (photo_files, _photos()):  # nvJPEG-decoded files, uint8 arrays
        assert _cosines(gpu.transform(X), reference).min() >= 0.99
    float32 = gpu.set_params(precision="float32", decoder="cpu")
    assert _cosines(float32.transform(photo_files), reference).min() >= 0.995


def test_imagenet_top1_agrees_between_gpu_and_cpu(photo_files):
    """Where the CPU's answer is clear, the GPU gives the same; always within
    the CPU's top 3 (near-synonyms such as tabby / tiger cat may swap)."""
    cpu = ImageNetClassifier("efficientnet_lite0", device="cpu").fit(photo_files)
    gpu = ImageNetClassifier("efficientnet_lite0", device="cuda").fit(photo_files)
    cpu_proba, gpu_proba = (
        cpu.predict_proba(photo_files),
        gpu.predict_proba(photo_files),
    )
    top3 = np.argsort(-cpu_proba, axis=1)[:, :3]
    gpu_top1 = gpu_proba.argmax(1)
    assert all(gpu_top1[i] in top3[i] for i in range(len(top3)))
    ranked = np.sort(cpu_proba, axis=1)
    clear = ranked[:, -1] - ranked[:, -2] > 0.1
    assert clear.sum() >= 2
    np.testing.assert_array_equal(gpu_top1[clear], cpu_proba.argmax(1)[clear])


def test_gpu_decoder_falls_back_and_names_bad_files(tmp_path, photo_files):
    photo = _photos()[0]
    files = {"jpeg": photo_files[0]}
    files["png"] = str(tmp_path / "photo.png")
    Image.fromarray(photo).save(files["png"])
    files["cmyk"] = str(tmp_path / "cmyk.jpg")
    Image.fromarray(photo).convert("CMYK").save(files["cmyk"], quality=90)
    files["grey"] = str(tmp_path / "grey.jpg")
    Image.fromarray(photo).convert("L").save(files["grey"], quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6
    files["sideways"] = str(tmp_path / "sideways.jpg")
    Image.fromarray(np.ascontiguousarray(np.rot90(photo))).save(
        files["sideways"], quality=90, exif=exif.tobytes()
    )
    paths = list(files.values())
    cpu = CNNFeatureExtractor("efficientnet_lite0", device="cuda", decoder="cpu")
    gpu = CNNFeatureExtractor("efficientnet_lite0", device="cuda", decoder="gpu")
    a, b = cpu.fit(paths).transform(paths), gpu.fit(paths).transform(paths)
    assert _cosines(a, b).min() >= 0.99
    upright = b[list(files).index("jpeg")]
    sideways = b[list(files).index("sideways")]
    assert _cosines(upright[None], sideways[None])[0] >= 0.99

    broken = tmp_path / "broken.jpg"
    data = open(photo_files[1], "rb").read()
    broken.write_bytes(data[: len(data) // 4])
    with pytest.raises(ImageDecodeError, match="broken.jpg"):
        gpu.transform([*paths, str(broken)])


@pytest.mark.parametrize("benchmark", [False, True])
def test_the_autotune_flag_is_the_callers_and_jobs_agree(photo_files, benchmark):
    """cudnn.benchmark is left as set (it is process-wide), during and after a
    job; an image gets the same embedding in a job of 15 or 16 batches."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = benchmark
    try:
        extractor = CNNFeatureExtractor("resnet18", weights=None, batch_size=1)
        extractor.fit(photo_files)
        seen = []
        hook = extractor.backbone_.module.conv1.register_forward_hook(
            lambda *_: seen.append(torch.backends.cudnn.benchmark)
        )
        files = photo_files * 4  # 20 images, one per batch
        small = extractor.transform(files[:15])
        large = extractor.transform(files[:16])
        hook.remove()
        assert set(seen) == {benchmark}
        assert torch.backends.cudnn.benchmark == benchmark
        np.testing.assert_array_equal(small, large[:15])
    finally:
        torch.backends.cudnn.benchmark = before


def test_grey_images_and_files_on_the_gpu(tmp_path, photo_files):
    grey = [np.asarray(Image.fromarray(p).convert("L")) for p in _photos()]
    cpu = CNNFeatureExtractor("resnet18", weights=None, device="cpu")
    gpu = CNNFeatureExtractor("resnet18", weights=None, device="cuda")
    for X in (grey, np.stack([g[:200, :200] for g in grey])):
        assert _cosines(gpu.fit(X).transform(X), cpu.fit(X).transform(X)).min() >= 0.99
    y = np.array(["a", "b", "a", "b", "a"])
    for X in (np.stack([g[:96, :96] for g in grey]), photo_files):
        clf = _fit_tiny(X, y, device="cuda")
        assert np.isfinite(clf.history[:, "train_loss"]).all()
        assert clf.predict(X).shape == (5,)


def _fit_tiny(X, y, **params) -> FineTuneClassifier:
    return FineTuneClassifier(
        "resnet18",
        weights=None,
        max_epochs=2,
        batch_size=4,
        image_size=64,
        random_state=0,
        **params,
    ).fit(X, y)


def _same_decisions(proba: np.ndarray, reference: np.ndarray) -> None:
    """Same probabilities (cosine), and the same label wherever the
    reference's top two are not a near-tie that autocast rounding can flip."""
    assert _cosines(proba, reference).min() >= 0.99
    top2 = np.sort(reference, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.02
    np.testing.assert_array_equal(proba.argmax(1)[clear], reference.argmax(1)[clear])


def _round_trip(estimator):
    import io

    buffer = io.BytesIO()
    joblib.dump(estimator, buffer)
    buffer.seek(0)
    return joblib.load(buffer)


@pytest.mark.parametrize("precision", ["auto", "float16"])
def test_finetune_on_cuda_then_predict_on_cpu(precision):
    X = np.stack([np.asarray(Image.fromarray(p).resize((96, 80))) for p in _photos()])
    y = np.array(["a", "b", "a", "b", "a"])
    for augment in (True, False):
        clf = _fit_tiny(X, y, device="cuda", precision=precision, augment=augment)
        assert np.isfinite(clf.history[:, "train_loss"]).all()
        assert next(clf.module_.parameters()).is_cuda
        proba = clf.predict_proba(X)
        restored = _round_trip(clf)
        restored.set_params(device="cpu")
        assert not next(restored.module_.parameters()).is_cuda
        _same_decisions(restored.predict_proba(X), proba)
        assert set(restored.predict(X)) <= {"a", "b"}


@pytest.mark.parametrize("kind", ["finetune", "extractor", "imagenet"])
def test_fitted_on_cuda_loads_where_there_is_no_cuda(tmp_path, kind):
    X = np.stack([np.asarray(Image.fromarray(p).resize((72, 64))) for p in _photos()])
    if kind == "finetune":
        estimator = _fit_tiny(X, np.array([0, 1, 0, 1, 0]), device="cuda")
        method = "predict_proba"
    elif kind == "extractor":
        estimator = CNNFeatureExtractor("resnet18", weights=None, device="cuda")
        method = "transform"
    else:
        estimator = ImageNetClassifier("resnet18", weights=None, device="cuda")
        method = "predict_proba"
    if kind != "finetune":
        estimator.fit(X)
    expected = getattr(estimator, method)(X)
    model, data, out = (
        tmp_path / "model.joblib",
        tmp_path / "X.npy",
        tmp_path / "out.npy",
    )
    joblib.dump(estimator, model)
    np.save(data, X)
    script = textwrap.dedent(
        f"""
        import joblib, numpy as np, torch
        assert not torch.cuda.is_available()
        estimator = joblib.load({str(model)!r})
        estimator.set_params(device="cpu")
        np.save({str(out)!r}, getattr(estimator, {method!r})(np.load({str(data)!r})))
        """
    )
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": path}
    subprocess.run(
        [sys.executable, "-c", script], env=env, check=True, timeout=300, cwd=root
    )
    got = np.load(out)
    if method == "transform":
        assert _cosines(got, expected).min() >= 0.99
    else:
        _same_decisions(got, expected)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_photos_shrunk_beyond_cudas_resize_limit(interpolation):
    """CUDA's antialiased resize refuses shrinks above ~47x (bicubic); the
    device path averages blocks first and stays close to one CPU step."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    from sktransfer import _device_transforms as transforms
    from sktransfer._images import Preprocessing

    photo = np.asarray(Image.fromarray(_photos()[0]).resize((4000, 3200)))
    batch = torch.from_numpy(photo.copy()).permute(2, 0, 1)[None]
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    prep = Preprocessing(64, 56, mean, std, interpolation)  # a 50x shrink
    ours = transforms.preprocess(batch.cuda(), prep).cpu()
    mode = InterpolationMode(interpolation)
    resized = F.resize(batch.float(), [64], interpolation=mode).clamp(0, 255) / 255
    reference = F.normalize(F.center_crop(resized, [56, 56]), list(mean), list(std))
    level = 1.01 / 255 / min(std)
    torch.testing.assert_close(ours, reference, atol=level, rtol=0)
