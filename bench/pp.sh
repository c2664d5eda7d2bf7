#!/usr/bin/env bash
# The pipeline scheduler (bench/README.md): bubble fraction and peak activation memory of GPipe,
# 1F1B and interleaved 1F1B (2 chunks per rank) on equal synthetic stages (bench_pp: 4 MLP layers
# of width 512 on 256-row micro-batches per rank), against the analytic bubble (S-1)/(M+S-1),
# and (S-1)/(2M+S-1) interleaved.
#  - pp=2: one rank per core (OMP_NUM_THREADS=1), M = 2, 4, 8, 16: bubble and memory;
#    Interleaving needs M divisible by the stages (M=2 at pp=4 is left out).
#  - pp=4: 4 ranks on this machine's cores: more ranks than cores, so the ranks' waits and
#    compute overlap on a core and the bubble is not measured there; memory and micro-batches in
#    flight are (they do not depend on timing).
#  - braid train tokens/s on bench/train_cpu.yaml (GPT L6 C384 T256, 4 micro-batches of 8
#    sequences a step) at pp=1 and at pp=2 with each schedule.
#   bench/pp.sh            (BUILD=build, STEPS=6, TRAIN_STEPS=12)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build}
steps=${STEPS:-6}
train_steps=${TRAIN_STEPS:-12}
cores=$(nproc) # before OMP_NUM_THREADS, which nproc honours
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
[[ -x $build/bench_pp ]] || { echo "bench/pp.sh: $build/bench_pp is not built" >&2; exit 1; }
field() { tr ' ' '\n' <<< "$2" | sed -n "s/^$1=//p" | head -1; }

echo "command: bench/pp.sh   ($cores cores, $(date +%F))"
format='%-6s %-16s %4s %8s %9s %15s %10s\n'
printf "$format" stages schedule M bubble analytic peak_act_MB in_flight
for stages in 2 4; do
  for m in 2 4 8 16; do
    for schedule in gpipe 1f1b interleaved; do
      args=(--schedule "$schedule") label=$schedule
      if [[ $schedule == interleaved ]]; then
        ((m % stages == 0)) || continue
        args=(--schedule 1f1b --chunks 2) label="1f1b, 2 chunks"
      fi
      out=$(mpirun -np "$stages" --oversubscribe "$build/bench_pp" "${args[@]}" \
        --microbatches "$m" --steps "$steps")
      bubble=$(field bubble "$out")
      [[ $stages -gt $cores ]] && bubble=n/a
      printf "$format" "$stages" "$label" "$m" "$bubble" "$(field analytic_bubble "$out")" \
        "$(field peak_activation_mb "$out")" "$(field max_in_flight "$out")"
    done
  done
done
echo "(bubble: the worst stage's idle fraction of the step, median over $((steps - 1)) steps after a"
echo " warm-up; peak_act_MB, in_flight: the largest stage's activation memory and micro-batches"
echo " alive at once)"
echo

echo "braid train tokens/s, bench/train_cpu.yaml (GPT L6 C384 T256), 4 micro-batches of 8 sequences"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$build/braid" prep --tokenizer byte --input data/assets/tinyshakespeare.txt --out "$work/data" \
  > /dev/null
common=(bench/train_cpu.yaml --train.max_steps="$train_steps" --log.every=1 --train.grad_accum=4
  --data.train="$work/data/train_*.bin" --checkpoint.dir="$work/ck" --checkpoint.resume=none)
tok_s() { # the median tokens_per_s of rows after the first 5 (warm-up)
  awk -F'"tokens_per_s": ' 'NR > 5 { split($2, a, ","); print a[1] }' "$1" | sort -g |
    awk '{ v[NR] = $1 } END { m = int((NR + 1) / 2); printf "%.0f", (NR % 2) ? v[m] : (v[m] + v[m + 1]) / 2 }'
}
OMP_NUM_THREADS=$cores "$build/braid" train "${common[@]}" --log.dir="$work/pp1" > "$work/pp1.log"
base=$(tok_s "$work/pp1/metrics.jsonl")
printf '%-36s %10s\n' layout tokens/s
printf '%-36s %10s\n' "pp=1 ($cores threads)" "$base"
for schedule in gpipe 1f1b interleaved; do
  args=(--parallel.schedule="$schedule") label="pp=2 $schedule (1 thread per rank)"
  if [[ $schedule == interleaved ]]; then
    args=(--parallel.schedule=1f1b --parallel.virtual_stages=2)
    label="pp=2 1f1b, 2 chunks (1 thread/rank)"
  fi
  mpirun -np 2 --oversubscribe "$build/braid" train "${common[@]}" --parallel.pp=2 "${args[@]}" \
    --log.dir="$work/$schedule" > "$work/$schedule.log"
  t=$(tok_s "$work/$schedule/metrics.jsonl")
  printf '%-36s %10s  (%s of pp=1)\n' "$label" "$t" \
    "$(awk -v a="$t" -v b="$base" 'BEGIN { printf "%.2fx", a / b }')"
done
echo "(one machine: pp=2 splits the same cores between two stages, so this is the cost of the"
echo " pipeline's bubble and transfers against one rank on both cores, not scaling)"
