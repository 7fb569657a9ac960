"""Bad image input: each gets a clear error that names the problem (and the file)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.base import clone
from sklearn.datasets import load_sample_images
from sklearn.exceptions import NotFittedError

from sktransfer import CNNFeatureExtractor, ImageDecodeError, InvalidImageError
from sktransfer._images import check_images


@pytest.fixture(scope="module")
def extractor():
    # device="cpu": some tests compare embeddings exactly or at atol=1e-5
    return CNNFeatureExtractor("mobilenet_v3_small", weights=None, device="cpu").fit(
        np.zeros((1, 32, 32, 3), np.uint8)
    )


@pytest.mark.parametrize(
    ("X", "match"),
    [
        (np.zeros((0, 32, 32, 3), np.uint8), "empty image array"),
        ([], "empty list"),
        (np.zeros((4, 10), np.uint8), r"got shape \(4, 10\) \(2-D\)"),
        (np.zeros((2, 3, 8, 8, 3), np.uint8), "5-D"),
        (np.zeros((2, 8, 8, 5), np.uint8), "1, 3 or 4 channels"),
        (np.zeros((2, 2, 8, 8), np.uint8), "1, 3 or 4 channels"),
        (np.full((2, 8, 8, 3), np.nan), "NaN or infinity"),
        (np.full((2, 8, 8, 3), np.inf), "NaN or infinity"),
        (np.full((2, 8, 8, 3), -0.5), r"\[0, 1\] or in \[0, 255\]"),
        (np.full((2, 8, 8, 3), 300.0), r"\[0, 1\] or in \[0, 255\]"),
        (np.full((2, 8, 8, 3), 256, dtype=np.int64), r"\[0, 255\]"),
        (np.zeros((2, 8, 8, 3), bool), "dtype bool"),
        (np.zeros((2, 8, 8, 3), complex), "Complex data not supported"),
        (["a.jpg", Image.new("RGB", (4, 4))], "mixed types"),
        ([np.zeros((8, 8, 3)), "a.jpg"], "mixed types"),
        ([np.zeros((2, 8, 8, 3))], "must be one image"),
        (
            [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)],
            "channel counts|fitted on 3-channel",
        ),
        ([np.full((8, 8, 3), np.nan)], "NaN or infinity"),
        ("one.jpg", "single path"),
    ],
)
def test_invalid_arrays_and_lists(extractor, X, match):
    with pytest.raises(InvalidImageError, match=match):
        extractor.transform(X)
    with pytest.raises(ValueError, match=match):  # also a ValueError
        CNNFeatureExtractor("resnet18", weights=None).fit(X)


def test_missing_file_is_named(extractor, tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        extractor.transform([str(missing)])


def test_not_an_image_is_named(extractor, tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a JPEG")
    with pytest.raises(ImageDecodeError, match=r"notes\.jpg.*not an image"):
        extractor.transform([str(path)])


def test_truncated_jpeg_is_named(extractor, tmp_path, images):
    path = tmp_path / "cut.jpg"
    Image.fromarray(np.repeat(np.repeat(images[0], 8, 0), 8, 1)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match=r"cut\.jpg.*truncated"):
        extractor.transform([str(path)])


@pytest.mark.parametrize("cut", ["in the pixel data", "in the header"])
def test_truncated_jpeg_in_a_list_of_paths_is_named(
    extractor, tmp_path, jpeg_paths, cut
):
    """A photo cut short (e.g. an interrupted copy) among good files raises the
    package's error and names the file, like every other unreadable file."""
    photo = tmp_path / "photo.jpg"
    Image.fromarray(load_sample_images().images[0]).save(photo, quality=90)
    data = photo.read_bytes()
    photo.write_bytes(data[: len(data) // 3 if cut == "in the pixel data" else 200])
    paths = [*jpeg_paths[:3], str(photo), *jpeg_paths[3:]]
    with pytest.raises(ImageDecodeError, match=r"photo\.jpg.*[tT]runcated"):
        extractor.transform(paths)
    small_batches = clone(extractor).set_params(batch_size=2, n_jobs=2)
    with pytest.raises(ImageDecodeError, match=r"photo\.jpg.*[tT]runcated"):
        small_batches.fit(jpeg_paths[:1]).transform(paths)


def test_directory_is_not_an_image(extractor, tmp_path):
    with pytest.raises(ImageDecodeError, match="is a directory"):
        extractor.transform([str(tmp_path)])


def test_transform_before_fit():
    with pytest.raises(NotFittedError, match="not fitted"):
        CNNFeatureExtractor(weights=None).transform(np.zeros((1, 8, 8, 3), np.uint8))


def test_other_channel_count_at_transform_time(extractor):
    with pytest.raises(InvalidImageError, match="1 channel.*fitted on 3-channel"):
        extractor.transform(np.zeros((1, 32, 32), np.uint8))


def test_float_rule_is_decided_on_the_whole_array():
    dark_in_255 = np.zeros((2, 4, 4, 3), np.float32)
    dark_in_255[1] = 200.0
    images = check_images(dark_in_255)
    assert float(images[1].max()) == pytest.approx(200 / 255)
    assert float(images[0].max()) == 0.0


def test_nchw_and_grey_layouts_are_detected():
    assert check_images(np.zeros((2, 3, 9, 7), np.uint8))[0].shape == (3, 9, 7)
    assert check_images(np.zeros((2, 9, 7, 1), np.uint8))[0].shape == (3, 9, 7)
    assert check_images(np.zeros((2, 9, 7), np.uint8)).n_channels == 1


def test_list_of_arrays_of_different_sizes(extractor, rng):
    """e.g. ``load_sample_images().images``: one row per image, whatever its size."""
    small = rng.integers(0, 256, size=(40, 30, 3), dtype=np.uint8)
    large = rng.integers(0, 256, size=(70, 90, 3), dtype=np.uint8)
    Z = extractor.transform([small, large])
    np.testing.assert_allclose(Z[0], extractor.transform(small[None])[0], atol=1e-5)
    np.testing.assert_allclose(Z[1], extractor.transform(large[None])[0], atol=1e-5)


def test_list_of_float_arrays_follows_one_range_rule():
    images = check_images([np.full((4, 4, 3), 0.5), np.full((4, 4, 3), 200.0)])
    assert float(images[0].max()) == pytest.approx(0.5 / 255)
    assert float(images[1].max()) == pytest.approx(200 / 255)


def test_input_arrays_are_never_modified(extractor, rng):
    """Float [0, 255] input is rescaled out of place, whatever its layout."""
    X = rng.uniform(0, 255, size=(3, 32, 32, 3)).astype(np.float32)
    for given in (X, X.transpose(0, 3, 1, 2), list(X)):
        before = [np.array(image, copy=True) for image in given]
        first = extractor.transform(given)
        np.testing.assert_array_equal(extractor.transform(given), first)
        for image, original in zip(given, before, strict=True):
            np.testing.assert_array_equal(image, original)
    original = X.copy()
    images = check_images(X)
    first, again = images[0], images[0]
    assert torch.equal(first, again)  # reading does not rescale the stored array
    torch.testing.assert_close(first, torch.from_numpy(X[0]).permute(2, 0, 1) / 255)
    np.testing.assert_array_equal(X, original)
