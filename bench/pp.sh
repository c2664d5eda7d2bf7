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
#   bench/pp.sh            (BUILD=build, STEPS=6)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build}
steps=${STEPS:-6}
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
