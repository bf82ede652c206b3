#!/usr/bin/env bash
# On a lent GPU machine: build the native extension for the GPU present, run the GPU stages (kernel tests, every
# Triton config, CUDA graphs, determinism and int64 indexing, compute-sanitizer, TensorRT / ONNX Runtime CUDA when
# installed, quick benchmarks) and write results into $OUT (./gpu-results elsewhere) after every stage.
# The logic, the stage list with timeouts and the verdict rules live in scripts/gpu_suite.py (see its docstring).
#
#   bash scripts/gpu_suite.sh                                # every stage, within the default budget (510 s)
#   STAGES="build test" bash scripts/gpu_suite.sh            # selection by environment (aliases: test, all)
#   bash scripts/gpu_suite.sh --stages env,build,kernels     # or by flag; --dry-run checks without running GPU work
#
# Exit status 0 only when the verdict is PASS; the last line printed is the one-line summary.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/gpu_suite.py "$@"
