#!/usr/bin/env bash
# usage: train_shakespeare.sh BRAID REPO_DIR OUT_DIR
# The default job, shortened: prep tinyshakespeare (char), train configs/shakespeare_char.yaml for
# 200 steps, and check that the loss fell (from above 3 at step 20 to below 2.9, val below 2.6), that
# metrics.jsonl has the documented keys, and that the final checkpoint and `latest` exist.
set -euo pipefail
braid=$1 repo=$2 out=$3
rm -rf "$out" && mkdir -p "$out"
"$braid" prep --tokenizer char --input "$repo/data/assets/tinyshakespeare.txt" --out "$out/data" > /dev/null
"$braid" train "$repo/configs/shakespeare_char.yaml" --train.max_steps=200 --train.eval_every=100 \
  --train.eval_steps=10 --log.every=20 --data.train="$out/data/train_*.bin" \
  --data.val="$out/data/val_*.bin" --log.dir="$out/run" --checkpoint.dir="$out/run/checkpoints" \
  > "$out/train.log"
metrics=$out/run/metrics.jsonl
last=$(tail -n 1 "$metrics")
first=$(head -n 1 "$metrics")
for key in step loss lr grad_norm tokens_per_s mfu elapsed_s val_loss; do
  grep -q "\"$key\": " <<< "$last" || { echo "metrics.jsonl last row lacks $key: $last"; exit 1; }
done
awk -v first="$first" -v last="$last" 'BEGIN {
  match(first, /"loss": [0-9.]+/); l0 = substr(first, RSTART + 8, RLENGTH - 8)
  match(last, /"loss": [0-9.]+/); l1 = substr(last, RSTART + 8, RLENGTH - 8)
  match(last, /"val_loss": [0-9.]+/); v1 = substr(last, RSTART + 12, RLENGTH - 12)
  printf "loss %s -> %s, val_loss %s\n", l0, l1, v1
  if (!(l0 > 3.0 && l1 < 2.9 && v1 < 2.6)) { print "the loss did not fall as expected"; exit 1 }
}'
grep -q '"step": 200' <<< "$last" || { echo "last logged step is not 200: $last"; exit 1; }
test -f "$out/run/checkpoints/step_00000200.h5" || { echo "no final checkpoint"; exit 1; }
test "$(cat "$out/run/checkpoints/latest")" = "step_00000200.h5" || { echo "latest is wrong"; exit 1; }
echo "ok: $(tail -n 2 "$out/train.log" | head -n 1)"
