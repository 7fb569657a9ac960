"""Suggestions for misspelt names: ``Did you mean 'vgg16'?``."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ``" Did you mean 'a' or 'b'?"`` for the closest choices, or ``""``.

    Candidates come from difflib; they are ranked by edit distance with
    transpositions, so ``'vgg61'`` suggests ``'vgg16'`` first.
    """
    name = str(name)
    close = difflib.get_close_matches(name, list(choices), n=max(n, 10), cutoff=0.5)
    matches = sorted(close, key=lambda c: _edit_distance(name.lower(), c.lower()))[:n]
    if not matches:
        return ""
    quoted = [repr(m) for m in matches]
    listed = (
        quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + f" or {quoted[-1]}"
    )
    return f" Did you mean {listed}?"


def _edit_distance(a: str, b: str) -> int:
    """Optimal-string-alignment distance (Levenshtein plus adjacent swaps)."""
    d = [
        [i + j if i * j == 0 else 0 for j in range(len(b) + 1)]
        for i in range(len(a) + 1)
    ]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]
