# Sourced by tests/cli/dp.sh, tp.sh and launch.sh with their arguments (CASE BRAID REPO_DIR
# OUT_DIR): sets case_name, braid, repo and out (OUT_DIR/CASE, emptied), the root and thread
# variables Open MPI and the ranks need, prepares tinyshakespeare (char) in $out/data, defines the
# tiny job's arguments in `job`, and fail, run, kill_one_rank and same_losses.

case_name=$1 braid=$2 repo=$3 out=$4/$1
rm -rf "$out" && mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
"$braid" prep --tokenizer char --input "$repo/data/assets/tinyshakespeare.txt" --out "$out/data" \
  > /dev/null

job=("$repo/configs/shakespeare_char.yaml" --model.n_layer=2 --model.n_embd=32 --model.n_head=2
  --model.block_size=32 --train.seq_len=32 --train.batch_size=4 --model.dropout=0.1
  --data.shuffle=true --train.eval_every=5 --train.eval_steps=4 --log.every=1
  --schedule.warmup_steps=5 --schedule.decay_steps=20 --parallel.bucket_mb=0.01
  --data.train="$out/data/train_*.bin" --data.val="$out/data/val_*.bin")

fail() {
  echo "FAIL: $*"
  exit 1
}

# run NAME NP [overrides...]: the job on NP ranks (1 = no mpirun), metrics and checkpoints in NAME
run() {
  local name=$1 np=$2
  shift 2
  local cmd=("$braid" train "${job[@]}" --log.dir="$out/$name" --checkpoint.dir="$out/$name/ck" "$@")
  if [ "$np" -gt 1 ]; then
    cmd=(mpirun -np "$np" --oversubscribe "${cmd[@]}")
  fi
  timeout 300 "${cmd[@]}" > "$out/$name.log" 2>&1 || fail "$name failed: $(tail -5 "$out/$name.log")"
}

# kill_one_rank NP [overrides...]: starts a long run of the job on NP ranks, kills one rank with
# SIGKILL once it trains, and fails unless the job ends non-zero within 30 s with no rank left
kill_one_rank() {
  local np=$1
  shift
  mpirun -np "$np" --oversubscribe "$braid" train "${job[@]}" "$@" --train.max_steps=1000000 \
    --train.eval_every=0 --log.every=50 --log.dir="$out/k" --checkpoint.dir="$out/k/ck" \
    > "$out/k.log" 2> "$out/k.err" &
  local launcher=$! victim start status=0 elapsed
  for _ in $(seq 200); do
    grep -q '^step ' "$out/k.log" 2> /dev/null && break
    sleep 0.1
  done
  victim=$(pgrep -f -n "braid train .*--log.dir=$out/k") || fail "no rank to kill"
  start=$(date +%s)
  kill -9 "$victim"
  wait "$launcher" || status=$?
  elapsed=$(($(date +%s) - start))
  test "$status" -ne 0 || fail "the job exited 0 after a rank was killed"
  test "$elapsed" -le 30 || fail "the job took ${elapsed} s to end after a rank was killed"
  ! pgrep -f "braid train .*--log.dir=$out/k" > /dev/null || fail "ranks are left running"
  echo "ok: the job ended with status $status ${elapsed} s after a rank was killed"
}

# same_losses A B [FROM_STEP [TOL]]: every loss and val_loss of rows >= FROM_STEP agree to TOL
# (relative; 1e-5 unless given)
same_losses() {
  local from=${3:-1} tol=${4:-1e-5}
  paste -d' ' <(awk -v f="$from" -F'[:,]' '$2 >= f' "$out/$1/metrics.jsonl") \
    <(awk -v f="$from" -F'[:,]' '$2 >= f' "$out/$2/metrics.jsonl") | awk -v tol="$tol" '
    { n = split($0, w, " ")
      a_loss = ""; b_loss = ""; a_val = ""; b_val = ""; half = 0
      for (i = 1; i <= n; i++) {
        if (w[i] == "{\"step\":") half++
        if (w[i] == "\"loss\":") { v = w[i + 1]; sub(",", "", v); if (half == 1) a_loss = v; else b_loss = v }
        if (w[i] == "\"val_loss\":") { v = w[i + 1]; sub("}", "", v); if (half == 1) a_val = v; else b_val = v }
      }
      if (a_loss == "" || b_loss == "") { print "row without loss: " $0; bad = 1; exit }
      d = (a_loss - b_loss) / b_loss; if (d < 0) d = -d; if (d > worst) worst = d
      if ((a_val == "") != (b_val == "")) { print "val_loss in one run only: " $0; bad = 1; exit }
      if (a_val != "") { d = (a_val - b_val) / b_val; if (d < 0) d = -d; if (d > worst) worst = d }
      rows++ }
    END { if (bad) exit 1
          printf "%d rows, largest relative difference %.3g\n", rows, worst
          if (rows == 0 || worst > tol) exit 1 }' || fail "losses of $1 and $2 differ (above)"
}
