"""The one summary that ends ``benchmarks/gpu_session.sh``.

Reads what the steps left in ``--out`` (``bench_gpu.json`` from
``bench_gpu.py --summary``, ``pytest_*.xml`` from ``--junitxml``) and each
step's exit status (``name=status`` arguments; 124: out of time), and prints
one row per check: each benchmark floor (measured, floor, pass/FAIL) and each
test step (counts; green or not). Exits 1 when any check fails, else 0.

    python benchmarks/session_summary.py --out DIR [--smoke] bench_gpu=0 ...

With ``--smoke`` the benchmark's ratios come from a tiny run (possibly on a
CPU): they are shown, not judged.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

TIMED_OUT = {"124", "137"}  # timeout's status; killed after the grace period
WIDTH = 64


def describe(status: str | None) -> str:
    if status is None:
        return "not run"
    if status == "skipped":
        return "skipped: no time left"
    if status in TIMED_OUT:
        return "out of time"
    return f"exit status {status}"


def bench_rows(out: Path, status: str | None, smoke: bool) -> list[tuple]:
    """``(check, measured, floor, verdict)`` for each floor of bench_gpu.py."""
    path = out / "bench_gpu.json"
    if not path.exists():
        return [("bench_gpu.py", f"no results ({describe(status)})", "", "FAIL")]
    rows = []
    for floor in json.loads(path.read_text()):
        measured = floor["measured"]
        shown = "failed" if measured is None else f"{measured:.2f}x"
        verdict = "(smoke)" if smoke else ("pass" if floor["passed"] else "FAIL")
        rows.append((floor["check"], shown, f">= {floor['floor']:.2f}x", verdict))
    if status not in (None, "0"):
        rows.append(("bench_gpu.py", describe(status), "exit status 0", "FAIL"))
    return rows


def pytest_counts(path: Path) -> dict[str, int] | None:
    """Totals of a JUnit XML report, or None when there is none."""
    if not path.exists():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = dict(tests=0, failures=0, errors=0, skipped=0)
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
    counts["passed"] = (
        counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    )
    return counts


def pytest_row(out: Path, name: str, label: str, status, need_passed: bool) -> tuple:
    """One row for a pytest step: green = exit 0 (or 5, nothing selected, only
    where no test needs to pass), no failure or error, and, where
    ``need_passed``, at least one test passed (all skipped: CUDA was not seen)."""
    counts = pytest_counts(out / f"{name}.xml")
    if counts is None:
        return (label, f"no report ({describe(status)})", "green", "FAIL")
    shown = (
        f"{counts['passed']} passed, {counts['failures'] + counts['errors']} failed, "
        f"{counts['skipped']} skipped"
    )
    if status not in ("0", None):
        shown += f" ({describe(status)})"
    green = (
        status == "0"
        and counts["failures"] + counts["errors"] == 0
        and (counts["passed"] > 0 or not need_passed)
    )
    floor = "green, >= 1 passed" if need_passed else "green"
    return (label, shown, floor, "pass" if green else "FAIL")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("status", nargs="*", help="step=exit status")
    args = parser.parse_args(argv)
    statuses = dict(item.split("=", 1) for item in args.status)

    rows = []
    if "bench_gpu" in statuses:
        rows += bench_rows(args.out, statuses["bench_gpu"], args.smoke)
    if "pytest_cuda" in statuses:
        label = "pytest -m cuda"
        rows.append(
            pytest_row(
                args.out, "pytest_cuda", label, statuses["pytest_cuda"], not args.smoke
            )
        )
    if "pytest_suite" in statuses:
        label = 'whole suite (-m "not cuda")'
        rows.append(
            pytest_row(args.out, "pytest_suite", label, statuses["pytest_suite"], True)
        )

    judged = [row for row in rows if row[3] in ("pass", "FAIL")]
    failed = sum(row[3] == "FAIL" for row in judged)
    smoke = " (SMOKE: ratios not judged)" if args.smoke else ""
    print("\n" + "=" * 124)
    print("GPU session summary" + smoke)
    print(f"{'check':{WIDTH}s}  {'measured':>30s}  {'floor':>18s}  result")
    print("-" * 124)
    for check, measured, floor, verdict in rows:
        print(f"{check[:WIDTH]:{WIDTH}s}  {measured:>30s}  {floor:>18s}  {verdict}")
    print("=" * 124)
    print(f"{len(judged) - failed} of {len(judged)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
