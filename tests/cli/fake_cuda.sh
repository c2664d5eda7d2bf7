#!/usr/bin/env bash
# usage: fake_cuda.sh CASE BRAID REPO_DIR OUT_DIR
# braid train --train.device=cuda with BRAID_FAKE_CUDA=1 (core/cuda/cuda.h: cuda:0 is the CPU's
# kernels on host memory), on the tiny shakespeare_char job. It runs on machines without a GPU
# and checks what a GPU run does above the kernels: placing the model and batches on the device,
# device step arenas, the optimizer on device parameters, checkpoints written from and read into
# device tensors. The kernels are the CPU's, so the losses must be the CPU run's exactly.
#   train         12 steps on cuda == 12 steps on cpu (train and val losses, every row);
#                 BRAID_FAKE_CUDA=yes (not a device count) stops with a message naming it
#   resume_cross  a cpu checkpoint resumed on cuda, and a cuda one resumed on cpu, continue the
#                 straight cpu run exactly
#   dp            parallel.dp=2 on the fake device (its tensors go over MPI: comm/nccl.c), with and
#                 without ZeRO-1: the cpu's dp=2 losses exactly
#   tp            tp=2 on two fake devices (GPT, with and without sequence parallelism, and LLaMA
#                 with GQA): the cpu's tp=2 losses exactly
#   pp            pp=2 (1F1B, and interleaved with 2 virtual stages): the cpu's losses exactly
#   grid          tp=2 x pp=2 on four: a cpu checkpoint resumed on cuda, and a cuda one on cpu,
#                 continue the straight cpu run exactly
set -euo pipefail
source "$(dirname "$0")/tiny_job.sh" "$@"
export BRAID_FAKE_CUDA=1

# exact A B: the runs A and B logged the same steps, losses and learning rates, row by row
exact() {
  cmp <(cut -d, -f1-3 "$out/$1/metrics.jsonl") <(cut -d, -f1-3 "$out/$2/metrics.jsonl") ||
    fail "$2: losses differ from $1's: $(diff "$out/$1/metrics.jsonl" "$out/$2/metrics.jsonl" | head -4)"
}

case $case_name in
train)
  run cpu 1 --train.max_steps=12
  run cuda 1 --train.max_steps=12 --train.device=cuda
  grep -q "^device: cuda:0, fake CUDA device" "$out/cuda.log" || fail "no device banner"
  set +e
  msg=$(BRAID_FAKE_CUDA=yes "$braid" train "${job[@]}" --train.max_steps=1 --train.device=cuda \
    --log.dir="$out/bad" --checkpoint.dir="$out/bad/ck" 2>&1)
  status=$?
  set -e
  test "$status" -ne 0 || fail "BRAID_FAKE_CUDA=yes: exit status 0"
  grep -q "BRAID_FAKE_CUDA=yes: expected 0 (off) or a number of fake devices, 1 to 64" <<<"$msg" ||
    fail "BRAID_FAKE_CUDA=yes: $(tail -2 <<<"$msg")"
  exact cpu cuda
  ;;
resume_cross)
  run straight 1 --train.max_steps=12 --checkpoint.every=6
  run to_cuda 1 --train.max_steps=6 --checkpoint.every=6
  run to_cuda 1 --train.max_steps=12 --checkpoint.every=6 --train.device=cuda
  run to_cpu 1 --train.max_steps=6 --checkpoint.every=6 --train.device=cuda
  run to_cpu 1 --train.max_steps=12 --checkpoint.every=6
  exact straight to_cuda
  exact straight to_cpu
  ;;
dp)
  command -v mpirun > /dev/null || { echo "skipped: no mpirun on this machine"; exit 77; }
  run cpu 2 --train.max_steps=10 --parallel.dp=2
  export BRAID_FAKE_CUDA=2 # cuda:0 and cuda:1, one per rank
  run cuda 2 --train.max_steps=10 --parallel.dp=2 --train.device=cuda
  run zero1 2 --train.max_steps=10 --parallel.dp=2 --parallel.zero=1 --train.device=cuda
  exact cpu cuda
  exact cpu zero1
  ;;
tp)
  command -v mpirun > /dev/null || { echo "skipped: no mpirun on this machine"; exit 77; }
  export BRAID_FAKE_CUDA=2
  tp=(--parallel.tp=2 --model.vocab_size=66 --train.max_steps=10)
  run cpu 2 "${tp[@]}"
  run cuda 2 "${tp[@]}" --train.device=cuda
  run sp_cpu 2 "${tp[@]}" --parallel.sequence_parallel=true
  run sp_cuda 2 "${tp[@]}" --parallel.sequence_parallel=true --train.device=cuda
  llama=(--model.arch=llama --model.n_head=4 --model.n_kv_head=2 --model.dropout=0.0)
  run llama_cpu 2 "${tp[@]}" "${llama[@]}"
  run llama_cuda 2 "${tp[@]}" "${llama[@]}" --train.device=cuda
  for name in "" sp_ llama_; do
    exact "${name}cpu" "${name}cuda"
  done
  ;;
pp)
  command -v mpirun > /dev/null || { echo "skipped: no mpirun on this machine"; exit 77; }
  export BRAID_FAKE_CUDA=2
  pp=(--parallel.pp=2 --train.grad_accum=4 --model.n_layer=4 --train.max_steps=10)
  run cpu 2 "${pp[@]}"
  run cuda 2 "${pp[@]}" --train.device=cuda
  run v_cpu 2 "${pp[@]}" --parallel.virtual_stages=2
  run v_cuda 2 "${pp[@]}" --parallel.virtual_stages=2 --train.device=cuda
  for name in "" v_; do
    exact "${name}cpu" "${name}cuda"
  done
  ;;
grid)
  command -v mpirun > /dev/null || { echo "skipped: no mpirun on this machine"; exit 77; }
  export BRAID_FAKE_CUDA=4
  grid=(--parallel.tp=2 --parallel.pp=2 --train.grad_accum=2 --model.vocab_size=66
    --checkpoint.every=6)
  run straight 4 "${grid[@]}" --train.max_steps=12
  run to_cuda 4 "${grid[@]}" --train.max_steps=6
  run to_cuda 4 "${grid[@]}" --train.max_steps=12 --train.device=cuda
  run to_cpu 4 "${grid[@]}" --train.max_steps=6 --train.device=cuda
  run to_cpu 4 "${grid[@]}" --train.max_steps=12
  exact straight to_cuda
  exact straight to_cpu
  ;;
*)
  fail "unknown case $case_name"
  ;;
esac
echo "ok: $case_name"
