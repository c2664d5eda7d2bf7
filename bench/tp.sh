#!/usr/bin/env bash
# Tensor parallelism on this machine (bench/README.md): bench_tp trains a GPT (default L4 C256 NH8
# V4096 T128 B4) at
#   tp=1: one process, 1 OpenMP thread and all the cores' threads;
#   tp=2: mpirun -np 2, one thread per rank (the ranks share the cores), without and with sequence
#         parallelism;
# and prints a table of step time, tokens/s and the bytes per step on the tp group (measured by
# comm's traffic counters) against the count derived from the model's code, then the breakdowns.
#   bench/tp.sh [bench_tp options]   (BUILD=build, STEPS=10 per run with the first a warm-up,
#                                      REPEAT=3 runs of each layout, interleaved)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build}
steps=${STEPS:-10}
repeat=${REPEAT:-3}
cores=$(nproc)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
[[ -x $build/bench_tp ]] || {
  echo "bench/tp.sh: $build/bench_tp is not built (cmake --build $build --target bench_tp)" >&2
  exit 1
}
field() { tr ' ' '\n' <<< "$2" | sed -n "s/^$1=//p" | head -1; } # key=value words
mb() { awk -v b="$1" 'BEGIN { printf "%.3f", b / 1e6 }'; }
median() { # of comma-separated numbers
  tr ',' '\n' <<< "$1" | sort -g | awk '{ v[NR] = $1 } END { m = int((NR + 1) / 2);
    printf "%.1f", (NR % 2) ? v[m] : (v[m] + v[m + 1]) / 2 }'
}
minimum() { tr ',' '\n' <<< "$1" | sort -g | head -1; }

echo "command: bench/tp.sh $*   (BUILD=$build, STEPS=$steps, REPEAT=$repeat, $cores cores, $(date +%F))"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
bench=("$build/bench_tp" --steps "$steps" "$@")
layouts=(tp1_t1 tp1_tn tp2 tp2_sp)
run() { # layout -> bench_tp's output
  case $1 in
    tp1_t1) OMP_NUM_THREADS=1 "${bench[@]}" ;;
    tp1_tn) OMP_NUM_THREADS=$cores "${bench[@]}" ;;
    tp2) OMP_NUM_THREADS=1 mpirun -np 2 --oversubscribe "${bench[@]}" --sp 0 ;;
    tp2_sp) OMP_NUM_THREADS=1 mpirun -np 2 --oversubscribe "${bench[@]}" --sp 1 ;;
  esac
}
declare -A out times best
for ((r = 0; r < repeat; r++)); do # rounds interleave the layouts, so machine noise hits all
  for key in "${layouts[@]}"; do
    out[$key]=$(run "$key")
    times[$key]+="${times[$key]:+,}$(field step_ms "${out[$key]}")"
    best[$key]+="${best[$key]:+,}$(field step_min_ms "${out[$key]}")"
  done
done
echo "load average after:  $(cut -d' ' -f1-3 /proc/loadavg)"
head -1 <<< "${out[tp1_t1]}"
echo "step: forward + backward + AdamW of the slowest rank; step_ms: the median of $repeat runs'"
echo "medians over $((steps - 1)) steps after a warm-up, each run's in brackets; best_ms: the fastest step of"
echo "all runs (least disturbed by other work on the machine); speedup: against tp=1 on 1 thread, of"
echo "the medians and of the bests; MB: payload bytes per step on the tp group as NCCL-tests' algbw"
echo "counts them (all-reduce: the tensor; reduce-scatter: its input; all-gather: its output);"
echo "wire: what a ring moves per rank (2(P-1)/P of an all-reduce's, (P-1)/P of the others');"
echo "peak_MiB: the largest rank's peak resident memory (getrusage ru_maxrss) in the last run"
echo
format='%-26s %8s %8s %9s %15s %11s %11s %8s %8s %8s  %s\n'
printf "$format" layout step_ms best_ms tokens/s speedup measured_MB analytic_MB ratio wire_MB \
  peak_MiB runs
base=$(median "${times[tp1_t1]}") base_best=$(minimum "${best[tp1_t1]}")
row() { # label key
  local o=${out[$2]} ms fast
  ms=$(median "${times[$2]}") fast=$(minimum "${best[$2]}")
  printf "$format" "$1" "$ms" "$fast" \
    "$(awk -v ms="$ms" -v n="$(field tokens_per_step "$o")" 'BEGIN { printf "%.0f", 1e3 * n / ms }')" \
    "$(awk -v a="$base" -v b="$ms" -v c="$base_best" -v d="$fast" \
      'BEGIN { printf "%.2fx / %.2fx", a / b, c / d }')" \
    "$(mb "$(field bytes_per_step "$o")")" "$(mb "$(field analytic_bytes_per_step "$o")")" \
    "$(field ratio "$o")" "$(mb "$(field wire_bytes_per_step "$o")")" \
    "$(field peak_rss_mb "$o")" "[${times[$2]}]"
}
row "tp=1 (1 thread)" tp1_t1
row "tp=1 ($cores threads)" tp1_tn
row "tp=2 (1 thread per rank)" tp2
row "tp=2 sp (1 thread/rank)" tp2_sp
echo "(one machine: the ranks share its cores and memory bandwidth)"
for key in tp2 tp2_sp; do
  echo
  echo "$(sed -n 2p <<< "${out[$key]}"): per step, by kind"
  grep '^  ' <<< "${out[$key]}"
done
