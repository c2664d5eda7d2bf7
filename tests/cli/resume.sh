#!/usr/bin/env bash
# usage: resume.sh CASE BRAID REPO_DIR OUT_DIR
# Resuming `braid train` from its checkpoints (docs/training.md "Resuming"), one CASE per CTest
# test, on a tiny shakespeare_char model with dropout 0.1 and shuffling on:
#   bitexact        20 steps straight == 10 steps + resume to 20: every logged loss, lr, grad norm
#                   and val loss has the same float bits; metrics.jsonl holds steps 1..20 once
#   redo            resuming from an older checkpoint drops the later metric rows and redoes them
#   refuse_model    a resumed run with another model.n_layer / optimizer.name is refused, naming
#                   the key; the checkpoints are byte-identical afterwards
#   report_changes  allowed changes (max_steps, lr, log.every) are printed as `resume: key: a -> b`
#   damaged         a damaged newest checkpoint (truncated, random bytes, a flipped byte inside a
#                   tensor) fails the run with one line; every checkpoint and `latest` are
#                   byte-identical after each failed run, and the last good one still resumes
#   broken_latest   `latest` naming a missing file is an error, never a silent fresh start
#   nothing_left    resuming a run already at train.max_steps trains nothing and saves nothing
#   none_warns      checkpoint.resume=none over an existing run starts fresh and says so
#   sigterm         SIGTERM mid-run saves a checkpoint after the current step and exits 143; the
#                   run then resumes from it
set -euo pipefail
case_name=$1 braid=$2 repo=$3 out=$4/$1
rm -rf "$out" && mkdir -p "$out"
"$braid" prep --tokenizer char --input "$repo/data/assets/tinyshakespeare.txt" --out "$out/data" \
  > /dev/null

# the tiny job's arguments
job=("$repo/configs/shakespeare_char.yaml" --model.n_layer=2 --model.n_embd=32 --model.n_head=2
  --model.block_size=32 --train.seq_len=32 --train.batch_size=4 --train.grad_accum=2
  --model.dropout=0.1 --data.shuffle=true --train.eval_every=5 --train.eval_steps=2 --log.every=1
  --schedule.warmup_steps=5 --schedule.decay_steps=20 --data.train="$out/data/train_*.bin"
  --data.val="$out/data/val_*.bin")

# train RUN_DIR [overrides...]: the tiny job, checkpoints in RUN_DIR/ck, metrics in RUN_DIR
train() {
  local run=$1
  shift
  "$braid" train "${job[@]}" --log.dir="$run" --checkpoint.dir="$run/ck" "$@"
}

fail() {
  echo "FAIL: $*"
  exit 1
}

# metrics.jsonl without the timing fields, which differ between runs by nature
trajectory() {
  sed -E 's/, "(tokens_per_s|mfu|elapsed_s)": [^,}]*//g' "$1"
}

checksums() {
  (cd "$1" && sha256sum latest step_*.h5)
}

case $case_name in
bitexact)
  train "$out/straight" --train.max_steps=20 > "$out/straight.log"
  train "$out/resumed" --train.max_steps=10 > "$out/first.log"
  train "$out/resumed" --train.max_steps=20 > "$out/second.log"
  grep -q "resumed from $out/resumed/ck/step_00000010.h5: step 10" "$out/second.log" ||
    fail "the second run did not say it resumed: $(grep -v '^ ' "$out/second.log" | head -5)"
  grep -q '^step 11/20 ' "$out/second.log" || fail "the resumed run did not start at step 11"
  test "$(wc -l < "$out/resumed/metrics.jsonl")" -eq 20 || fail "metrics.jsonl should hold 20 rows"
  grep -q '"val_loss"' "$out/resumed/metrics.jsonl" || fail "no evaluation in the run"
  if ! diff <(trajectory "$out/straight/metrics.jsonl") <(trajectory "$out/resumed/metrics.jsonl"); then
    fail "the resumed trajectory differs from the uninterrupted one (diff above)"
  fi
  echo "ok: steps 11-20 after resuming are bit-identical to the uninterrupted run"
  ;;
redo)
  train "$out/run" --train.max_steps=20 --checkpoint.every=10 > /dev/null
  cp "$out/run/metrics.jsonl" "$out/straight.jsonl"
  train "$out/run" --train.max_steps=20 --checkpoint.resume="$out/run/ck/step_00000010.h5" \
    > "$out/redo.log"
  grep -q '^step 11/20 ' "$out/redo.log" || fail "the run did not redo from step 11"
  test "$(wc -l < "$out/run/metrics.jsonl")" -eq 20 || fail "metrics.jsonl should hold 20 rows"
  diff <(trajectory "$out/straight.jsonl") <(trajectory "$out/run/metrics.jsonl") ||
    fail "redoing steps 11-20 changed them"
  echo "ok: resuming from step 10 redid steps 11-20 identically, metrics rows not duplicated"
  ;;
refuse_model)
  train "$out/run" --train.max_steps=4 > /dev/null
  before=$(checksums "$out/run/ck")
  for change in --model.n_layer=3 --optimizer.name=sgd --train.seq_len=16; do
    key=${change#--}
    key=${key%%=*}
    if train "$out/run" --train.max_steps=8 "$change" > "$out/log" 2> "$out/err"; then
      fail "resuming with $change was accepted"
    fi
    test "$(wc -l < "$out/err")" -eq 1 || fail "expected one error line: $(cat "$out/err")"
    grep -q "^braid: error: checkpoint.resume: .*step_00000004.h5 was saved with $key=" "$out/err" ||
      fail "the error does not name $key: $(cat "$out/err")"
  done
  test "$before" = "$(checksums "$out/run/ck")" || fail "a refused run changed the checkpoints"
  echo "ok: $(cat "$out/err")"
  ;;
report_changes)
  train "$out/run" --train.max_steps=4 > /dev/null
  train "$out/run" --train.max_steps=6 --optimizer.lr=0.002 --log.every=2 > "$out/log"
  for line in "resume: train.max_steps: 4 -> 6" "resume: optimizer.lr: 0.001 -> 0.002" \
      "resume: log.every: 1 -> 2"; do
    grep -qxF "$line" "$out/log" || fail "missing '$line' in: $(grep '^resume' "$out/log")"
  done
  test "$(grep -c '^resume: ' "$out/log")" -eq 3 || fail "unexpected reports: $(grep '^resume' "$out/log")"
  echo "ok: changes reported"
  ;;
damaged)
  train "$out/run" --train.max_steps=4 --checkpoint.every=2 > /dev/null
  newest=$out/run/ck/step_00000004.h5
  cp "$newest" "$out/newest.bak"
  # damage the newest file in several ways, each time resume through `latest`: one line, and
  # nothing in the checkpoint directory changes
  kinds="truncated garbage"
  if /usr/bin/python3 -c 'import h5py' 2> /dev/null; then kinds="$kinds flipped"; fi
  for kind in $kinds; do
    cp "$out/newest.bak" "$newest"
    case $kind in
    truncated)
      truncate -s $(($(stat -c %s "$newest") / 2)) "$newest"
      want="not a readable HDF5 file"
      ;;
    garbage)
      head -c "$(stat -c %s "$newest")" /dev/urandom > "$newest"
      want="not a readable HDF5 file"
      ;;
    flipped) # one byte inside a tensor's data: only the checksum can tell
      offset=$(/usr/bin/python3 -c "import h5py,sys; f=h5py.File(sys.argv[1],'r'); print(f['model/transformer.wte.weight'].id.get_offset() + 100)" "$newest")
      byte=$(od -An -tu1 -j "$offset" -N1 "$newest" | tr -d ' ')
      printf "$(printf '\\%03o' $(((byte + 1) % 256)))" |
        dd of="$newest" bs=1 seek="$offset" conv=notrunc status=none
      want="/model/transformer.wte.weight: checksum mismatch"
      ;;
    esac
    before=$(checksums "$out/run/ck")
    if train "$out/run" --train.max_steps=8 > "$out/log" 2> "$out/err"; then
      fail "resuming from a $kind checkpoint was accepted"
    fi
    test "$(wc -l < "$out/err")" -eq 1 || fail "$kind: expected one error line: $(cat "$out/err")"
    grep -q "^braid: error: checkpoint $newest: .*$want" "$out/err" ||
      fail "$kind: unexpected message: $(cat "$out/err")"
    test "$before" = "$(checksums "$out/run/ck")" || fail "$kind: the failed run changed the checkpoints"
    echo "ok ($kind): $(cat "$out/err")"
  done
  # the step-2 checkpoint still resumes
  train "$out/run" --train.max_steps=3 --checkpoint.resume="$out/run/ck/step_00000002.h5" \
    > "$out/log2" || fail "the last good checkpoint does not resume: $(tail -2 "$out/log2")"
  ;;
broken_latest)
  train "$out/run" --train.max_steps=2 > /dev/null
  echo "step_00000099.h5" > "$out/run/ck/latest"
  if train "$out/run" --train.max_steps=4 > "$out/log" 2> "$out/err"; then
    fail "a broken latest was taken for a fresh start"
  fi
  grep -q "^braid: error: checkpoint.resume=auto: checkpoint $out/run/ck/latest: names 'step_00000099.h5', which cannot be read" "$out/err" ||
    fail "unexpected message: $(cat "$out/err")"
  echo "ok: $(cat "$out/err")"
  ;;
nothing_left)
  train "$out/run" --train.max_steps=3 > /dev/null
  before=$(checksums "$out/run/ck")
  train "$out/run" --train.max_steps=3 > "$out/log"
  grep -q "^nothing to train: the run is at step 3 and train.max_steps=3" "$out/log" ||
    fail "no 'nothing to train' line: $(grep -v '^ ' "$out/log" | tail -3)"
  test "$before" = "$(checksums "$out/run/ck")" || fail "the checkpoints changed"
  echo "ok: nothing to train"
  ;;
none_warns)
  train "$out/run" --train.max_steps=3 > /dev/null
  train "$out/run" --train.max_steps=2 --checkpoint.resume=none > "$out/log"
  grep -q "^checkpoint.resume=none: starting fresh although $out/run/ck/step_00000003.h5 exists" \
    "$out/log" || fail "no warning: $(grep -v '^ ' "$out/log" | head -3)"
  grep -q '^step 1/2 ' "$out/log" || fail "the run did not start fresh"
  echo "ok: warned"
  ;;
sigterm)
  "$braid" train "${job[@]}" --log.dir="$out/run" --checkpoint.dir="$out/run/ck" \
    --train.max_steps=1000000 --log.every=100 --train.eval_every=0 > "$out/log" 2> "$out/err" &
  pid=$!
  for _ in $(seq 100); do # wait for the loop to run (first progress line)
    grep -q '^step ' "$out/log" 2> /dev/null && break
    sleep 0.1
  done
  kill -TERM "$pid"
  status=0
  wait "$pid" || status=$?
  test "$status" -eq 143 || fail "exit status $status, expected 143: $(cat "$out/err")"
  grep -q "^braid: error: stopped by SIGTERM after step [0-9]*, with a checkpoint" "$out/err" ||
    fail "unexpected message: $(cat "$out/err")"
  step=$(sed -E 's/.*after step ([0-9]+),.*/\1/' "$out/err")
  test "$(cat "$out/run/ck/latest")" = "$(printf 'step_%08d.h5' "$step")" ||
    fail "latest is $(cat "$out/run/ck/latest"), expected step $step"
  train "$out/run" --train.max_steps=$((step + 2)) > "$out/log2"
  grep -q "^resumed from .*: step $step," "$out/log2" || fail "did not resume from step $step"
  echo "ok: $(cat "$out/err")"
  ;;
*)
  fail "unknown case $case_name"
  ;;
esac
