"""``sktransfer fit``, ``predict --estimator`` and ``evaluate --report``:
a model trained, kept, used and looked into from the command line."""

from __future__ import annotations

import csv
import re

import joblib
import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression

from sktransfer import load_model, save_model
from sktransfer.cli import main

FAST = ["--model", "resnet18", "--weights", "none", "--device", "cpu", "-q"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, match, status=1):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == status and len(lines) == 1, err
    assert "error:" in lines[0] and match in lines[0], lines[0]


@pytest.fixture
def model_file(capsys, image_folder, tmp_path):
    path = tmp_path / "model.joblib"
    code, _, err = run(
        capsys, "fit", image_folder, "-o", path, "--classifier", "logreg", *FAST
    )
    assert code == 0, err
    assert (
        "Trained resnet18 embeddings + logreg on 12 images of 3 classes "
        f"(ant 4, bee 4, cow 4); saved to {path}" in err
    )
    return path


def _lines(out: str) -> dict[str, list[tuple[str, float]]]:
    rows = {}
    for line in out.splitlines():
        name, _, ranked = line.rpartition(": ")
        rows[name] = [
            (m[1], float(m[2]) / 100) for m in re.finditer(r"(\w+) ([\d.]+)%", ranked)
        ]
    return rows


def test_fit_then_predict_with_the_estimator(
    capsys, image_folder, model_file, tmp_path
):
    record = load_model(model_file).record
    assert record["classes"] == ["ant", "bee", "cow"] and record["n_images"] == 12
    assert record["source"] == str(image_folder)
    files = sorted(str(p) for p in (image_folder / "bee").iterdir())
    code, out, err = run(
        capsys, "predict", image_folder / "bee", "--estimator", model_file,
        "--top", 2, "--device", "cpu", "-q",
    )  # fmt: skip
    assert code == 0, err
    rows = _lines(out)
    assert sorted(rows) == files
    proba = load_model(model_file).estimator.predict_proba(files)
    for filename, expected in zip(files, proba, strict=True):
        (first, p1), (_, p2) = rows[filename]
        assert first == ["ant", "bee", "cow"][expected.argmax()]
        assert p1 == pytest.approx(expected.max(), abs=6e-4) and p2 <= p1
    table = tmp_path / "predictions.csv"
    code, _, err = run(
        capsys, "predict", image_folder / "bee", "--estimator", model_file,
        "--csv", table, "--top", 3, "-q",
    )  # fmt: skip
    assert code == 0 and f"Wrote the predictions to {table}" in err
    with open(table, newline="") as handle:
        header, *body = list(csv.reader(handle))
    assert header == ["filename", "class_1", "probability_1", "class_2",
                      "probability_2", "class_3", "probability_3"]  # fmt: skip
    assert [row[0] for row in body] == files
    assert all(abs(sum(float(p) for p in row[2::2]) - 1) < 1e-4 for row in body)


def test_predict_takes_globs_and_lists_of_paths(capsys, image_folder, model_file):
    listed = image_folder / "some.txt"
    listed.write_text("# two ants\nant/0.png\n\nant/1.png\n")
    pattern = str(image_folder / "*" / "3.png")
    code, out, err = run(
        capsys, "predict", listed, pattern, "--estimator", model_file, "-q"
    )
    assert code == 0, err
    names = [line.rpartition(": ")[0] for line in out.splitlines()]
    assert names == [
        str(image_folder / "ant" / "0.png"),
        str(image_folder / "ant" / "1.png"),
        *(str(image_folder / c / "3.png") for c in ("ant", "bee", "cow")),
    ]


def test_unreadable_files_are_reported_and_skipped(capsys, image_folder, model_file):
    folder = image_folder / "bee"
    (folder / "broken.png").write_bytes(b"not a png")
    good = folder / "0.png"
    (folder / "truncated.png").write_bytes(good.read_bytes()[:200])
    listed = image_folder / "list.txt"
    listed.write_text("bee/0.png\nbee/gone.png\n")
    code, out, err = run(
        capsys, "predict", folder, listed, "--estimator", model_file, "-q"
    )
    assert code == 3
    predicted = [line.rpartition(": ")[0] for line in out.splitlines()]
    assert predicted == [str(folder / f"{i}.png") for i in range(4)] + [str(good)]
    assert "skipped" in err and "broken.png" in err and "truncated.png" in err
    assert f"{str(folder / 'gone.png')!r}: no such file" in err
    assert "3 of 8 files could not be read and were skipped" in err


def test_predict_with_the_imagenet_categories_still_works(capsys, image_folder):
    code, out, err = run(capsys, "predict", image_folder / "ant", "--top", 2, *FAST)
    assert code == 0, err
    assert len(out.splitlines()) == 4 and out.count("%") == 8


def test_predict_refuses_bad_model_files_and_tops(
    capsys, image_folder, model_file, tmp_path
):
    folder = image_folder / "ant"
    code, _, err = run(capsys, "predict", folder, "--estimator", "nowhere.joblib")
    one_line_error(code, err, "Model file 'nowhere.joblib' does not exist")
    broken = tmp_path / "broken.joblib"
    broken.write_bytes(b"garbage")
    code, _, err = run(capsys, "predict", folder, "--estimator", broken)
    one_line_error(code, err, "damaged or not a model file")
    other = tmp_path / "other.joblib"
    joblib.dump([1, 2, 3], other)
    code, _, err = run(capsys, "predict", folder, "--estimator", other)
    one_line_error(code, err, "is not an sktransfer model file")
    tabular = tmp_path / "tabular.joblib"
    save_model(LogisticRegression().fit(np.eye(2), [0, 1]), tabular)
    code, _, err = run(capsys, "predict", folder, "--estimator", tabular)
    one_line_error(code, err, "holds LogisticRegression, which does not classify image")
    code, _, err = run(capsys, "predict", folder, "--estimator", model_file, "--top", 4)
    one_line_error(code, err, "--top 4 is more than the 3 classes of the model", 2)


def test_fit_finetune_and_bad_input(capsys, image_folder, tmp_path):
    path = tmp_path / "tuned.joblib"
    code, _, err = run(
        capsys, "fit", image_folder, "-o", path, "--classifier", "finetune",
        "--epochs", 1, "--model", "mobilenet_v3_small", "--weights", "none",
        "--image-size", 48, "--device", "cpu", "-q",
    )  # fmt: skip
    assert code == 0, err
    assert "Trained fine-tuned mobilenet_v3_small (frozen_layers=all, 1 epochs)" in err
    assert load_model(path).record["backbone"] == "mobilenet_v3_small"
    code, _, err = run(capsys, "fit", image_folder, "-o", tmp_path / "no" / "m.joblib")
    one_line_error(code, err, "for --output does not exist")
    (tmp_path / "one" / "only").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "one" / "only" / "a.png")
    code, _, err = run(capsys, "fit", tmp_path / "one", "-o", path, *FAST)
    one_line_error(code, err, "has one class ('only')")


@pytest.mark.parametrize("classifier, maps", [("logreg", True), ("svm", False)])
def test_evaluate_writes_a_report(capsys, image_folder, tmp_path, classifier, maps):
    report = tmp_path / "report"
    code, out, err = run(
        capsys, "evaluate", image_folder, "--cv", 2, "--classifier", classifier,
        "--report", report, *FAST,
    )  # fmt: skip
    assert code == 0, err
    assert f"Wrote the report to {report / 'index.html'}" in err
    page = (report / "index.html").read_text()
    for name in ("ant", "bee", "cow"):
        assert f"<tr><td>{name}</td>" in page
    assert '<img src="confusion.png"' in page and "precision" in page
    assert (report / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    with open(report / "per_class.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["class"] for row in rows] == ["ant", "bee", "cow"]
    assert sum(int(row["images"]) for row in rows) == 12
    top1 = float(out.split("top-1")[1].split()[0])
    if top1 < 1:
        assert (report / "top_losses.png").read_bytes()[:4] == b"\x89PNG"
        assert ("Grad-CAM" in page) == maps
        assert ("Heat maps need a linear classifier" in page) == (not maps)
    assert all(0 <= float(row["recall"]) <= 1 for row in rows)
