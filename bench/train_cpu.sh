#!/usr/bin/env bash
# CPU training throughput, braid vs PyTorch, back to back on the same machine and threads:
# GPT L6 H6 C384 T256 V256 B8, float32, AdamW, byte-level tinyshakespeare.
#   bench/train_cpu.sh [STEPS]        (default 30; the first 5 steps of each are left out)
# Prints each system's median tokens/s over the steady-state steps and the ratio braid/PyTorch;
# the sgemm peak braid measures when it starts (OpenBLAS with OMP_NUM_THREADS threads at the
# model's largest GEMM shape) and each system's model FLOP utilisation of it; each command's peak
# RSS. Environment: OMP_NUM_THREADS (default 2), BUILD (default build).
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-30}
warmup=5
build=${BUILD:-build}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
python=/usr/bin/python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# measured OUT CMD...: runs CMD with stdout to OUT, its peak RSS in KiB to OUT.rss
measured() {
  local out=$1
  shift
  if [[ -x /usr/bin/time ]]; then
    /usr/bin/time -f '%M' -o "$out.rss" "$@" > "$out"
  else
    "$@" > "$out"
    echo 0 > "$out.rss"
  fi
}
mib() { awk -v k="$(cat "$1")" 'BEGIN { if (k > 0) printf "%.0f MiB", k / 1024; else printf "n/a" }'; }

echo "command: bench/train_cpu.sh $steps   (OMP_NUM_THREADS=$OMP_NUM_THREADS, $(nproc) cores, $(date -u '+%F %H:%M UTC'))"
"$build/braid" prep --tokenizer byte --input data/assets/tinyshakespeare.txt --out "$tmp/data" > /dev/null
measured "$tmp/braid.log" "$build/braid" train bench/train_cpu.yaml --train.max_steps="$steps" \
  --data.train="$tmp/data/train_*.bin" --log.dir="$tmp/log" --checkpoint.dir="$tmp/ckpt"
read -r braid_tps braid_mfu < <($python - "$tmp/log/metrics.jsonl" "$warmup" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
steady = [r for r in rows if r["step"] > int(sys.argv[2])]
print(f'{statistics.median(r["tokens_per_s"] for r in steady):.1f}',
      f'{statistics.median(r["mfu"] for r in steady):.4f}')
PY
)
peak=$(sed -nE 's/.*sgemm peak ([0-9.]+) GFLOP\/s.*/\1/p' "$tmp/braid.log")
braid_wall=$($python -c "import json,sys; print(json.loads(open(sys.argv[1]).readlines()[-1])['elapsed_s'])" "$tmp/log/metrics.jsonl")
echo "sgemm peak (OpenBLAS, $OMP_NUM_THREADS threads, the model's largest GEMM, measured by braid at start): $peak GFLOP/s"
echo "braid $("$build/braid" --version | head -1): median tokens/s $braid_tps, mfu $(awk -v m="$braid_mfu" 'BEGIN { printf "%.1f%%", 100 * m }') of that peak, wall_s $braid_wall, peak RSS $(mib "$tmp/braid.log.rss")"
if ! $python -c 'import torch' 2> /dev/null; then
  echo "pytorch: not installed for $python (apt-get install python3-torch): no comparison"
  exit 0
fi
measured "$tmp/ref.log" $python bench/gpt_ref.py --shard "$tmp/data/train_000000.bin" \
  --steps "$steps" --warmup "$warmup" --threads "$OMP_NUM_THREADS"
ref_line=$(tail -1 "$tmp/ref.log")
ref_tps=$(sed -E 's/.*median tokens\/s ([0-9.]+).*/\1/' <<< "$ref_line")
# the same model, FLOPs per token and peak: PyTorch's utilisation scales with its tokens/s
ref_mfu=$(awk -v m="$braid_mfu" -v a="$ref_tps" -v b="$braid_tps" 'BEGIN { printf "%.1f%%", 100 * m * a / b }')
echo "$ref_line, mfu $ref_mfu, peak RSS $(mib "$tmp/ref.log.rss")"
$python -c "print(f'ratio braid/pytorch tokens/s: {float($braid_tps)/float($ref_tps):.2f}x')"
