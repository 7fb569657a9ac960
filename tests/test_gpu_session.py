"""benchmarks/gpu_session.sh, checked on any machine: its ``--smoke`` run takes
every step's real command line and ends with the one summary; the summary's
verdicts come from the steps' reports and exit statuses."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"
OUTPUTS = {
    "bench_gpu.txt",
    "bench_gpu.json",
    "pytest_cuda.txt",
    "pytest_cuda.xml",
    "pytest_suite.txt",
    "pytest_suite.xml",
    "summary.txt",
}

_spec = importlib.util.spec_from_file_location(
    "session_summary", ROOT / "benchmarks" / "session_summary.py"
)
session_summary = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(session_summary)

needs_bash = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None,
    reason="needs bash and coreutils' timeout",
)


def _tree(root: Path) -> set[str]:
    """Files under ``root``, outside hidden folders and bytecode caches."""
    files = set()
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [
            s for s in subfolders if not s.startswith(".") and s != "__pycache__"
        ]
        files.update(os.path.relpath(os.path.join(folder, n), root) for n in names)
    return files


def _session(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OUT": str(tmp_path / "out"),
        "PYTHON": sys.executable,
        "SESSION_SECONDS": "400",
        "OMP_NUM_THREADS": "2",
    }
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path,
    )  # fmt: skip


@needs_bash
@pytest.mark.slow
def test_smoke_session_runs_every_step_and_ends_with_one_summary(tmp_path):
    before = _tree(ROOT)
    done = _session(tmp_path, "--smoke")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == OUTPUTS
    assert _tree(ROOT) == before  # nothing written into the checkout
    assert list(tmp_path.iterdir()) == [out]  # nor where it was started

    summary = (out / "summary.txt").read_text()
    assert done.stdout.rstrip().endswith(summary.rstrip())
    assert done.stdout.count("GPU session summary") == 1
    floors = json.loads((out / "bench_gpu.json").read_text())
    assert {f["check"].split(":")[0] for f in floors} == {
        "CNNFeatureExtractor, uint8 arrays",
        "CNNFeatureExtractor, JPEG paths (default decoder)",
    }
    for floor in floors:
        line = next(x for x in summary.splitlines() if x.startswith(floor["check"]))
        assert f"{floor['measured']:.2f}x" in line
        assert f">= {floor['floor']:.2f}x" in line and line.endswith("(smoke)")
    suite = next(x for x in summary.splitlines() if x.startswith("whole suite"))
    assert " passed, 0 failed" in suite and suite.endswith("pass")
    assert "pytest -m cuda" in summary
    assert summary.rstrip().endswith("of 2 checks passed")


@needs_bash
def test_session_refuses_unknown_steps(tmp_path):
    done = _session(tmp_path, "--smoke", "benchmark")
    assert done.returncode == 2
    assert "unknown argument 'benchmark'" in done.stderr
    assert not (tmp_path / "out").exists()


def _junit(path: Path, tests: int, failures: int = 0, skipped: int = 0) -> None:
    path.write_text(
        f'<testsuites><testsuite name="pytest" tests="{tests}" errors="0" '
        f'failures="{failures}" skipped="{skipped}"/></testsuites>'
    )


def test_summary_judges_floors_and_steps(tmp_path, capsys):
    floors = [
        dict(check="JPEG paths: vs bare fwd", measured=0.71, floor=0.6, passed=True),
        dict(check="arrays: vs bare fwd", measured=0.5, floor=0.8, passed=False),
        dict(check="cold: vs cold cpu", measured=None, floor=1.0, passed=False),
    ]
    (tmp_path / "bench_gpu.json").write_text(json.dumps(floors))
    _junit(tmp_path / "pytest_cuda.xml", tests=12, skipped=12)
    _junit(tmp_path / "pytest_suite.xml", tests=300, failures=2, skipped=5)
    statuses = ["bench_gpu=0", "pytest_cuda=0", "pytest_suite=1"]
    code = session_summary.main(["--out", str(tmp_path), *statuses])
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split("  ")[0]: line for line in lines}
    assert code == 1
    assert rows["JPEG paths: vs bare fwd"].endswith("0.71x            >= 0.60x  pass")
    assert rows["arrays: vs bare fwd"].endswith("FAIL")
    assert "failed" in rows["cold: vs cold cpu"]
    assert rows["cold: vs cold cpu"].endswith("FAIL")
    # every CUDA test skipped: the machine did not see its GPU
    assert rows["pytest -m cuda"].endswith("FAIL")
    assert "293 passed, 2 failed, 5 skipped" in rows['whole suite (-m "not cuda")']
    assert lines[-1] == "1 of 5 checks passed"


def test_summary_reports_steps_out_of_time(tmp_path, capsys):
    code = session_summary.main(
        ["--out", str(tmp_path), "bench_gpu=124", "pytest_suite=skipped"]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "no results (out of time)" in out
    assert "no report (skipped: no time left)" in out
    assert out.rstrip().endswith("0 of 2 checks passed")
