#!/usr/bin/env bash
# usage: dp.sh CASE BRAID REPO_DIR OUT_DIR
# Data-parallel `braid train` under mpirun (docs/parallel.md), one CASE per CTest test, on a tiny
# shakespeare_char model with dropout 0.1 and shuffling on. Losses (train and val) are compared
# with a relative tolerance of 1e-5:
#   dp2              dp=2 (several gradient buckets) == dp=1 with grad_accum=2
#   zero1            dp=2 with ZeRO-1 == dp=1 with grad_accum=2
#   dp4              dp=4 with ZeRO-1 on 4 ranks == dp=1 with grad_accum=4
#   resume_dp2_dp1   a dp=2 ZeRO-1 checkpoint resumed at dp=1 (grad_accum=2) continues the losses
#   resume_dp1_dp2   a dp=1 checkpoint resumed at dp=2 with ZeRO-1 continues the losses
#   bad_layout       parallel.dp=3 on 2 ranks: one error line naming the numbers, before any work
#   error_once       data missing on every rank: the error is said once, not once per rank
#   rank_killed      a rank killed with SIGKILL mid-run ends the job non-zero within 30 s
set -euo pipefail
source "$(dirname "$0")/tiny_job.sh" "$@"

case $case_name in
dp2)
  run single 1 --train.max_steps=10 --train.grad_accum=2
  run dp2 2 --train.max_steps=10 --parallel.dp=2
  grep -q "data parallel: dp=2, [0-9]* gradient buckets" "$out/dp2.log" || fail "no dp banner"
  same_losses single dp2
  ;;
zero1)
  run single 1 --train.max_steps=10 --train.grad_accum=2
  run zero1 2 --train.max_steps=10 --parallel.dp=2 --parallel.zero=1
  grep -q "ZeRO-1" "$out/zero1.log" || fail "no ZeRO-1 banner"
  same_losses single zero1
  ;;
dp4)
  run single 1 --train.max_steps=6 --train.grad_accum=4
  run dp4 4 --train.max_steps=6 --parallel.dp=4 --parallel.zero=1
  same_losses single dp4
  ;;
resume_dp2_dp1)
  run straight 1 --train.max_steps=20 --train.grad_accum=2
  run resumed 2 --train.max_steps=10 --parallel.dp=2 --parallel.zero=1
  run resumed 1 --train.max_steps=20 --train.grad_accum=2
  grep -q "^resume: parallel.dp: 2 -> 1" "$out/resumed.log" || fail "the layout change was not reported"
  same_losses straight resumed 11
  ;;
resume_dp1_dp2)
  run straight 1 --train.max_steps=20 --train.grad_accum=2
  run resumed 1 --train.max_steps=10 --train.grad_accum=2
  run resumed 2 --train.max_steps=20 --parallel.dp=2 --parallel.zero=1
  same_losses straight resumed 11
  ;;
bad_layout)
  if mpirun -np 2 --oversubscribe "$braid" train "${job[@]}" --parallel.dp=3 \
      --log.dir="$out/bad" > "$out/bad.log" 2> "$out/bad.err"; then
    fail "a layout of 3 ranks ran on 2"
  fi
  test "$(grep -c 'braid: error' "$out/bad.err")" -eq 1 ||
    fail "expected one error line: $(cat "$out/bad.err")"
  grep -q "parallel.dp=3 × tp=1 × pp=1 = 3 but 2 ranks are running" "$out/bad.err" ||
    fail "unexpected message: $(cat "$out/bad.err")"
  ! grep -q '^step ' "$out/bad.log" || fail "it trained"
  echo "ok: $(grep 'braid: error' "$out/bad.err")"
  ;;
error_once)
  if mpirun -np 2 --oversubscribe "$braid" train "${job[@]}" --parallel.dp=2 \
      --data.train="$out/none/train_*.bin" --model.vocab_size=65 --log.dir="$out/e" \
      > "$out/e.log" 2> "$out/e.err"; then
    fail "ran without data"
  fi
  test "$(grep -c 'braid: error' "$out/e.err")" -eq 1 ||
    fail "expected the error once: $(cat "$out/e.err")"
  grep -q "^braid: error: data.train: no files match" "$out/e.err" ||
    fail "unexpected message: $(cat "$out/e.err")"
  echo "ok: $(grep 'braid: error' "$out/e.err")"
  ;;
rank_killed)
  kill_one_rank 2 --parallel.dp=2
  ;;
*)
  fail "unknown case $case_name"
  ;;
esac
