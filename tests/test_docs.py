"""The documentation builds without warnings (MkDocs strict mode)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_docs_build_strict(tmp_path):
    pytest.importorskip("mkdocstrings")
    if (
        shutil.which("mkdocs") is None
        and not (Path(sys.executable).parent / "mkdocs").exists()
    ):
        pytest.skip("mkdocs is not installed")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--site-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "backbones" / "index.html").read_text()
    assert "4096" in table and "layer4" in table  # generated from the registry
