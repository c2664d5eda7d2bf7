#!/usr/bin/env bash
# CPU training throughput, braid vs PyTorch, back to back on the same machine and threads:
# GPT L6 H6 C384 T256 V256 B8, float32, AdamW, byte-level tinyshakespeare.
#   bench/train_cpu.sh [STEPS]        (default 30; the first 5 steps of each are left out)
# Prints each system's median tokens/s over the steady-state steps and the ratio braid/PyTorch.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-30}
warmup=5
build=${BUILD:-build}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
python=/usr/bin/python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "command: bench/train_cpu.sh $steps   (OMP_NUM_THREADS=$OMP_NUM_THREADS, $(nproc) cores, $(date -u +%F))"
"$build/braid" prep --tokenizer byte --input data/assets/tinyshakespeare.txt --out "$tmp/data" > /dev/null
"$build/braid" train bench/train_cpu.yaml --train.max_steps="$steps" \
  --data.train="$tmp/data/train_*.bin" --log.dir="$tmp/log" --checkpoint.dir="$tmp/ckpt" \
  > "$tmp/braid.log"
braid_tps=$($python - "$tmp/log/metrics.jsonl" "$warmup" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
steady = [r["tokens_per_s"] for r in rows if r["step"] > int(sys.argv[2])]
print(f"{statistics.median(steady):.1f}")
PY
)
braid_wall=$($python -c "import json,sys; print(json.loads(open(sys.argv[1]).readlines()[-1])['elapsed_s'])" "$tmp/log/metrics.jsonl")
echo "braid $("$build/braid" --version | head -1): median tokens/s $braid_tps wall_s $braid_wall"
if ! $python -c 'import torch' 2> /dev/null; then
  echo "pytorch: not installed for $python (apt-get install python3-torch): no comparison"
  exit 0
fi
ref_line=$($python bench/gpt_ref.py --shard "$tmp/data/train_000000.bin" --steps "$steps" \
  --warmup "$warmup" --threads "$OMP_NUM_THREADS" | tail -1)
echo "$ref_line"
ref_tps=$(sed -E 's/.*median tokens\/s ([0-9.]+).*/\1/' <<< "$ref_line")
$python -c "print(f'ratio braid/pytorch tokens/s: {float($braid_tps)/float($ref_tps):.2f}x')"
