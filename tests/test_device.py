"""The device-side input path (CUDA's), checked on CPU tensors against the CPU path.

On a CUDA machine the same code runs on the GPU (tests/test_cuda.py); here
it runs on CPU tensors, where the CPU path is the reference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from sktransfer import (
    CNNFeatureExtractor,
    FineTuneClassifier,
    ImageDecodeError,
    ImageNetClassifier,
)
from sktransfer import (
    _device_transforms as transforms,
)
from sktransfer._decode import decode_file, orient, read_encoded
from sktransfer._finetune.data import prepare_batch, prepare_on_device
from sktransfer._gpu_decode import TORCHVISION, Backend, _torchvision, decode_batch
from sktransfer._images import Preprocessing, check_images
from sktransfer._pipeline import Prefetcher, pinned, run_on_device

CPU = torch.device("cpu")
IMAGENET = Preprocessing(72, 64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# The CPU path resizes uint8 images to uint8 (rounded); the device path keeps
# the resized values in float: they differ by at most one uint8 level.
ONE_LEVEL = 1.01 / 255 / min(IMAGENET.std)


def _photo(size=(90, 120)) -> np.ndarray:
    from skimage import data

    return np.array(Image.fromarray(data.chelsea()).resize(size[::-1]))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_preprocess_on_device_matches_cpu_path(interpolation):
    prep = Preprocessing(72, 64, IMAGENET.mean, IMAGENET.std, interpolation)
    photo = torch.from_numpy(_photo().copy()).permute(2, 0, 1)
    cases = {
        "uint8 rgb": photo[None],
        "uint8 grey": photo[:1][None],
        "uint8 rgba": torch.cat([photo, photo[:1]])[None],
        "float [0, 1]": photo[None].float() / 255,
    }
    for name, batch in cases.items():
        ours = transforms.preprocess(batch, prep)
        reference = prep(_rgb(batch))
        assert ours.shape == (1, 3, 64, 64), name
        assert ours.is_contiguous(memory_format=torch.channels_last), name
        tolerance = ONE_LEVEL if batch.dtype == torch.uint8 else 1e-5
        torch.testing.assert_close(ours, reference, atol=tolerance, rtol=0, msg=name)


def _rgb(batch):
    return batch.expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch[:, :3]


def test_preprocess_on_device_groups_images_of_different_sizes():
    photo = torch.from_numpy(_photo().copy()).permute(2, 0, 1)
    images = [photo, photo[:, :60, :80], photo, photo[:, 10:, :100]]
    ours = transforms.preprocess(images, IMAGENET)
    for i, image in enumerate(images):
        torch.testing.assert_close(
            ours[i], IMAGENET(image[None])[0], atol=ONE_LEVEL, rtol=0
        )


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _device_path(extractor, X, batch_size):
    """The CUDA pipeline of ``extractor.transform``, run on CPU tensors."""
    images = check_images(X)
    out = np.empty((len(images), extractor.n_features_out_), np.float32)
    return run_on_device(
        images,
        extractor.backbone_.preprocessing,
        lambda batch: extractor._embed(batch, CPU),
        out,
        device=CPU,
        batch_size=batch_size,
        n_jobs=2,
        gpu_decode=True,
        on_batch=lambda n: None,
    )


@pytest.mark.parametrize("batch_size", [1, 3, 4, 16])
def test_device_pipeline_embeds_like_the_cpu_path(tmp_path, batch_size):
    rng = np.random.default_rng(0)
    photo = _photo((60, 80))
    arrays = np.stack([np.roll(photo, 7 * i, axis=1) for i in range(5)])
    paths = []
    for i, image in enumerate(arrays):
        path = tmp_path / f"{i}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(image).save(path)
        paths.append(str(path))
    inputs = {
        "uint8 NHWC": arrays,
        "uint8 NCHW": np.ascontiguousarray(arrays.transpose(0, 3, 1, 2)),
        "float [0, 255]": arrays.astype(np.float32),
        "grey": arrays[..., 0],
        "list of sizes": [arrays[0], arrays[1][:40], arrays[2][:, :50]],
        "PIL": [Image.fromarray(a) for a in arrays[:3]],
        "paths (JPEG and PNG)": paths,
        "random": rng.integers(0, 256, (4, 40, 40, 3), dtype=np.uint8),
    }
    extractor = CNNFeatureExtractor(
        "resnet18", weights=None, device="cpu", batch_size=batch_size
    )
    for name, X in inputs.items():
        extractor.fit(X)
        reference = extractor.transform(X)
        ours = _device_path(extractor, X, batch_size)
        assert ours.shape == reference.shape, name
        assert _cosines(ours, reference).min() > 0.9999, name


def test_device_pipeline_names_an_unreadable_file(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(_photo()).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg at all")
    extractor = CNNFeatureExtractor("resnet18", weights=None, device="cpu")
    extractor.fit([str(good)])
    with pytest.raises(ImageDecodeError, match="bad.jpg"):
        _device_path(extractor, [str(good)] * 5 + [str(bad)] + [str(good)] * 5, 2)


def test_prefetcher_raises_errors_and_stops_early():
    def numbers():
        yield 1
        yield 2
        raise ValueError("broken source")

    with pytest.raises(ValueError, match="broken source"):
        list(Prefetcher(numbers()))

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    iterator = iter(Prefetcher(endless(), depth=2))
    assert [next(iterator) for _ in range(3)] == [0, 1, 2]
    iterator.close()  # joins the thread: it stops producing
    count = len(produced)
    assert count <= 3 + 2 + 1
    assert len(produced) == count


# ---------------------------------------------------------------- EXIF


def _with_orientation(image: np.ndarray, orientation: int, path, fmt="PNG"):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(image).save(path, format=fmt, exif=exif.tobytes())
    return str(path)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_as_pillow_displays_it(tmp_path, orientation):
    stored = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), np.uint8)
    path = _with_orientation(stored, orientation, tmp_path / "o.png")
    with Image.open(path) as image:
        displayed = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    ours = decode_file(path).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(ours, displayed)
    tensor = torch.from_numpy(stored).permute(2, 0, 1)
    np.testing.assert_array_equal(
        orient(tensor, orientation).permute(1, 2, 0).numpy(), displayed
    )


def _sideways(photo: np.ndarray, folder):
    """The photo upright, and stored rotated with the tag that turns it back."""
    upright = _with_orientation(photo, 1, folder / "upright.jpg", "JPEG")
    # Orientation 6: the camera stored it rotated 90 degrees counter-clockwise.
    stored = np.ascontiguousarray(np.rot90(photo, k=1))
    sideways = _with_orientation(stored, 6, folder / "sideways.jpg", "JPEG")
    untagged = folder / "untagged.jpg"
    Image.fromarray(stored).save(untagged, quality=95)
    return upright, sideways, str(untagged)


@pytest.mark.slow
def test_exif_rotated_photos_embed_like_upright_ones(tmp_path):
    """Real weights on a real photo: a sideways-stored phone photo with its
    orientation tag embeds like the upright photo; without the tag it does
    not. The same for ImageNetClassifier."""
    from skimage import data

    upright, sideways, untagged = _sideways(data.chelsea(), tmp_path)
    paths = [upright, sideways, untagged]
    extractor = CNNFeatureExtractor("efficientnet_lite0", device="cpu").fit(paths)
    embeddings = extractor.transform(paths)
    cosine = _cosines(embeddings[:1], embeddings[1:])
    assert cosine[0] >= 0.99
    assert cosine[1] < cosine[0] - 0.02  # the tag is what makes the difference
    clf = ImageNetClassifier("efficientnet_lite0", device="cpu").fit(paths)
    proba = clf.predict_proba(paths)  # near-tied cat breeds: compare all 1000
    agreement = _cosines(proba[:1], proba[1:])
    assert agreement[0] >= 0.99 and agreement[1] < 0.95
    with Image.open(sideways) as image:  # PIL images are taken upright too
        pil = [image.copy()]
    pil[0].info = dict(image.info)
    assert _cosines(embeddings[:1], extractor.transform(pil))[0] >= 0.99


def test_finetune_takes_photos_upright(tmp_path):
    upright, sideways, untagged = _sideways(_photo((48, 64)), tmp_path)
    clf = FineTuneClassifier(
        "resnet18",
        weights=None,
        max_epochs=1,
        device="cpu",
        random_state=0,
        cache_frozen=False,  # predictions decode the images (no prefix outputs)
    ).fit([upright, sideways], ["a", "b"])
    dataset = clf.get_dataset([upright, sideways, untagged])
    first, second, third = (dataset[i][0]["images"] for i in range(3))
    assert first.shape == second.shape == (3, 48, 64)
    assert third.shape == (3, 64, 48)
    assert (first.float() - second.float()).abs().mean() < 3


# ------------------------------------------------------- GPU decoding logic


def _jpeg_files(tmp_path):
    photo = _photo()
    files = {}
    files["rgb"] = tmp_path / "rgb.jpg"
    Image.fromarray(photo).save(files["rgb"], quality=90)
    files["grey"] = tmp_path / "grey.jpg"
    Image.fromarray(photo[..., 0]).save(files["grey"], quality=90)
    files["cmyk"] = tmp_path / "cmyk.jpg"
    Image.fromarray(photo).convert("CMYK").save(files["cmyk"], quality=90)
    files["png"] = tmp_path / "photo.png"
    Image.fromarray(photo).save(files["png"])
    files["rotated"] = tmp_path / "rotated.jpg"
    _with_orientation(
        np.ascontiguousarray(np.rot90(photo)), 6, files["rotated"], "JPEG"
    )
    data = files["rgb"].read_bytes()
    files["corrupt"] = tmp_path / "corrupt.jpg"
    files["corrupt"].write_bytes(data[: len(data) // 3])
    return {name: str(path) for name, path in files.items()}


def test_read_encoded_sends_only_plain_jpegs_to_the_gpu(tmp_path):
    files = _jpeg_files(tmp_path)
    progressive = tmp_path / "progressive.jpg"
    Image.fromarray(_photo()).save(progressive, quality=90, progressive=True)
    files["progressive"] = str(progressive)
    modes = {name: read_encoded(path).gpu_mode for name, path in files.items()}
    assert modes["rgb"] == "RGB" and modes["rotated"] == "RGB"
    assert modes["grey"] == "GRAY"
    # Pillow takes what nvJPEG would decode slowly, wrongly or silently broken
    assert modes["cmyk"] is None and modes["png"] is None
    assert modes["progressive"] is None and modes["corrupt"] is None
    assert read_encoded(files["rotated"]).orientation == 6


def test_a_backend_that_orients_is_not_oriented_twice(tmp_path):
    files = _jpeg_files(tmp_path)
    encoded = [read_encoded(files["rotated"])]
    upright = decode_batch(encoded, CPU, backend=TORCHVISION)[0]
    as_stored = decode_batch(encoded, CPU, backend=Backend(_torchvision, orients=True))
    assert upright.shape == (3, 90, 120)  # the photo as displayed
    assert as_stored[0].shape == (3, 120, 90)  # trusted to have turned it itself


def test_pinned_copies_are_dense():
    grey = torch.zeros(2, 1, 4, 5, dtype=torch.uint8).expand(-1, 3, -1, -1)
    rgba = torch.zeros(2, 5, 4, 4, dtype=torch.uint8).permute(0, 3, 1, 2)[:, :3]
    for view in (grey, rgba):
        dense = pinned(view)
        assert 0 not in dense.stride()
        assert dense.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(dense, view)


def test_batch_decoding_falls_back_per_file(tmp_path):
    """The batched GPU decode logic, with torchvision's decoder on the CPU
    standing in for nvJPEG (same call): every file comes out as Pillow
    shows it, the ones the decoder rejects decoded by Pillow."""
    files = _jpeg_files(tmp_path)
    names = ["rgb", "grey", "cmyk", "png", "rotated"]
    encoded = [read_encoded(files[name]) for name in names]
    decoded = decode_batch(encoded, CPU, backend=TORCHVISION)
    for name, image in zip(names, decoded, strict=True):
        with Image.open(files[name]) as pil:
            expected = np.asarray(ImageOps.exif_transpose(pil).convert("RGB"))
        ours = image.permute(1, 2, 0).numpy().astype(int)
        assert ours.shape == expected.shape, name
        assert np.abs(ours - expected).mean() < 1.0, name
    grey = decoded[1]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[0], grey[2])
    with pytest.raises(ImageDecodeError, match="corrupt.jpg"):
        decode_batch(
            [read_encoded(files["rgb"]), read_encoded(files["corrupt"])],
            CPU,
            backend=TORCHVISION,
        )


def test_decoder_gpu_without_cuda_is_a_clear_error(images):
    with pytest.raises(ValueError, match="decoder='gpu'.*not on a CUDA device"):
        CNNFeatureExtractor("resnet18", weights=None, device="cpu", decoder="gpu").fit(
            images
        )
    with pytest.raises(ValueError, match="decoder='gpu'.*not on a CUDA device"):
        ImageNetClassifier("resnet18", weights=None, device="cpu", decoder="gpu").fit(
            images
        )
    for estimator in (CNNFeatureExtractor, ImageNetClassifier):
        with pytest.raises(ValueError, match="'decoder' parameter of .* must be"):
            estimator("resnet18", weights=None, decoder="nvjpeg").fit(images)
    extractor = CNNFeatureExtractor("resnet18", weights=None, decoder="cpu")
    assert extractor.fit(images).transform(images).shape == (len(images), 512)


def test_finetune_precision_is_validated(images, labels):
    clf = FineTuneClassifier("resnet18", weights=None, precision="half")
    with pytest.raises(ValueError, match="'precision' parameter of .* must be"):
        clf.fit(images, labels)


# ------------------------------------------------------- augmentation


def test_crop_resize_is_an_antialiased_resized_crop():
    photo = torch.from_numpy(_photo((300, 450))).permute(2, 0, 1).float()
    boxes = [(0, 0, 300, 450), (50, 100, 200, 200), (10, 10, 100, 150)]
    batch = photo[None].expand(len(boxes), -1, -1, -1)
    ours = transforms.crop_resize(batch, torch.tensor(boxes), 64)
    for i, box in enumerate(boxes):
        reference = F.resized_crop(photo, *box, [64, 64], antialias=True)
        aliased = F.resized_crop(photo, *box, [64, 64], antialias=False)
        error = (ours[i] - reference).abs().mean()
        # a box filter against torchvision's triangle filter: within 2 levels
        # of 255 on average, and under half a plain bilinear resize's error
        assert error < 2.0
        assert error < (aliased - reference).abs().mean() / 2


def test_random_crop_boxes_follow_random_resized_crop():
    import torchvision.transforms as T

    sizes = torch.tensor([[300, 450]] * 4000)
    generator = torch.Generator().manual_seed(0)
    ours = transforms.random_crop_boxes(
        sizes, (0.25, 1.0), generator=generator
    ).double()
    torch.manual_seed(0)
    image = torch.empty(3, 300, 450)
    theirs = torch.tensor(
        [
            T.RandomResizedCrop.get_params(image, (0.25, 1.0), (3 / 4, 4 / 3))
            for _ in range(4000)
        ]
    ).double()
    for boxes in (ours, theirs):
        top, left, h, w = boxes.unbind(1)
        assert (top >= 0).all() and (left >= 0).all()
        assert (top + h <= 300).all() and (left + w <= 450).all()
    for column in range(4):
        assert abs(ours[:, column].mean() - theirs[:, column].mean()) < 0.03 * (
            theirs[:, column].mean() + 10
        )
    area = ours[:, 2] * ours[:, 3] / (300 * 450)
    assert area.min() >= 0.24
    again = transforms.random_crop_boxes(
        sizes, (0.25, 1.0), generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(again, ours.long())


def test_augment_draws_per_image_parameters():
    photo = torch.from_numpy(_photo().copy()).permute(2, 0, 1)
    batch = photo[None].expand(6, -1, -1, -1).contiguous()
    generator = torch.Generator().manual_seed(1)
    out = transforms.augment(batch, IMAGENET, (0.25, 1.0), generator=generator)
    assert out.shape == (6, 3, 64, 64)
    distinct = {tuple(row.flatten()[:50].tolist()) for row in out}
    assert len(distinct) == 6
    again = transforms.augment(
        batch, IMAGENET, (0.25, 1.0), generator=torch.Generator().manual_seed(1)
    )
    torch.testing.assert_close(out, again)
    sizes = [photo, photo[:, :50, :70]]  # different sizes share one canvas
    assert transforms.augment(sizes, IMAGENET, (0.25, 1.0)).shape == (
        2,
        3,
        64,
        64,
    )


def test_finetune_device_preparation_matches_the_cpu_path():
    photo = torch.from_numpy(_photo().copy()).permute(2, 0, 1)
    batch = torch.stack([photo, photo.flip(-1)])
    ours = prepare_on_device(batch, IMAGENET, False, CPU)
    reference = prepare_batch(batch, IMAGENET, None, builtin=False)
    torch.testing.assert_close(ours, reference, atol=ONE_LEVEL, rtol=0)


# ------------------------------------------------------- mixed precision


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_finetune_trains_under_autocast(images, labels, precision):
    clf = FineTuneClassifier(  # float16 convolutions are slow on CPUs: tiny
        "mobilenet_v3_small",
        weights=None,
        frozen_layers=0,
        image_size=32,
        max_epochs=2,
        batch_size=4,
        device="cpu",
        precision=precision,
        random_state=0,
    ).fit(images, labels)
    losses = clf.history[:, "train_loss"]
    assert np.isfinite(losses).all()
    proba = clf.predict_proba(images)
    assert proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert ("grad_scaler_" in clf.__dict__) is (
        precision == "float16"
    )  # only float16 scales gradients
    restored = pickle_round_trip(clf)
    assert "grad_scaler_" not in restored.__dict__
    np.testing.assert_allclose(restored.predict_proba(images), proba, atol=1e-6)


def pickle_round_trip(estimator):
    import pickle

    return pickle.loads(pickle.dumps(estimator))


@pytest.mark.parametrize("benchmark", [False, True])
def test_device_pipeline_leaves_the_cudnn_flag_as_set(images, benchmark):
    """The flag is process-wide: a job that toggled it would race with jobs
    in other threads, and the same image would get other algorithms in jobs
    of other sizes."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = benchmark
    try:
        extractor = CNNFeatureExtractor("resnet18", weights=None, device="cpu")
        extractor.fit(images)
        seen = []
        extractor.backbone_.module.conv1.register_forward_hook(
            lambda *_: seen.append(torch.backends.cudnn.benchmark)
        )
        _device_path(extractor, np.concatenate([images] * 5), batch_size=2)
        assert set(seen) == {benchmark} and len(seen) == 20
        assert torch.backends.cudnn.benchmark == benchmark
    finally:
        torch.backends.cudnn.benchmark = before


def _one_step(batch: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """Resize in one antialiased step, crop and normalise (float, unrounded)."""
    mode = InterpolationMode(prep.interpolation)
    resized = F.resize(batch.float(), [prep.resize_size], interpolation=mode)
    cropped = F.center_crop(resized.clamp(0, 255) / 255, [prep.crop_size] * 2)
    return F.normalize(cropped, list(prep.mean), list(prep.std))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(300, 420), (331, 407)])
def test_large_shrinks_go_in_steps(interpolation, size):
    """CUDA's antialiased resize fails above a shrink factor of ~47 (bicubic):
    larger ones go in equal steps, within one uint8 level of one step, sides
    that no step divides included."""
    photo = torch.from_numpy(_photo(size).copy()).permute(2, 0, 1)[None]
    noise = torch.randn(photo.shape, generator=torch.Generator().manual_seed(0))
    noisy = (photo + 20 * noise).clamp(0, 255).round().to(torch.uint8)
    for shorter in (9, 5):  # shrinks of 33x to 83x: two steps
        large = Preprocessing(shorter, 4, IMAGENET.mean, IMAGENET.std, interpolation)
        assert min(size) / shorter > transforms.MAX_RESIZE_FACTOR
        ours = transforms.preprocess(noisy, large)
        reference = _one_step(noisy, large)
        torch.testing.assert_close(ours, reference, atol=ONE_LEVEL, rtol=0)
    # below the limit, the one-step resize itself
    small = Preprocessing(40, 32, IMAGENET.mean, IMAGENET.std, interpolation)
    ours = transforms.preprocess(noisy, small)
    torch.testing.assert_close(ours, _one_step(noisy, small), atol=1e-5, rtol=0)
