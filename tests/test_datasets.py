"""load_image_folder: layout, ordering, hidden and non-image files, errors."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sktransfer import CNNFeatureExtractor, ImageDecodeError, load_image_folder


def _rel(data, root):
    return [Path(f).relative_to(root).as_posix() for f in data.filenames]


def _no_warnings(call):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return call()


def test_bunch_layout(image_folder):
    data = _no_warnings(lambda: load_image_folder(image_folder))
    assert data.target_names == ["ant", "bee", "cow"]
    assert data.target.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert data.target.dtype == np.int64
    assert _rel(data, image_folder) == [
        f"{c}/{i}.png" for c in ("ant", "bee", "cow") for i in range(4)
    ]
    assert data.root == str(image_folder)
    assert all(os.path.isfile(f) for f in data.filenames)
    X, y = load_image_folder(str(image_folder), return_X_y=True)
    np.testing.assert_array_equal(X, data.filenames)
    np.testing.assert_array_equal(y, data.target)


def test_sorted_and_deterministic_whatever_the_creation_order(tmp_path):
    root = tmp_path / "root"
    for cls, names in [
        ("zebra", ["b.jpg", "a.jpg"]),
        ("apple", ["10.png", "2.png", "1.png"]),
    ]:
        (root / cls).mkdir(parents=True)
        for name in names:
            Image.new("RGB", (4, 4)).save(root / cls / name)
    (root / "apple" / "sub").mkdir()
    Image.new("RGB", (4, 4)).save(root / "apple" / "sub" / "0.png")
    first = load_image_folder(root)
    second = load_image_folder(root)
    np.testing.assert_array_equal(first.filenames, second.filenames)
    assert first.target_names == ["apple", "zebra"]
    assert _rel(first, root) == [
        "apple/1.png", "apple/10.png", "apple/2.png", "apple/sub/0.png",
        "zebra/a.jpg", "zebra/b.jpg",
    ]  # fmt: skip
    assert first.target.tolist() == [0, 0, 0, 0, 1, 1]


def test_hidden_files_and_folders_are_skipped_silently(image_folder):
    (image_folder / "ant" / ".DS_Store").write_bytes(b"\0\1")
    Image.new("RGB", (4, 4)).save(image_folder / "bee" / ".hidden.png")
    (image_folder / ".cache").mkdir()
    Image.new("RGB", (4, 4)).save(image_folder / ".cache" / "x.png")
    (image_folder / "cow" / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (4, 4)).save(image_folder / "cow" / ".ipynb_checkpoints" / "x.png")
    data = _no_warnings(lambda: load_image_folder(image_folder))
    assert data.target_names == ["ant", "bee", "cow"]
    assert len(data.filenames) == 12


def test_non_image_files_are_skipped_with_one_warning(image_folder):
    (image_folder / "ant" / "notes.txt").write_text("not an image")
    (image_folder / "bee" / "labels.csv").write_text("a,b")
    (image_folder / "README.md").write_text("about")
    (image_folder / "empty").mkdir()
    with pytest.warns(
        UserWarning, match=r"skipped 4 item\(s\).*ant/notes.txt"
    ) as record:
        data = load_image_folder(image_folder)
    assert len(record) == 1
    message = str(record[0].message)
    assert "README.md (not in a class folder)" in message
    assert "empty/ (a class folder without images)" in message
    assert data.target_names == ["ant", "bee", "cow"]
    assert not any(f.endswith((".txt", ".csv")) for f in data.filenames)


def test_extensions_are_case_insensitive_and_configurable(image_folder):
    Image.new("RGB", (4, 4)).save(image_folder / "ant" / "UPPER.JPG", format="JPEG")
    assert len(load_image_folder(image_folder).filenames) == 13
    with pytest.warns(UserWarning, match=r"skipped 14 item\(s\).*ant/0.png"):
        only_jpg = load_image_folder(image_folder, extensions=("jpg",))
    assert only_jpg.target_names == ["ant"]
    assert _rel(only_jpg, image_folder) == ["ant/UPPER.JPG"]
    with pytest.raises(ValueError, match="extensions is empty"):
        load_image_folder(image_folder, extensions=())


def test_corrupt_image_fails_when_read_naming_the_file(image_folder):
    (image_folder / "ant" / "broken.png").write_bytes(b"this is not a png")
    data = _no_warnings(lambda: load_image_folder(image_folder))
    assert any(f.endswith("broken.png") for f in data.filenames)
    extractor = CNNFeatureExtractor("resnet18", weights=None, device="cpu")
    with pytest.raises(ImageDecodeError, match="broken.png"):
        extractor.fit_transform(data.filenames)


def test_filenames_feed_the_estimators(image_folder):
    X, y = load_image_folder(image_folder, return_X_y=True)
    features = CNNFeatureExtractor(
        "resnet18", weights=None, device="cpu"
    ).fit_transform(X)
    assert features.shape == (12, 512)


def test_categories_subset(image_folder):
    data = load_image_folder(image_folder, categories=["cow", "ant"])
    assert data.target_names == ["ant", "cow"]
    assert data.target.tolist() == [0] * 4 + [1] * 4
    with pytest.raises(
        ValueError, match=r"\['bea'\] are not class folders.*Did you mean 'bee'"
    ):
        load_image_folder(image_folder, categories=["bea"])


def test_missing_root(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"Image folder .*nowhere' does not exist"
    ):
        load_image_folder(tmp_path / "nowhere")


def test_root_is_a_file(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (4, 4)).save(path)
    with pytest.raises(NotADirectoryError, match="is a file, not an image folder"):
        load_image_folder(path)


def test_empty_root(tmp_path):
    with pytest.raises(ValueError, match=r"has no class sub-folders \(found 0 file"):
        load_image_folder(tmp_path)


def test_root_with_images_but_no_class_folders(tmp_path):
    for i in range(3):
        Image.new("RGB", (4, 4)).save(tmp_path / f"{i}.png")
    with pytest.raises(ValueError, match=r"no class sub-folders \(found 3 file"):
        load_image_folder(tmp_path)


def test_class_folders_without_images(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="holds no image files"):
        load_image_folder(tmp_path)
