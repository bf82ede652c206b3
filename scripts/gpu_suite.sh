#!/usr/bin/env bash
# On a lent GPU machine, in one call: build the native extension from source, run the GPU tests, run every benchmark
# with --device cuda, and collect logs + results in $OUT (the device tool's output folder; ./gpu-results elsewhere).
#
#   bash scripts/gpu_suite.sh            # everything
#   STAGES="build test" bash scripts/gpu_suite.sh
#
# The GPU machines have torch 2.11 (cu130), triton 3.6, nvcc, cmake, ninja and most of our dependencies, but no network:
# the package is installed with --no-deps. Copy the numbers from results/*.json into benchmarks/results/ and the notes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
STAGES=${STAGES:-"build test bench"}
mkdir -p "$OUT/results"
LOG="$OUT/gpu_suite.log"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=0
run() { echo "+ $*" | tee -a "$LOG"; "$@" 2>&1 | tee -a "$LOG"; local rc=${PIPESTATUS[0]}; echo "[rc=$rc] $*" | tee -a "$LOG"; [ "$rc" -eq 0 ] || status=1; }

run nvidia-smi
run "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_capability())"

if [[ " $STAGES " == *" build "* ]]; then
  # Hopper only on the lent machines (faster build); the default build targets sm_80 and sm_90.
  export SSCHSR_CUDA_ARCHS=${SSCHSR_CUDA_ARCHS:-90} MAX_JOBS=${MAX_JOBS:-16}
  run "$PY" -m pip install --no-build-isolation --no-deps -e .
  run "$PY" -c "from sschsr_deploy.ops._backend import native_status; print(native_status())"
fi

if [[ " $STAGES " == *" test "* ]]; then
  run "$PY" -m pytest -m gpu -q -rs --junitxml="$OUT/results/pytest_gpu.xml"
fi

if [[ " $STAGES " == *" bench "* ]]; then
  for bench in benchmarks/bench_*.py; do
    run timeout 900 "$PY" "$bench" --device cuda
  done
  cp benchmarks/results/*cuda*.json benchmarks/results/*cuda*.png "$OUT/results/" 2>/dev/null
fi

tar -czf "$OUT/results.tar.gz" -C "$OUT" results && rm -rf "$OUT/results"
echo "gpu_suite: $( [ $status -eq 0 ] && echo OK || echo 'SOME STEPS FAILED (see log)')" | tee -a "$LOG"
exit $status
