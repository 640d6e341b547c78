#!/usr/bin/env bash
# Everything a GPU session should run, in one call of a few minutes (see docs/benchmarks.md):
#   1. the GPU tests: every kernel against the NumPy reference on the network's real shapes
#   2. the benchmark on the GPU: training steps (width 16 and 64; batch 1, 8, 32), every conv
#      layer shape of the width-64 network at batch 32 (minicolor kernels, the NumPy reference
#      on CuPy, PyTorch), and the 400-step overfit, beside PyTorch
# Usage, from the repository root on a machine with CUDA, CuPy and numba:
#   OUT=results bash examples/gpu_check.sh
set -uo pipefail
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest tests/test_kernels_gpu.py -rs 2>&1 | tee "$OUT/gpu_tests.log"
python3 -m minicolor.cli bench --device cuda --layer-width 64 --json "$OUT/bench-gpu.json" 2>&1 \
    | tee "$OUT/bench-gpu.log"
