"""The ``sktransfer`` command, run in-process through ``main`` and as a script."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sktransfer
from sktransfer.cli import main, sidecar_path

FAST = ["--model", "resnet18", "--weights", "none", "--device", "cpu", "-q"]
HAS_PYARROW = importlib.util.find_spec("pyarrow") is not None


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, match, status=1):
    assert code == status
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("sktransfer") and "error:" in lines[0]
    assert "Traceback" not in err
    assert match in lines[0], lines[0]


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """Real photographs: 6 classes (skimage scenes) x 3 crops, 80 px JPEGs."""
    from skimage import data

    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for name in ["astronaut", "brick", "chelsea", "coffee", "grass", "rocket"]:
        image = getattr(data, name)()
        image = np.stack([image] * 3, -1) if image.ndim == 2 else image
        (root / name).mkdir()
        side = int(min(image.shape[:2]) * 0.7)
        for i in range(3):
            top = rng.integers(0, image.shape[0] - side + 1)
            left = rng.integers(0, image.shape[1] - side + 1)
            crop = image[top : top + side, left : left + side]
            Image.fromarray(crop).resize((80, 80)).save(root / name / f"{i}.jpg")
    return root


# ----------------------------------------------------------------------- help, usage


@pytest.mark.parametrize(
    "command", [[], ["models"], ["embed"], ["evaluate"], ["fit"], ["predict"]]
)
def test_help(capsys, command):
    code, out, _ = run(capsys, *command, "--help")
    assert code == 0
    assert out.startswith("usage: sktransfer")


def test_no_command_prints_help(capsys):
    code, _, err = run(capsys)
    assert code == 2 and "COMMAND" in err


def test_unknown_classifier(capsys, image_folder):
    code, _, err = run(capsys, "evaluate", image_folder, "--classifier", "forest")
    assert_one_line_error(code, err, "invalid choice: 'forest'", status=2)
    for choice in ("svm", "knn", "logreg", "finetune"):
        assert f"'{choice}'" in err


@pytest.mark.parametrize(
    "argv, match",
    [
        (["evaluate", "x", "--cv", "1"], "--cv: must be at least 2, got 1"),
        (["evaluate", "x", "--cv", "two"], "expected an integer, got 'two'"),
        (["predict", "x.jpg", "--top", "0"], "--top: must be at least 1"),
        (["embed", "x.jpg"], "the following arguments are required: -o/--output"),
        (["fit", "x"], "the following arguments are required: -o/--output"),
        (["train", "x"], "invalid choice: 'train'"),
        (["evaluate", "x", "--image-size", "8"], "--image-size: must be at least 16"),
        (
            ["evaluate", "x", "--backbone-lr-ratio", "0"],
            "--backbone-lr-ratio: must be a positive number, got 0",
        ),
        (
            ["evaluate", "x", "--backbone-lr-ratio", "fast"],
            "--backbone-lr-ratio: expected a number, got 'fast'",
        ),
    ],
)
def test_usage_errors(capsys, argv, match):
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, match, status=2)


# ----------------------------------------------------------------------- models


def test_models_offline(capsys):
    code, out, _ = run(capsys, "models", "--offline")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["backbone", "embedding", "offline", "weights"]
    assert any(line.split() == ["efficientnet_lite0", "1280", "yes"] for line in lines)
    assert "timm/<name>" in out


def test_models_lists_every_backbone_with_its_width(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:] if line}
    assert rows["resnet18"][0] == "512"
    assert rows["vgg16"][0] == "4096"
    assert rows["alexnet"][0] == "4096"
    assert rows["regnet_y_400mf"][0] == "440"  # needs the non-meta fallback
    assert rows["efficientnet_lite0"] == ["1280", "yes"]
    assert "?" not in {row[0] for row in rows.values()}


# ----------------------------------------------------------------------- embed


def test_embed_image_folder_to_npy(capsys, image_folder, tmp_path):
    output = tmp_path / "emb.npy"
    code, _, err = run(capsys, "embed", image_folder, "-o", output, *FAST)
    assert code == 0, err
    embeddings = np.load(output)
    assert embeddings.shape == (12, 512) and embeddings.dtype == np.float32
    with open(sidecar_path(output), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["label"] for r in rows] == ["ant"] * 4 + ["bee"] * 4 + ["cow"] * 4
    assert rows[0]["filename"].endswith(os.path.join("ant", "0.png"))
    assert "Wrote 12 embeddings of width 512" in err


def test_embed_files_to_csv_matches_npy(capsys, jpeg_paths, tmp_path):
    code, _, _ = run(capsys, "embed", *jpeg_paths[:3], "-o", tmp_path / "e.csv", *FAST)
    assert code == 0
    code, _, _ = run(capsys, "embed", *jpeg_paths[:3], "-o", tmp_path / "e.npy", *FAST)
    assert code == 0
    with open(tmp_path / "e.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][:2] == ["filename", "cnnfeatureextractor0"] and len(rows[0]) == 513
    assert [r[0] for r in rows[1:]] == jpeg_paths[:3]
    from_csv = np.array([[float(v) for v in r[1:]] for r in rows[1:]], dtype=np.float32)
    np.testing.assert_array_equal(from_csv, np.load(tmp_path / "e.npy"))


def test_embed_flat_folder(capsys, jpeg_paths, tmp_path):
    folder = Path(jpeg_paths[0]).parent
    code, _, _ = run(capsys, "embed", folder, "-o", tmp_path / "flat.npy", *FAST)
    assert code == 0
    with open(sidecar_path(tmp_path / "flat.npy"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["filename"] for r in rows] == sorted(jpeg_paths)
    assert "label" not in rows[0]


@pytest.mark.skipif(not HAS_PYARROW, reason="pyarrow is not installed")
def test_embed_parquet(capsys, image_folder, tmp_path):
    import pyarrow.parquet as pq

    code, _, _ = run(capsys, "embed", image_folder, "-o", tmp_path / "e.parquet", *FAST)
    assert code == 0
    table = pq.read_table(tmp_path / "e.parquet")
    assert table.num_rows == 12 and table.column_names[:2] == ["filename", "label"]


@pytest.mark.skipif(HAS_PYARROW, reason="pyarrow is installed")
def test_embed_parquet_without_pyarrow_fails_before_embedding(
    capsys, image_folder, tmp_path
):
    code, _, err = run(
        capsys, "embed", image_folder, "-o", tmp_path / "e.parquet", *FAST
    )
    assert_one_line_error(code, err, "Writing .parquet needs pyarrow")
    assert "Embedding" not in err and not (tmp_path / "e.parquet").exists()


@pytest.mark.parametrize(
    "output, match",
    [("e.txt", "unknown format '.txt'; use one of .npy, .csv, .parquet"),
     ("e", "unknown format '(no extension)'"),
     ("missing/e.npy", "Output folder")],
)  # fmt: skip
def test_embed_bad_output(capsys, image_folder, tmp_path, output, match):
    code, _, err = run(capsys, "embed", image_folder, "-o", tmp_path / output, *FAST)
    assert_one_line_error(code, err, match)


def test_embed_folders_and_files_mixed(capsys, image_folder, jpeg_paths, tmp_path):
    out = tmp_path / "mixed.npy"
    argv = ["embed", image_folder / "bee", jpeg_paths[1], image_folder, "-o", out]
    code, _, err = run(capsys, *argv, *FAST)
    assert code == 0, err
    with open(sidecar_path(out), newline="") as handle:
        rows = list(csv.DictReader(handle))
    expected = [str(image_folder / "bee" / f"{i}.png") for i in range(4)]
    expected.append(jpeg_paths[1])
    expected += [str(image_folder / c / f"{i}.png") for c in ("ant", "bee", "cow")
                 for i in range(4)]  # fmt: skip
    assert [r["filename"] for r in rows] == expected
    assert "label" not in rows[0]
    assert np.load(out).shape == (17, 512)


def test_embed_bad_inputs(capsys, image_folder, jpeg_paths, tmp_path):
    out = tmp_path / "e.npy"
    code, _, err = run(
        capsys, "embed", jpeg_paths[0], tmp_path / "nope.jpg", "-o", out, *FAST
    )
    assert_one_line_error(code, err, "nope.jpg' does not exist")
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "embed", tmp_path / "empty", "-o", out, *FAST)
    assert_one_line_error(code, err, "holds no image files")
    code, _, err = run(
        capsys, "embed", image_folder, "-o", out, "--model", "resnt18", "-q"
    )
    assert_one_line_error(
        code, err, "Unknown backbone 'resnt18'. Did you mean 'resnet18'"
    )


def test_embed_non_image_file_is_a_one_line_error(capsys, tmp_path):
    (tmp_path / "notes.png").write_text("not really a png")
    code, _, err = run(
        capsys, "embed", tmp_path / "notes.png", "-o", tmp_path / "e.npy", *FAST
    )
    assert_one_line_error(code, err, "Cannot decode image file")


# ----------------------------------------------------------------------- evaluate


@pytest.mark.slow
def test_evaluate_real_photos(capsys, photo_folder, tmp_path):
    plot = tmp_path / "confusion.png"
    code, out, err = run(
        capsys, "evaluate", photo_folder, "--model", "efficientnet_lite0", "--cv", 3,
        "--plot", plot, "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    assert "18 images, 6 classes, efficientnet_lite0 embeddings (1280) + svm" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
    top1, top5 = float(rows["top-1"][0]), float(rows["top-5"][0])
    assert rows["top-1"][1] == "±" and rows["top-5"][1] == "±"
    assert top1 >= 0.8 and top5 == 1.0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("classifier", ["knn", "logreg"])
def test_evaluate_other_classifiers(capsys, image_folder, classifier):
    code, out, err = run(
        capsys, "evaluate", image_folder, "--cv", 2, "--classifier", classifier, *FAST
    )
    assert code == 0, err
    assert f"+ {classifier}, 2-fold CV" in out
    assert "top-5     n/a (needs more than 5 classes)" in out
    top1, plus_minus, std = out.split("top-1")[1].split()[:3]
    assert plus_minus == "±"
    assert (top1, std) == _reference_top1(image_folder, classifier)


def _reference_top1(root, classifier):
    """Mean and std of the top-1 accuracy over the folds, computed here with
    scikit-learn from the settings that ``evaluate`` documents."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import top_k_accuracy_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    from sktransfer import CNNFeatureExtractor, load_image_folder

    data = load_image_folder(root)
    X = CNNFeatureExtractor("resnet18", weights=None, device="cpu").fit_transform(
        data.filenames
    )
    y = data.target
    if classifier == "knn":  # 4 images per class: 2 in each training fold
        model = make_pipeline(
            Normalizer(), KNeighborsClassifier(n_neighbors=2, weights="distance")
        )
    else:
        model = make_pipeline(
            StandardScaler(), LogisticRegression(C=0.1, max_iter=3000)
        )
    scores = []
    for train, test in StratifiedKFold(2, shuffle=True, random_state=0).split(X, y):
        fitted = model.fit(X[train], y[train])
        scores.append(
            top_k_accuracy_score(
                y[test], fitted.predict_proba(X[test]), k=1, labels=fitted.classes_
            )
        )
    return f"{np.mean(scores):.3f}", f"{np.std(scores):.3f}"


def test_evaluate_finetune(capsys, image_folder, tmp_path):
    plot = tmp_path / "cm.png"
    code, out, err = run(
        capsys, "evaluate", image_folder, "--cv", 2, "--classifier", "finetune",
        "--epochs", 1, "--frozen-layers", 3, "--plot", plot, "--image-size", 48,
        "--backbone-lr-ratio", 1.0, "--model", "mobilenet_v3_small",
        "--weights", "none", "--device", "cpu", "-q",
    )  # fmt: skip
    assert code == 0, err
    assert (
        "12 images, 3 classes, fine-tuned mobilenet_v3_small (frozen_layers=3, " in out
    )
    assert "1 epochs), 2-fold CV" in out and "top-1" in out
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_evaluate_bad_frozen_layers(capsys, image_folder):
    code, _, err = run(capsys, "evaluate", image_folder, "--frozen-layers", "some")
    assert_one_line_error(code, err, "expected 'all' or an integer >= 0", status=2)


@pytest.mark.parametrize("epochs", ["0", "some"])
def test_evaluate_bad_epochs(capsys, image_folder, epochs):
    code, _, err = run(capsys, "evaluate", image_folder, "--epochs", epochs)
    assert_one_line_error(code, err, "expected 'auto' or an integer >= 1", status=2)


def test_evaluate_missing_folder(capsys, tmp_path):
    code, _, err = run(capsys, "evaluate", tmp_path / "nowhere", *FAST)
    assert_one_line_error(code, err, "nowhere' does not exist")


def test_evaluate_one_class(capsys, image_folder):
    import shutil

    shutil.rmtree(image_folder / "bee")
    shutil.rmtree(image_folder / "cow")
    code, _, err = run(capsys, "evaluate", image_folder, *FAST)
    assert_one_line_error(
        code, err, "has one class ('ant'); evaluating a classifier needs"
    )


def test_evaluate_too_few_images_for_cv(capsys, image_folder):
    code, _, err = run(capsys, "evaluate", image_folder, "--cv", 5, *FAST)
    assert_one_line_error(code, err, "Class 'ant' has 4 image(s), fewer than --cv 5")


def test_evaluate_warns_in_one_line_about_skipped_files(capsys, image_folder, tmp_path):
    (image_folder / "ant" / "notes.txt").write_text("x")
    code, _, err = run(capsys, "evaluate", image_folder, "--cv", 2, *FAST)
    assert code == 0
    warnings = [line for line in err.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "ant/notes.txt" in warnings[0]
    assert warnings[0].startswith("sktransfer: warning: load_image_folder skipped 1")


def test_evaluate_plot_folder_missing(capsys, image_folder, tmp_path):
    code, _, err = run(
        capsys, "evaluate", image_folder, "--plot", tmp_path / "a" / "b.png"
    )
    assert_one_line_error(code, err, "for --plot does not exist")


# ----------------------------------------------------------------------- predict


def test_predict_prints_top_k_per_file(capsys, jpeg_paths):
    code, out, err = run(capsys, "predict", *jpeg_paths[:2], "--top", 3, *FAST)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    for path, line in zip(jpeg_paths[:2], lines, strict=True):
        assert line.startswith(f"{path}: ")
        assert line.count("%") == 3


def test_predict_top_too_large(capsys, jpeg_paths):
    code, _, err = run(capsys, "predict", jpeg_paths[0], "--top", 1001, *FAST)
    assert_one_line_error(
        code, err, "--top 1001 is more than the 1000 classes of the model", status=2
    )


@pytest.mark.slow
def test_predict_real_photo(capsys, tmp_path):
    from sklearn.datasets import load_sample_images

    path = tmp_path / "china.jpg"
    Image.fromarray(load_sample_images().images[0]).save(path)
    code, out, _ = run(
        capsys, "predict", path, "--model", "efficientnet_lite0", "-q",
        "--device", "cpu",  # the top-1 answer checked is the float32 CPU one
    )  # fmt: skip
    assert code == 0
    assert out.startswith(f"{path}: palace ")


# ----------------------------------------------------------------------- as a script


def _script() -> list[str]:
    """The installed console script, else ``python -m sktransfer.cli``."""
    script = Path(sys.executable).with_name("sktransfer")
    return (
        [str(script)] if script.exists() else [sys.executable, "-m", "sktransfer.cli"]
    )


def test_console_script_missing_folder(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    missing = subprocess.run(
        [*_script(), "evaluate", str(tmp_path / "nowhere")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert missing.returncode == 1
    assert missing.stderr.strip().count("\n") == 0
    assert missing.stderr.startswith("sktransfer: error: Image folder")
    assert "Traceback" not in missing.stderr and missing.stdout == ""


def test_help_imports_no_torch_and_package_names_load_on_use():
    """``sktransfer --help`` answers without importing torch; the package's
    public names load when first used."""
    code = (
        "import sys; from sktransfer.cli import main; "
        "status = main(['predict', '--help']); "
        "import sktransfer; loaded = 'torch' in sys.modules; "
        "sktransfer.load_model; "
        "print(status, loaded, 'skorch' in sys.modules, sorted(sktransfer.__all__) "
        "== sorted(n for n in sktransfer.__all__ if hasattr(sktransfer, n)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert out.stdout.strip().splitlines()[-1] == "0 False False True", out.stderr
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        sktransfer.nothing  # noqa: B018


def test_console_exits_with_the_status_of_main(tmp_path):
    run = subprocess.run(
        [*_script(), "predict", str(tmp_path / "nowhere.jpg")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 1
    assert "does not exist" in run.stderr
