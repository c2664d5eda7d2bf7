#!/usr/bin/env bash
# The pipeline scheduler (bench/README.md): bubble fraction and peak activation memory of GPipe,
# 1F1B and interleaved 1F1B (2 chunks per rank) on equal synthetic stages (bench_pp, 4 layers per
# rank), against the analytic bubble (S-1)/(M+S-1), and (S-1)/(2M+S-1) interleaved.
#  - Timed stages (bench_pp --compute timed): each layer a tiny real layer padded by sleeping to
#    LAYER_MS forward and twice that backward, at pp=2 and pp=4, M = 2, 4, 8, 16: the schedule's
#    bubble (ordering, dependency waits, transfers, scheduler overhead). Sleeping stages need no
#    core, so pp=4 is measured on 2 cores too; compute contention is not measured.
#  - Real compute (bench_pp --compute mlp: MLP layers of width 512 on 256-row micro-batches):
#    pp=2 one rank per core (OMP_NUM_THREADS=1), bubble and memory; pp=4 memory and micro-batches
#    in flight only when there are fewer than 4 cores (the ranks' compute would share cores).
#    Interleaving needs M divisible by the stages (M=2 at pp=4 is left out).
#  - braid train tokens/s on bench/train_cpu.yaml (GPT L6 C384 T256, 4 micro-batches of 8
#    sequences a step) at pp=1 and at pp=2 with each schedule.
#   bench/pp.sh            (BUILD=build, STEPS=6, LAYER_MS=3, TRAIN_STEPS=12)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build}
steps=${STEPS:-6}
layer_ms=${LAYER_MS:-3}
train_steps=${TRAIN_STEPS:-12}
cores=$(nproc) # before OMP_NUM_THREADS, which nproc honours
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
[[ -x $build/bench_pp ]] || { echo "bench/pp.sh: $build/bench_pp is not built" >&2; exit 1; }
field() { tr ' ' '\n' <<< "$2" | sed -n "s/^$1=//p" | head -1; }

# bubble_runs ROW TIMED ARGS...: bench_pp ARGS at pp=2 and pp=4, M = 2, 4, 8, 16, each schedule;
# the function ROW prints a table row from the stages, the schedule's label, M, bench_pp's output
# and whether the bubble was timed. Above TIMED stages, 2 steps are run and the bubble is not
# timed (the memory columns do not depend on timing).
bubble_runs() {
  local row=$1 timed=$2 stages m schedule args label n out
  shift 2
  for stages in 2 4; do
    n=$steps
    ((stages <= timed)) || n=2
    for m in 2 4 8 16; do
      for schedule in gpipe 1f1b interleaved; do
        args=(--schedule "$schedule") label=$schedule
        if [[ $schedule == interleaved ]]; then
          ((m % stages == 0)) || continue
          args=(--schedule 1f1b --chunks 2) label="1f1b, 2 chunks"
        fi
        out=$(mpirun -np "$stages" --oversubscribe "$build/bench_pp" "$@" "${args[@]}" \
          --microbatches "$m" --steps "$n")
        "$row" "$stages" "$label" "$m" "$out" "$((stages <= timed))"
      done
    done
  done
}

echo "command: bench/pp.sh   ($cores cores, $(date +%F))"
echo "timed stages: 4 layers per rank, each ${layer_ms} ms forward and twice that backward (sleeping)"
format='%-6s %-16s %4s %8s %9s %7s %13s %9s\n'
printf "$format" stages schedule M bubble analytic excess steps_range step_ms
timed_row() {
  local bubble analytic
  bubble=$(field bubble "$4") analytic=$(field analytic_bubble "$4")
  printf "$format" "$1" "$2" "$3" "$bubble" "$analytic" \
    "$(awk -v a="$bubble" -v b="$analytic" 'BEGIN { printf "%+.3f", a - b }')" \
    "$(field bubble_min "$4")-$(field bubble_max "$4")" "$(field step_ms "$4")"
}
bubble_runs timed_row 4 --compute timed --layer-ms "$layer_ms"
echo "(bubble: the worst stage's idle fraction of the step, median over $((steps - 1)) steps after a"
echo " warm-up, and its range over those steps; excess: bubble - analytic; step_ms: the slowest"
echo " stage's step, median. Compute replaced by fixed-duration waits: this is the schedule's"
echo " bubble with its dependency waits, transfers and scheduler overhead, not compute contention)"
echo

echo "real compute: 4 MLP layers per rank, width 512, 256-row micro-batches, 1 thread per rank"
format='%-6s %-16s %4s %8s %9s %15s %10s\n'
printf "$format" stages schedule M bubble analytic peak_act_MB in_flight
mlp_row() {
  local bubble
  bubble=$(field bubble "$4")
  (($5)) || bubble=n/a
  printf "$format" "$1" "$2" "$3" "$bubble" "$(field analytic_bubble "$4")" \
    "$(field peak_activation_mb "$4")" "$(field max_in_flight "$4")"
}
bubble_runs mlp_row "$cores" --compute mlp
echo "(bubble: as above, n/a where the stages outnumber the cores; peak_act_MB, in_flight: the"
echo " largest stage's activation memory and micro-batches alive at once)"
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
