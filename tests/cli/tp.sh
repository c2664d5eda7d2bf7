#!/usr/bin/env bash
# usage: tp.sh CASE BRAID REPO_DIR OUT_DIR
# Tensor-parallel `braid train` under mpirun (docs/tp.md), one CASE per CTest test, on the tiny
# shakespeare_char job of tiny_job.sh (dropout 0.1, shuffling on) with model.vocab_size=66 (65
# characters, padded to divide by tp). Losses (train and val) are compared with a relative
# tolerance of 1e-5 over 16 steps:
#   tp2              tp=2 == tp=1 (GPT, tied head)
#   sp               tp=2 with parallel.sequence_parallel == tp=1
#   llama_gqa        LLaMA with n_head 4, n_kv_head 2: tp=2 with sequence parallelism == tp=1
#   dp2_tp2          dp=2 × tp=2 on 4 ranks with ZeRO-1 == one rank with grad_accum=2
#   resume_tp2_tp1   a tp=2 checkpoint resumed at tp=1 continues the losses of a tp=1 run
#   resume_tp1_tp2   a tp=1 checkpoint resumed at dp=2 × tp=2 (ZeRO-1) continues them
#   bad_layout       model.n_head=6 with parallel.tp=4: one error naming both, before any work
set -euo pipefail
source "$(dirname "$0")/tiny_job.sh" "$@"
job+=(--model.vocab_size=66)

llama=(--model.arch=llama --model.n_head=4 --model.n_kv_head=2 --model.tie_embeddings=false)

case $case_name in
tp2)
  run single 1 --train.max_steps=16
  run tp2 2 --train.max_steps=16 --parallel.tp=2
  grep -q "tensor parallel: tp=2, [0-9]* of the parameters on each rank$" "$out/tp2.log" ||
    fail "no tp banner"
  test "$(grep -o 'model: gpt, [0-9]* parameters' "$out/single.log")" = \
    "$(grep -o 'model: gpt, [0-9]* parameters' "$out/tp2.log")" || fail "parameter counts differ"
  same_losses single tp2
  ;;
sp)
  run single 1 --train.max_steps=16
  run sp 2 --train.max_steps=16 --parallel.tp=2 --parallel.sequence_parallel=true
  grep -q "tensor parallel: tp=2, .*, sequence parallel" "$out/sp.log" || fail "no SP banner"
  same_losses single sp
  ;;
llama_gqa)
  run single 1 --train.max_steps=16 "${llama[@]}"
  run tp2 2 --train.max_steps=16 "${llama[@]}" --parallel.tp=2 --parallel.sequence_parallel=true
  same_losses single tp2
  ;;
dp2_tp2)
  run single 1 --train.max_steps=16 --train.grad_accum=2
  run grid 4 --train.max_steps=16 --parallel.dp=2 --parallel.tp=2 --parallel.zero=1
  grep -q "data parallel: dp=2" "$out/grid.log" || fail "no dp banner"
  same_losses single grid
  ;;
resume_tp2_tp1)
  run straight 1 --train.max_steps=20
  run resumed 2 --train.max_steps=10 --parallel.tp=2
  run resumed 1 --train.max_steps=20
  grep -q "^resume: parallel.tp: 2 -> 1" "$out/resumed.log" || fail "the layout change was not reported"
  grep -q "^resumed from .*step_00000010.h5: step 10" "$out/resumed.log" || fail "did not resume"
  same_losses straight resumed 11
  ;;
resume_tp1_tp2)
  run straight 1 --train.max_steps=20 --train.grad_accum=2
  run resumed 1 --train.max_steps=10 --train.grad_accum=2
  run resumed 4 --train.max_steps=20 --parallel.dp=2 --parallel.tp=2 --parallel.zero=1
  grep -q "^resumed from .*step_00000010.h5: step 10" "$out/resumed.log" || fail "did not resume"
  same_losses straight resumed 11
  ;;
bad_layout)
  if mpirun -np 4 --oversubscribe "$braid" train "${job[@]}" --model.n_head=6 --model.n_embd=48 \
      --parallel.tp=4 --log.dir="$out/bad" > "$out/bad.log" 2> "$out/bad.err"; then
    fail "n_head=6 ran with tp=4"
  fi
  test "$(grep -c 'braid: error' "$out/bad.err")" -eq 1 ||
    fail "expected one error line: $(cat "$out/bad.err")"
  grep -q "parallel.tp=4 does not divide model.n_head=6" "$out/bad.err" ||
    fail "unexpected message: $(cat "$out/bad.err")"
  ! grep -q '^step ' "$out/bad.log" || fail "it trained"
  echo "ok: $(grep 'braid: error' "$out/bad.err")"
  ;;
*)
  fail "unknown case $case_name"
  ;;
esac
