#!/usr/bin/env bash
# One device call: install, GPU tests, then the benchmark. $1: sweep | quick | full.
set -o pipefail
export PYTHONUNBUFFERED=1
mkdir -p "${OUT:=/tmp/out}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed; using the benchmark's path shim"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv
if [ "${SKIP_TESTS:-0}" != 1 ]; then
    timeout "${TEST_TIMEOUT:-170}" python3 -m pytest tests/kernels/test_triton.py -q -n 14 -p no:cacheprovider 2>&1 \
        | tee "$OUT/tests.log" | tail -25
fi
case "${1:-quick}" in
    sweep) timeout "${BENCH_TIMEOUT:-240}" python3 benchmarks/sweep.py 2>&1 | tee "$OUT/sweep.log" ;;
    quick) timeout "${BENCH_TIMEOUT:-400}" python3 benchmarks/attention.py --quick 2>&1 | tee "$OUT/bench.log" ;;
    full) timeout "${BENCH_TIMEOUT:-370}" python3 benchmarks/attention.py 2>&1 | tee "$OUT/bench.log"
          cp docs/benchmarks/attention.* "$OUT/" ;;
esac
