#!/usr/bin/env bash
# bench/gpu.sh: everything the CUDA backend needs a GPU for, in one call on a lent machine.
# Builds nothing there: carry build/ (made here with nvcc: sm_80, sm_90 + PTX). Runs the GPU test
# suite (ctest -L gpu), then GPT-2 124M training (bench_gpu, float32) and PyTorch's same model
# (bench/gpu_torch.py: eager and torch.compile, float32 and bf16 autocast) when a CUDA PyTorch is
# importable there.   usage: bench/gpu.sh [STEPS] [BATCH]
set -uo pipefail
cd "$(dirname "$0")/.."
steps=${1:-30} batch=${2:-8}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
echo "== GPU tests (ctest -L gpu) =="
(cd build && ctest -L gpu --output-on-failure --timeout 300) 2>&1 | tail -40
for dtype in float32 bfloat16; do
  echo "== braid: bench_gpu $steps $batch $dtype =="
  build/bench_gpu "$steps" "$batch" "$dtype"
done
py=${PYTHON:-python3}
if "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "== pytorch: bench/gpu_torch.py =="
  for args in "--dtype float32" "--dtype float32 --compile" "--dtype bfloat16 --compile"; do
    (cd bench && "$py" gpu_torch.py --steps "$steps" --batch "$batch" $args) 2>&1 | tail -1
  done
else
  echo "pytorch: skipped: no CUDA PyTorch importable with $py"
fi
