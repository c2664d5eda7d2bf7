#!/usr/bin/env bash
# usage: train_cuda.sh CASE BRAID REPO_DIR OUT_DIR
# `braid train` with train.device=cuda on the tiny shakespeare_char job (tests/cli/tiny_job.sh:
# dropout 0.1, shuffling), one CASE per CTest test (label gpu). Exits 77 ("skipped") where no GPU
# is visible.
#   cpu_vs_cuda      20 steps on cuda give the cpu's losses (train and val) within 1e-4 relative
#   resume           a cuda run resumed from its step-10 checkpoint continues the losses exactly
#   cpu_to_cuda      a cpu checkpoint resumed on cuda continues the cpu's losses within 1e-4
#   bf16             train.dtype=bfloat16 on cuda: the cpu's float32 losses within 2e-2
#   dp2              2 ranks on 2 GPUs (NCCL buckets, ZeRO-1) give dp=1 grad_accum=2's losses within
#                    1e-4 (skipped with fewer than 2 GPUs)
#   tp2, pp2         parallel.tp=2 / parallel.pp=2 on 2 GPUs: the cpu's tp=2 / pp=2 losses within
#                    1e-4 (skipped with fewer than 2 GPUs)
#   gemm_attention   BRAID_CUDA_ATTENTION=gemm (attention as cuBLASLt GEMMs): the cpu's losses
#                    within 1e-4 in float32, within 2e-2 with train.dtype=bfloat16
#   cudnn_attention  BRAID_CUDA_ATTENTION=cudnn (cuDNN's fused attention): the cpu's losses within
#                    2e-2 with train.dtype=bfloat16, every shape taken by cuDNN (no fallback
#                    note); float32 falls back to the rows kernels: within 1e-4
#   attention_env    BRAID_CUDA_ATTENTION=bogus: one error naming it, non-zero exit, no step run
#   epilogues        BRAID_CUDA_EPILOGUES=1 (cuBLASLt's bias and GELU epilogues), with biases: the
#                    cpu's losses within 1e-4 in float32, within 2e-2 with train.dtype=bfloat16
#   epilogues_env    BRAID_CUDA_EPILOGUES=2: one error naming it, non-zero exit, no step run
set -euo pipefail
source "$(dirname "$0")/../cli/tiny_job.sh" "$@"

if ! "$braid" train "${job[@]}" --train.device=cuda --train.max_steps=1 \
  --log.dir="$out/probe" --checkpoint.dir="$out/probe/ck" > "$out/probe.log" 2>&1; then
  if grep -qE "no CUDA device visible|built without the CUDA backend" "$out/probe.log"; then
    echo "skipped: $(grep -oE '(no CUDA device visible|braid was built without).*' "$out/probe.log")"
    exit 77
  fi
  echo "note: the one-step probe on cuda failed (the cases below will too):"
  tail -5 "$out/probe.log"
fi

# refused VAR=VALUE MESSAGE: with that environment the job stops with MESSAGE, a non-zero exit and
# no step run
refused() {
  set +e
  msg=$(env "$1" timeout 120 "$braid" train "${job[@]}" --train.device=cuda \
    --log.dir="$out/bogus" --checkpoint.dir="$out/bogus/ck" 2>&1)
  status=$?
  set -e
  test "$status" -ne 0 || fail "exit status 0 with $1: $msg"
  grep -qF "$2" <<<"$msg" || fail "message: $msg"
  test ! -s "$out/bogus/metrics.jsonl" || fail "steps ran: $(cat "$out/bogus/metrics.jsonl")"
}

case $case_name in
cpu_vs_cuda)
  run cpu 1 --train.max_steps=20
  run cuda 1 --train.max_steps=20 --train.device=cuda
  grep -q "^device: cuda:0" "$out/cuda.log" || fail "no device banner: $(head -40 "$out/cuda.log")"
  same_losses cpu cuda 1 1e-4
  ;;
resume)
  run whole 1 --train.max_steps=20 --train.device=cuda --checkpoint.every=10
  run part 1 --train.max_steps=10 --train.device=cuda --checkpoint.every=10
  run part 1 --train.max_steps=20 --train.device=cuda --checkpoint.every=10
  same_losses whole part 11
  ;;
cpu_to_cuda)
  run cpu 1 --train.max_steps=20 --checkpoint.every=10
  run moved 1 --train.max_steps=10 --checkpoint.every=10
  run moved 1 --train.max_steps=20 --checkpoint.every=10 --train.device=cuda
  same_losses cpu moved 11 1e-4
  ;;
bf16)
  run cpu 1 --train.max_steps=20
  run bf16 1 --train.max_steps=20 --train.device=cuda --train.dtype=bfloat16
  grep -q "bfloat16 matmuls" "$out/bf16.log" || fail "no bf16 banner: $(head -40 "$out/bf16.log")"
  same_losses cpu bf16 1 2e-2
  ;;
dp2)
  command -v mpirun > /dev/null || { echo "skipped: no mpirun on this machine"; exit 77; }
  gpus=$(nvidia-smi -L 2> /dev/null | grep -c '^GPU' || true)
  if [ "${gpus:-0}" -lt 2 ]; then
    echo "skipped: dp2 needs 2 GPUs, this machine has ${gpus:-0}"
    exit 77
  fi
  run single 1 --train.max_steps=10 --train.grad_accum=2 --train.device=cuda
  run dp2 2 --train.max_steps=10 --parallel.dp=2 --train.device=cuda
  run zero1 2 --train.max_steps=10 --parallel.dp=2 --parallel.zero=1 --train.device=cuda
  same_losses single dp2 1 1e-4
  same_losses single zero1 1 1e-4
  ;;
tp2 | pp2)
  command -v mpirun > /dev/null || { echo "skipped: no mpirun on this machine"; exit 77; }
  gpus=$(nvidia-smi -L 2> /dev/null | grep -c '^GPU' || true)
  if [ "${gpus:-0}" -lt 2 ]; then
    echo "skipped: $case_name needs 2 GPUs, this machine has ${gpus:-0}"
    exit 77
  fi
  if [ "$case_name" = tp2 ]; then
    layout=(--parallel.tp=2 --model.vocab_size=66)
  else
    layout=(--parallel.pp=2 --train.grad_accum=4 --model.n_layer=4)
  fi
  run cpu 2 --train.max_steps=10 "${layout[@]}"
  run cuda 2 --train.max_steps=10 "${layout[@]}" --train.device=cuda
  same_losses cpu cuda 1 1e-4
  ;;
gemm_attention)
  run cpu 1 --train.max_steps=20
  BRAID_CUDA_ATTENTION=gemm run gemm 1 --train.max_steps=20 --train.device=cuda
  BRAID_CUDA_ATTENTION=gemm run gemm_bf16 1 --train.max_steps=20 --train.device=cuda \
    --train.dtype=bfloat16
  same_losses cpu gemm 1 1e-4
  same_losses cpu gemm_bf16 1 2e-2
  ;;
cudnn_attention)
  run cpu 1 --train.max_steps=20
  BRAID_CUDA_ATTENTION=cudnn run cudnn_bf16 1 --train.max_steps=20 --train.device=cuda \
    --train.dtype=bfloat16
  BRAID_CUDA_ATTENTION=cudnn run cudnn_f32 1 --train.max_steps=20 --train.device=cuda
  if grep -q "attention (cudnn).*runs on braid's rows kernels" "$out/cudnn_bf16.log"; then
    fail "cuDNN did not take the job's attention: $(grep "attention (cudnn)" "$out/cudnn_bf16.log")"
  fi
  same_losses cpu cudnn_bf16 1 2e-2
  same_losses cpu cudnn_f32 1 1e-4
  ;;
attention_env)
  refused BRAID_CUDA_ATTENTION=bogus "BRAID_CUDA_ATTENTION=bogus: expected rows, tiled, gemm or cudnn"
  ;;
epilogues)
  run cpu 1 --train.max_steps=20 --model.bias=true
  BRAID_CUDA_EPILOGUES=1 run fused 1 --train.max_steps=20 --model.bias=true --train.device=cuda
  BRAID_CUDA_EPILOGUES=1 run fused_bf16 1 --train.max_steps=20 --model.bias=true \
    --train.device=cuda --train.dtype=bfloat16
  same_losses cpu fused 1 1e-4
  same_losses cpu fused_bf16 1 2e-2
  ;;
epilogues_env)
  refused BRAID_CUDA_EPILOGUES=2 "BRAID_CUDA_EPILOGUES=2: expected 0 or 1"
  ;;
*)
  fail "unknown case $case_name"
  ;;
esac
echo "ok: $case_name"
