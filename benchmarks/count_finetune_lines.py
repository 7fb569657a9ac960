"""How long the fine-tuning code is: lines, non-blank lines and code lines.

Code lines leave out blank lines, comments and docstrings. Fine-tuning is
``sktransfer/_finetune/`` and ``sktransfer/_randomness.py`` (each fit's own
generators); ``--rev`` counts a git revision instead of the working tree, and
``--before-rebuild`` the ten modules that the rebuild of 2026-12-02 replaced
(at 696b8ec~1).

    python benchmarks/count_finetune_lines.py [--rev REV | --before-rebuild]
"""

from __future__ import annotations

import argparse
import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOW = ["sktransfer/_finetune/", "sktransfer/_randomness.py"]
BEFORE_REV = "696b8ec~1"
BEFORE = [
    f"sktransfer/{name}.py"
    for name in (
        "_finetune _finetune_data _finetune_device _finetune_net _freeze _frozen "
        "_head _prefix _schedule _weighting"
    ).split()
]


def counts(source: str) -> tuple[int, int, int]:
    """``(lines, non-blank lines, code lines)`` of a Python source."""
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                docstrings.update(range(body[0].lineno, body[0].end_lineno + 1))
    lines = source.splitlines()
    nonblank = [i for i, line in enumerate(lines, 1) if line.strip()]
    code = [
        i
        for i in nonblank
        if i not in docstrings and not lines[i - 1].strip().startswith("#")
    ]
    return len(lines), len(nonblank), len(code)


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--rev")
    which.add_argument("--before-rebuild", action="store_true")
    args = parser.parse_args()
    rev, paths = (BEFORE_REV, BEFORE) if args.before_rebuild else (args.rev, NOW)
    if rev is None:
        files = git("ls-files", *paths).split()
        read = lambda path: (ROOT / path).read_text()  # noqa: E731
    else:
        files = git("ls-tree", "-r", "--name-only", rev, *paths).split()
        read = lambda path: git("show", f"{rev}:{path}")  # noqa: E731
    total = [0, 0, 0]
    for path in sorted(f for f in files if f.endswith(".py")):
        found = counts(read(path))
        total = [a + b for a, b in zip(total, found, strict=True)]
        print(f"{path:42s} {found[0]:6d} {found[1]:6d} {found[2]:6d}")
    label = "total (lines, non-blank, code)"
    print(f"{label:42s} {total[0]:6d} {total[1]:6d} {total[2]:6d}")


if __name__ == "__main__":
    main()
