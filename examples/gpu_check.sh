#!/usr/bin/env bash
# The GPU check in one call (examples/gpu_check.py says what it runs; docs/kernels.md, "The GPU
# check", how to run it with the device tool and how to read its summary.md):
#   OUT=DIR bash examples/gpu_check.sh             on a machine with an NVIDIA GPU: under 8 minutes
#   OUT=DIR bash examples/gpu_check.sh --dry-run   anywhere: every stage on the CPU (CI runs this)
# OUT gets at most three files: summary.md, results.json, gpu-check-logs.tar.gz. PYTHON picks the
# interpreter (default python3: on the GPU machine, the one with CuPy and PyTorch).
set -uo pipefail
exec "${PYTHON:-python3}" "$(dirname "$0")/gpu_check.py" --out "${OUT:-gpu-results}" "$@"
