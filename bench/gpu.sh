#!/usr/bin/env bash
# bench/gpu.sh [BIN_DIR] [STEPS] [BATCH]: everything the CUDA backend needs a GPU for, in one call
# on a lent machine. Builds nothing there. BIN_DIR holds braid, bench_gpu and the GPU test
# binaries built here by nvcc (sm_80, sm_90 + PTX): build/ on a machine with this build, or
# gpu-bundle/ unpacked from bench/gpu_bundle.sh's tarball, whose lib/ it puts on the library path
# with the NCCL, cuBLASLt and cuDNN of the machine's CUDA or PyTorch. Runs the GPU tests (each suite's
# cases in one process; braid train's through tests/gpu/train_cuda.sh), then GPT-2 124M training
# (bench_gpu, float32 and bf16 matmuls; the attention kernels; cuBLASLt's epilogues), then
# PyTorch's same model (bench/gpu_torch.py: eager and torch.compile, float32 and bf16 autocast)
# when a CUDA PyTorch is importable there.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=${1:-build} steps=${2:-30} batch=${3:-8}
bin=$(cd "$bin" && pwd)
py=${PYTHON:-python3}
libs="$bin/lib:/usr/local/cuda/lib64"
for mod in nvidia.nccl nvidia.cublas nvidia.cuda_runtime nvidia.cudnn; do # the wheels PyTorch brings
  d=$("$py" -c "import $mod, os; print(os.path.join(list($mod.__path__)[0], 'lib'))" 2> /dev/null) &&
    libs="$libs:$d"
done
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
[ -d "$bin/bin" ] && bin="$bin/bin" # an unpacked bundle
echo "== GPU tests =="
for suite in test_cuda_math test_cuda_sdpa test_gpu_ops test_gpu_comm; do
  echo "-- $suite"
  "$bin/$suite" 2>&1 | tail -15
done
out=$(mktemp -d)
for case in cpu_vs_cuda resume cpu_to_cuda bf16 dp2 tp2 pp2 gemm_attention cudnn_attention \
  attention_env epilogues epilogues_env; do
  printf -- '-- train_cuda.sh %s: ' "$case"
  bash tests/gpu/train_cuda.sh "$case" "$bin/braid" "$PWD" "$out" > "$out/$case.txt" 2>&1
  status=$?
  case $status in 0) echo passed ;; 77) echo "skipped ($(tail -1 "$out/$case.txt"))" ;;
    *) echo "FAILED (exit $status)"; tail -8 "$out/$case.txt" ;; esac
done
for dtype in float32 bfloat16; do
  echo "== braid: bench_gpu $steps $batch $dtype =="
  "$bin/bench_gpu" "$steps" "$batch" "$dtype"
done
for kernel in tiled gemm cudnn; do
  echo "== braid: BRAID_CUDA_ATTENTION=$kernel bench_gpu $steps $batch bfloat16 =="
  BRAID_CUDA_ATTENTION=$kernel "$bin/bench_gpu" "$steps" "$batch" bfloat16
done
for kernel in rows gemm cudnn; do # cuBLASLt's GELU epilogue in the MLPs
  echo "== braid: BRAID_CUDA_EPILOGUES=1 BRAID_CUDA_ATTENTION=$kernel bench_gpu $steps $batch bfloat16 =="
  BRAID_CUDA_EPILOGUES=1 BRAID_CUDA_ATTENTION=$kernel "$bin/bench_gpu" "$steps" "$batch" bfloat16
done
if "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "== pytorch: bench/gpu_torch.py =="
  for args in "--dtype float32" "--dtype float32 --compile" "--dtype bfloat16 --compile"; do
    (cd bench && "$py" gpu_torch.py --steps "$steps" --batch "$batch" $args) 2>&1 | tail -1
  done
else
  echo "pytorch: skipped: no CUDA PyTorch importable with $py"
fi
