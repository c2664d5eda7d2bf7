#!/usr/bin/env bash
# Data parallelism at dp=2 on this machine (bench/README.md):
#  1. the fraction of the gradient averaging hidden behind the backward (bench_dp: a GPT L8 C512,
#     27M parameters, 110 MB of gradients per step), without and with ZeRO-1, at two bucket sizes;
#  2. tokens/s of `braid train` at dp=1 and at dp=2 on the CPU benchmark model
#     (bench/train_cpu.yaml), same global batch; each rank gets cores/dp OpenMP threads;
#  3. optimizer-state bytes per rank with zero=0 and zero=1.
#   bench/dp.sh            (BUILD=build, STEPS=6 per overlap run, TRAIN_STEPS=20)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build}
steps=${STEPS:-6}
train_steps=${TRAIN_STEPS:-20}
cores=$(nproc)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
for bin in "$build/bench_dp" "$build/braid"; do
  [[ -x $bin ]] || { echo "bench/dp.sh: $bin is not built (cmake --build $build)" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
field() { tr ' ' '\n' <<< "$2" | sed -n "s/^$1=//p" | head -1; } # key=value words

echo "command: bench/dp.sh   ($cores cores, $(date +%F))"
echo
echo "1. communication hidden behind the backward (mpirun -np 2, OMP_NUM_THREADS=$((cores / 2 > 0 ? cores / 2 : 1)) per rank)"
printf '%-6s %-10s %8s %12s %14s %14s %8s\n' zero bucket_MB buckets backward_ms exposed_ms blocking_ms hidden
for zero in 0 1; do
  for mb in 25 4; do
    out=$(OMP_NUM_THREADS=$((cores / 2 > 0 ? cores / 2 : 1)) mpirun -np 2 --oversubscribe \
      "$build/bench_dp" --layers 8 --embd 512 --steps "$steps" --bucket-mb "$mb" --zero "$zero")
    printf '%-6s %-10s %8s %12s %14s %14s %8s\n' "$zero" "$mb" "$(field buckets "$out")" \
      "$(field backward_ms "$out")" "$(field exposed_after_backward_ms "$out")" \
      "$(field blocking_reduce_ms "$out")" "$(field hidden_fraction "$out")"
    opt_bytes[$zero]=$(field optimizer_state_bytes_per_rank "$out")
  done
done
echo "(exposed: from the end of the slowest rank's backward to the end of dp_finish; blocking: the"
echo " same bytes averaged after a barrier with nothing to overlap; hidden = 1 - exposed/blocking)"
echo

echo "2. braid train tokens/s, bench/train_cpu.yaml (GPT L6 C384 T256), global batch 16 sequences"
"$build/braid" prep --tokenizer byte --input data/assets/tinyshakespeare.txt --out "$work/data" \
  > /dev/null
common=(bench/train_cpu.yaml --train.max_steps="$train_steps" --log.every=1
  --data.train="$work/data/train_*.bin" --checkpoint.dir="$work/ck" --checkpoint.resume=none)
tok_s() { # the median tokens_per_s of rows after the first 5 (warm-up)
  awk -F'"tokens_per_s": ' 'NR > 5 { split($2, a, ","); print a[1] }' "$1" | sort -g |
    awk '{ v[NR] = $1 } END { m = int((NR + 1) / 2); printf "%.0f", (NR % 2) ? v[m] : (v[m] + v[m + 1]) / 2 }'
}
OMP_NUM_THREADS=$cores "$build/braid" train "${common[@]}" --train.grad_accum=2 \
  --log.dir="$work/dp1" > "$work/dp1.log"
OMP_NUM_THREADS=$((cores / 2 > 0 ? cores / 2 : 1)) mpirun -np 2 --oversubscribe "$build/braid" \
  train "${common[@]}" --parallel.dp=2 --log.dir="$work/dp2" > "$work/dp2.log"
OMP_NUM_THREADS=$((cores / 2 > 0 ? cores / 2 : 1)) mpirun -np 2 --oversubscribe "$build/braid" \
  train "${common[@]}" --parallel.dp=2 --parallel.zero=1 --log.dir="$work/dp2z" > "$work/dp2z.log"
t1=$(tok_s "$work/dp1/metrics.jsonl") t2=$(tok_s "$work/dp2/metrics.jsonl")
t2z=$(tok_s "$work/dp2z/metrics.jsonl")
printf '%-34s %10s\n' "layout" "tokens/s"
printf '%-34s %10s\n' "dp=1 grad_accum=2 ($cores threads)" "$t1"
printf '%-34s %10s  (%s of dp=1)\n' "dp=2 ($((cores / 2)) thread per rank)" "$t2" \
  "$(awk -v a="$t2" -v b="$t1" 'BEGIN { printf "%.2fx", a / b }')"
printf '%-34s %10s  (%s of dp=1)\n' "dp=2 zero=1" "$t2z" \
  "$(awk -v a="$t2z" -v b="$t1" 'BEGIN { printf "%.2fx", a / b }')"
echo "(one machine: the ranks share its cores and memory bandwidth; this measures the overhead of"
echo " data parallelism, not scaling)"
echo

echo "3. optimizer state per rank (AdamW exp_avg + exp_avg_sq + step), GPT L8 C512, dp=2"
printf '%-8s %16s\n' zero bytes
printf '%-8s %16s\n' 0 "${opt_bytes[0]}"
printf '%-8s %16s  (%s of zero=0)\n' 1 "${opt_bytes[1]}" \
  "$(awk -v a="${opt_bytes[1]}" -v b="${opt_bytes[0]}" 'BEGIN { printf "%.3f", a / b }')"
