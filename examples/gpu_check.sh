#!/usr/bin/env bash
# Everything a GPU session should run, in one call of a few minutes (see docs/benchmarks.md):
#   1. the GPU tests: every kernel against the NumPy reference on the network's real shapes, and
#      the training step as a CUDA graph against the same steps run eagerly
#   2. the profile of one width-16 training step at batch 1 (and 32): GPU and host time per
#      layer, kernel launches per step, the step as a graph
#   3. the 400-step bridge overfit on cuda, as a CUDA graph (the default) and eagerly; the losses
#      at steps 100, 200, 400 beside a CPU run's (CPU_OVERFIT=0 skips the CPU run)
#   4. the kernel report (`minicolor kernels`: registers, occupancy, FMA share of the conv loops)
#   5. the benchmark on the GPU: training steps (width 16 and 64; batch 1, 8, 32), every conv
#      layer shape of the width-64 network at batch 32 (minicolor kernels, the NumPy reference
#      on CuPy, PyTorch), and the 400-step overfit, beside PyTorch (BENCH=0 skips it)
# Usage, from the repository root on a machine with CUDA, CuPy and numba:
#   OUT=results bash examples/gpu_check.sh
# Steps 1-3 take a few minutes (the CPU overfit the longest); the benchmark several more: where
# device time is short, run CPU_OVERFIT=0 BENCH=0 first.
set -uo pipefail
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PHOTO=examples/roebling-bridge.jpg
python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest tests/test_kernels_gpu.py tests/test_graph_gpu.py -rs --durations=5 2>&1 \
    | tee "$OUT/gpu_tests.log"
# the static kernel report (registers, occupancy, FMA share of the conv loops) beside the timings;
# it needs the `kernels` extra's wheels (ptxas, nvdisasm): it says so and goes on where they are missing
python3 -m minicolor.cli kernels --dtype float32 2>&1 | tee "$OUT/kernels.log"
for batch in 1 32; do
    python3 -m minicolor.cli profile --device cuda --width 16 --batch "$batch" \
        --chart "$OUT/profile-w16-b$batch.png" 2>&1 | tee "$OUT/profile-w16-b$batch.log"
done
python3 -m minicolor.cli overfit "$PHOTO" --device cuda --quiet --out "$OUT/overfit-cuda-graph" 2>&1 \
    | tee "$OUT/overfit-cuda-graph.log"
python3 -m minicolor.cli overfit "$PHOTO" --device cuda --quiet --no-graph --out "$OUT/overfit-cuda-eager" \
    2>&1 | tee "$OUT/overfit-cuda-eager.log"
runs="$OUT/overfit-cuda-graph $OUT/overfit-cuda-eager"
if [ "${CPU_OVERFIT:-1}" != "0" ]; then
    python3 -m minicolor.cli overfit "$PHOTO" --device cpu --quiet --out "$OUT/overfit-cpu" 2>&1 \
        | tee "$OUT/overfit-cpu.log"
    runs="$runs $OUT/overfit-cpu"
fi
python3 - $runs <<'PY' 2>&1 | tee "$OUT/overfit-losses.txt"
import json, sys
print(f"{'step':>5} " + " ".join(f"{run.rsplit('/', 1)[-1]:>20}" for run in sys.argv[1:]))
logs = [{r["step"]: r["loss"] for r in map(json.loads, open(f"{run}/metrics.jsonl")) if "loss" in r}
        for run in sys.argv[1:]]
for step in (100, 200, 400):
    print(f"{step:>5} " + " ".join(f"{log.get(step, float('nan')):>20.6f}" for log in logs))
PY
if [ "${BENCH:-1}" != "0" ]; then
    python3 -m minicolor.cli bench --device cuda --layer-width 64 --json "$OUT/bench-gpu.json" 2>&1 \
        | tee "$OUT/bench-gpu.log"
fi
