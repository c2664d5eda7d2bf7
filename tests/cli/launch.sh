#!/usr/bin/env bash
# usage: launch.sh CASE BRAID REPO_DIR OUT_DIR
# `braid launch` (docs/launch.md), one CASE per CTest test, on the tiny shakespeare_char job of
# dp.sh (dropout 0.1, shuffling on). Losses are compared with a relative tolerance of 1e-5:
#   dp2           launch -n 2 of a dp=2 job, with launch's own environment (no OMP_NUM_THREADS,
#                 no OMPI_ALLOW_RUN_AS_ROOT*): prints the rank map and the mpirun command, and
#                 trains the losses of braid train at dp=1 with grad_accum=2
#   default_n     without -n, launch starts parallel.dp × tp × pp ranks
#   bad_layout    -n 2 with parallel.dp=3: exit 2, one error line, mpirun never started
#   restart       a rank killed with SIGKILL mid-run + --max-restarts 1: the job is restarted, resumes
#                 from the latest checkpoint and ends with status 0 and the uninterrupted run's
#                 final loss
#   restart_rules with a stand-in mpirun: a failing job is restarted K times with
#                 --checkpoint.resume=auto and its status is kept; status 2 is never restarted
#   sigint        Ctrl-C (SIGINT) to braid launch: the ranks save a checkpoint after the current
#                 step; launch exits 130 and no braid process is left
#   sigterm       the same with SIGTERM: exit 143
#   sigint_twice  a second Ctrl-C during the step the first one ends stops the ranks at once:
#                 exit 130, no checkpoint of that step, no braid process left (one rank is held
#                 with SIGSTOP meanwhile, so that the step cannot end between the two)
#   no_mpirun     mpirun not on PATH: one error line, exit 1
set -euo pipefail
source "$(dirname "$0")/tiny_job.sh" "$@"
# a wider model whose 60 steps take seconds, so that a rank can be killed mid-run
slow=(--model.n_embd=128 --model.n_head=4 --model.block_size=64 --train.seq_len=64
  --train.batch_size=8 --train.max_steps=60 --checkpoint.every=5)

# launch NAME [launch options and overrides...]: braid launch of the job, metrics and checkpoints
# in NAME, output in NAME.log; sets $status
launch() {
  local name=$1
  shift
  status=0
  timeout 300 "$braid" launch "${job[@]}" --log.dir="$out/$name" --checkpoint.dir="$out/$name/ck" \
    "$@" > "$out/$name.log" 2>&1 || status=$?
}

# train NAME [overrides...]: braid train of the job on one rank (2 threads)
train() {
  local name=$1
  shift
  OMP_NUM_THREADS=2 timeout 300 "$braid" train "${job[@]}" --log.dir="$out/$name" \
    --checkpoint.dir="$out/$name/ck" "$@" > "$out/$name.log" 2>&1 ||
    fail "$name failed: $(tail -5 "$out/$name.log")"
}

# final_loss NAME: the loss of the last row of NAME/metrics.jsonl
final_loss() {
  tail -1 "$out/$1/metrics.jsonl" | sed -E 's/.*"loss": ([^,]*),.*/\1/'
}

# ranks_of NAME: the pids of the braid train ranks writing to NAME (not mpirun, not launch)
ranks_of() {
  pgrep -f "^$braid train .*--log.dir=$out/$1( |$)" || true
}

# start_long NAME [overrides...]: starts a long dp=2 job with braid launch in the background and
# waits until it trains; sets $launcher
start_long() {
  local name=$1
  shift
  "$braid" launch -n 2 "${job[@]}" --parallel.dp=2 "$@" --train.max_steps=1000000 \
    --train.eval_every=0 --log.every=20 --log.dir="$out/$name" --checkpoint.dir="$out/$name/ck" \
    > "$out/$name.log" 2>&1 &
  launcher=$!
  for _ in $(seq 600); do
    grep -q '^step ' "$out/$name.log" 2> /dev/null && break
    sleep 0.1
  done
  grep -q '^step ' "$out/$name.log" || fail "the job did not start: $(tail -5 "$out/$name.log")"
}

# signal_launch SIGNAL NAME I: sends SIGNAL to braid launch and waits until it said it passed the
# I-th one on
signal_launch() {
  local sig=$1 name=$2 i=$3
  kill -s "$sig" "$launcher"
  for _ in $(seq 500); do
    test "$(grep -c "^braid launch: SIG$sig" "$out/$name.log")" -ge "$i" && return
    sleep 0.02
  done
  fail "braid launch did not pass SIG$sig number $i on: $(tail -5 "$out/$name.log")"
}

# end_of_job SIGNAL NAME EXPECTED_STATUS: waits for braid launch, checks its status and that no
# process of the job is left
end_of_job() {
  local sig=$1 name=$2 want=$3
  status=0
  timeout 60 tail --pid="$launcher" -f /dev/null || fail "braid launch still runs 60 s after $sig"
  wait "$launcher" || status=$?
  test "$status" -eq "$want" ||
    fail "braid launch exited $status after $sig, expected $want: $(tail -5 "$out/$name.log")"
  test -z "$(ranks_of "$name")" || fail "ranks are left running"
  ! pgrep -f "^mpirun .*--log.dir=$out/$name( |$)" > /dev/null || fail "mpirun is left running"
}

# stop_with SIGNAL NAME EXPECTED_STATUS [overrides...]: a long job stopped by one SIGNAL to braid
# launch once it trains
stop_with() {
  local sig=$1 name=$2 want=$3
  shift 3
  start_long "$name" "$@"
  signal_launch "$sig" "$name" 1
  end_of_job "$sig" "$name" "$want"
}

# catches_sigint PID: whether process PID has a SIGINT handler (braid train's is one-shot: once
# it has run, the process no longer catches SIGINT)
catches_sigint() {
  local mask
  mask=$(sed -n 's/^SigCgt:[[:space:]]*//p' "/proc/$1/status" 2> /dev/null) || return 1
  test -n "$mask" && (((0x$mask >> 1) & 1))
}

case $case_name in
dp2)
  # launch's own environment: nothing set for it
  env -u OMP_NUM_THREADS -u OMPI_ALLOW_RUN_AS_ROOT -u OMPI_ALLOW_RUN_AS_ROOT_CONFIRM \
    timeout 300 "$braid" launch -n 2 "${job[@]}" --train.max_steps=10 --parallel.dp=2 \
    --log.dir="$out/dp2" --checkpoint.dir="$out/dp2/ck" > "$out/dp2.log" 2>&1 ||
    fail "launch failed: $(tail -5 "$out/dp2.log")"
  train single --train.max_steps=10 --train.grad_accum=2
  grep -q '^rank 0: dp 0, tp 0, pp 0 (local rank 0)$' "$out/dp2.log" || fail "no rank map"
  grep -q '^rank 1: dp 1, tp 0, pp 0 (local rank 1)$' "$out/dp2.log" || fail "no rank 1 in the map"
  grep -q "^braid launch: OMP_NUM_THREADS=[0-9]* for each rank" "$out/dp2.log" ||
    fail "OMP_NUM_THREADS was not set and said"
  if [ "$(id -u)" -eq 0 ]; then
    grep -q "^braid launch: running .*OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun -np 2 $braid train " \
      "$out/dp2.log" || fail "the mpirun command was not printed as expected"
  fi
  grep -q "^data parallel: dp=2" "$out/dp2.log" || fail "braid train did not run at dp=2"
  same_losses single dp2
  ;;
default_n)
  launch run --train.max_steps=2 --parallel.dp=2
  test "$status" -eq 0 || fail "launch exited $status: $(tail -5 "$out/run.log")"
  grep -q "^braid launch: 2 ranks, parallel.dp=2 × tp=1 × pp=1, on this machine$" "$out/run.log" ||
    fail "did not start 2 ranks: $(head -3 "$out/run.log")"
  grep -q "^braid launch: running .*mpirun -np 2 " "$out/run.log" || fail "no mpirun -np 2"
  echo "ok: $(head -1 "$out/run.log")"
  ;;
bad_layout)
  status=0
  "$braid" launch -n 2 "${job[@]}" --parallel.dp=3 --log.dir="$out/bad" > "$out/bad.log" \
    2> "$out/bad.err" || status=$?
  test "$status" -eq 2 || fail "exit status $status, expected 2"
  test "$(wc -l < "$out/bad.err")" -eq 1 || fail "expected one line on stderr: $(cat "$out/bad.err")"
  grep -qx "braid: error: command line: parallel.dp=3 × tp=1 × pp=1 = 3 but braid launch -n 2 starts 2 ranks" \
    "$out/bad.err" || fail "unexpected message: $(cat "$out/bad.err")"
  test ! -s "$out/bad.log" || fail "it printed: $(cat "$out/bad.log")"
  test ! -e "$out/bad" || fail "a rank ran: $out/bad exists"
  echo "ok: $(cat "$out/bad.err")"
  ;;
restart)
  train straight "${slow[@]}" --train.grad_accum=2
  "$braid" launch -n 2 --max-restarts 1 "${job[@]}" "${slow[@]}" --parallel.dp=2 \
    --log.dir="$out/k" --checkpoint.dir="$out/k/ck" > "$out/k.log" 2>&1 &
  launcher=$!
  for _ in $(seq 1200); do
    compgen -G "$out/k/ck/step_*.h5" > /dev/null && break
    sleep 0.05
  done
  compgen -G "$out/k/ck/step_*.h5" > /dev/null || fail "no checkpoint: $(tail -5 "$out/k.log")"
  victim=$(ranks_of k | tail -1)
  test -n "$victim" || fail "no rank to kill"
  kill -9 "$victim"
  echo "killed rank pid $victim after $(cd "$out/k/ck" && ls step_*.h5 | tr '\n' ' ')"
  status=0
  wait "$launcher" || status=$?
  test "$status" -eq 0 || fail "braid launch exited $status: $(tail -5 "$out/k.log")"
  grep -q "^braid launch: the job failed (status [0-9]*); restart 1 of 1 from the latest checkpoint$" \
    "$out/k.log" || fail "no restart line"
  grep -q "^braid launch: running .* --checkpoint.resume=auto$" "$out/k.log" ||
    fail "the restart did not ask for checkpoint.resume=auto"
  grep -q "^resumed from $out/k/ck/step_" "$out/k.log" || fail "the restart did not resume"
  a=$(final_loss straight) b=$(final_loss k)
  awk -v a="$a" -v b="$b" 'BEGIN { d = (a - b) / a; if (d < 0) d = -d; exit !(d <= 1e-5) }' ||
    fail "final loss $b after the restart, $a uninterrupted"
  test "$(tail -1 "$out/k/metrics.jsonl" | sed -E 's/^\{"step": ([0-9]*),.*/\1/')" -eq 60 ||
    fail "the last row is not step 60"
  echo "ok: $(grep '^braid launch: the job failed' "$out/k.log"); final loss $b == $a"
  ;;
restart_rules)
  # a stand-in mpirun: logs its arguments, exits with $FAKE_STATUS
  mkdir -p "$out/bin"
  cat > "$out/bin/mpirun" << 'EOF'
#!/bin/sh
echo "$*" >> "$FAKE_LOG"
exit "$FAKE_STATUS"
EOF
  chmod +x "$out/bin/mpirun"
  export FAKE_LOG="$out/calls"
  FAKE_STATUS=7 PATH="$out/bin:$PATH" launch seven --max-restarts 2
  test "$status" -eq 7 || fail "status $status after a job that failed with 7"
  test "$(wc -l < "$out/calls")" -eq 3 || fail "expected 3 runs: $(cat "$out/calls")"
  test "$(grep -c -- '--checkpoint.resume=auto$' "$out/calls")" -eq 2 ||
    fail "restarts without --checkpoint.resume=auto: $(cat "$out/calls")"
  grep -q "^braid launch: the job failed (status 7); restart 2 of 2 from the latest checkpoint$" \
    "$out/seven.log" || fail "no 'restart 2 of 2' line"
  grep -q "^braid launch: the job failed (status 7) after 2 restarts: giving up$" "$out/seven.log" ||
    fail "no giving-up line"
  rm "$out/calls"
  FAKE_STATUS=2 PATH="$out/bin:$PATH" launch two --max-restarts 2
  test "$status" -eq 2 || fail "status $status after a job that failed with 2"
  test "$(wc -l < "$out/calls")" -eq 1 || fail "a status-2 job was restarted: $(cat "$out/calls")"
  grep -q "^braid launch: the job failed with status 2 .*not restarting" "$out/two.log" ||
    fail "did not say why it does not restart"
  rm "$out/calls"
  FAKE_STATUS=0 PATH="$out/bin:$PATH" launch zero --max-restarts 2
  test "$status" -eq 0 || fail "status $status after a job that succeeded"
  test "$(wc -l < "$out/calls")" -eq 1 || fail "a job that succeeded was restarted"
  echo "ok: status 7 restarted twice then kept, status 2 not restarted, status 0 kept"
  ;;
sigint)
  stop_with INT int 130
  test -e "$out/int/ck/latest" || fail "no checkpoint after Ctrl-C"
  grep -q "^braid launch: SIGINT: the ranks stop after the current step with a checkpoint" \
    "$out/int.log" || fail "launch did not say what it does with the signal"
  grep -q "stopped by SIGINT after step [0-9]*, with a checkpoint" "$out/int.log" ||
    fail "braid train did not stop on SIGINT: $(tail -5 "$out/int.log")"
  echo "ok: exit 130, $(readlink "$out/int/ck/latest" || cat "$out/int/ck/latest")"
  ;;
sigterm)
  stop_with TERM term 143
  test -e "$out/term/ck/latest" || fail "no checkpoint after SIGTERM"
  grep -q "stopped by SIGTERM after step [0-9]*, with a checkpoint" "$out/term.log" ||
    fail "braid train did not stop on SIGTERM: $(tail -5 "$out/term.log")"
  echo "ok: exit 143"
  ;;
sigint_twice)
  # Made deterministic: one rank (a) is frozen with SIGSTOP, so that the other (b) cannot end its
  # step (the step's collectives need a) whenever the Ctrl-Cs come. The first Ctrl-C has run b's
  # handler before the second is sent; the second must then kill b mid-step. a, continued, can
  # never end the step either: b is gone.
  start_long twice "${slow[@]}"
  mapfile -t ranks < <(ranks_of twice)
  test "${#ranks[@]}" -eq 2 || fail "expected two ranks, found: ${ranks[*]}"
  a=${ranks[0]} b=${ranks[1]}
  # a failure below must not leave a frozen job behind
  trap 'kill -KILL "$launcher" "${ranks[@]}" 2> /dev/null || true' EXIT
  catches_sigint "$b" || fail "rank $b does not catch SIGINT"
  kill -STOP "$a"
  signal_launch INT twice 1
  for _ in $(seq 250); do
    catches_sigint "$b" || break
    sleep 0.02
  done
  ! catches_sigint "$b" || fail "rank $b did not take the first SIGINT in 5 s"
  signal_launch INT twice 2
  kill -CONT "$a" 2> /dev/null || true
  end_of_job INT twice 130
  grep -q "^braid launch: SIGINT again: stopping the ranks now" "$out/twice.log" ||
    fail "launch did not pass the second Ctrl-C on"
  ! grep -q "stopped by SIGINT after step" "$out/twice.log" ||
    fail "the ranks ended the step after the second Ctrl-C"
  echo "ok: exit 130 after two Ctrl-C, the ranks stopped at once"
  ;;
no_mpirun)
  status=0
  PATH="$out/empty" "$braid" launch -n 2 "${job[@]}" --parallel.dp=2 --log.dir="$out/none" \
    > "$out/none.log" 2> "$out/none.err" || status=$?
  test "$status" -eq 1 || fail "exit status $status, expected 1"
  test "$(wc -l < "$out/none.err")" -eq 1 || fail "expected one line: $(cat "$out/none.err")"
  grep -q "^braid: error: launch: mpirun is not on PATH" "$out/none.err" ||
    fail "unexpected message: $(cat "$out/none.err")"
  echo "ok: $(cat "$out/none.err")"
  ;;
*)
  fail "unknown case $case_name"
  ;;
esac
