#!/usr/bin/env bash
# Checkpoint speed: saving and loading the training state of a 124M-parameter GPT (+ AdamW state,
# 1.5 GB) with bench_checkpoint, next to dd writing and reading as many bytes in the same
# directory; then the wall time of a whole tiny `braid train` run (start to first step, final
# checkpoint included), fresh and resuming. Medians of REPEAT runs of each (default 3), each a
# process of its own, checkpoint and dd runs alternating.
#   bench/checkpoint.sh [DIR]   (default $BRAID_BENCH_CKPT_DIR or /tmp/braid-bench-ckpt;
#                                BUILD=build, REPEAT=3)
# Needs about 3 GB free in DIR; what it writes there is deleted at the end. As root the page cache
# is dropped before every read (echo 3 > /proc/sys/vm/drop_caches); otherwise the table says the
# reads came from the cache.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build}
repeat=${REPEAT:-3}
target=${1:-${BRAID_BENCH_CKPT_DIR:-/tmp/braid-bench-ckpt}}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
bench="$build/bench_checkpoint"
braid="$build/braid"
for bin in "$bench" "$braid"; do
  [[ -x $bin ]] || { echo "bench/checkpoint.sh: $bin is not built (cmake --build $build)" >&2; exit 1; }
done
mkdir -p "$target"
work=$(mktemp -d "$target/run.XXXXXX")
trap 'rm -rf "$work"' EXIT

now() { date +%s.%N; }
field() { sed -n "s/^$1=//p" <<< "$2"; } # key=value lines of bench_checkpoint
median() { tr ' ' '\n' <<< "$*" | sort -g | awk '{ v[NR] = $1 } END { m = int((NR + 1) / 2); print (NR % 2) ? v[m] : (v[m] + v[m + 1]) / 2 }'; }
mbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.1f", b / 1e6 / s }'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f%%", 100 * a / b }'; }
drop_cache() {
  sync
  if echo 3 2> /dev/null > /proc/sys/vm/drop_caches; then echo "dropped"; else echo "NOT dropped"; fi
}
timed() { local t0 t1; t0=$(now); "$@"; t1=$(now); awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'; }
# timed with the command's output to a log; a failure prints the log and stops
timed_to() {
  local log=$1 t0 t1
  shift
  t0=$(now)
  "$@" > "$log" 2>&1 || { echo "bench/checkpoint.sh: failed: $*" >&2; cat "$log" >&2; exit 1; }
  t1=$(now)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}

echo "command: bench/checkpoint.sh $target   (REPEAT=$repeat, OMP_NUM_THREADS=$OMP_NUM_THREADS, $(nproc) cores, $(date -u +%F))"
echo "filesystem: $(df -hT "$work" | awk 'NR == 2 { print $1 ", " $2 ", " $5 " free" }')"

# ---- writes, alternating so that drift of a shared disk hits both: a save into an empty
# directory (nothing to prune), then dd of as many bytes with fsync ----
saves=() dd_write=()
for _ in $(seq "$repeat"); do
  rm -rf "$work/ckpt"
  save=$("$bench" save "$work/ckpt")
  saves+=("$(field seconds "$save")")
  bytes=$(field bytes "$save")
  count=$(( (bytes + 4194303) / 4194304 ))
  dd_write+=("$(timed dd if=/dev/zero of="$work/dd.tmp" bs=4M count="$count" conv=fsync status=none)")
  rm -f "$work/dd.tmp"
done
dd_bytes=$((count * 4194304))

# ---- reads, alternating, each from a dropped page cache: a load, then dd of the same file ----
loads=() dd_read=() parts=()
for _ in $(seq "$repeat"); do
  load=$("$bench" load "$work/ckpt" --drop-cache)
  if [[ $(field digest "$load") != $(field digest "$save") ]]; then
    echo "bench/checkpoint.sh: the loaded state differs from the saved one" >&2
    exit 1
  fi
  loads+=("$(field seconds "$load")")
  parts+=("$(field open_seconds "$load")/$(field model_seconds "$load")/$(field optim_seconds "$load")")
  cache_dd=$(drop_cache)
  dd_read+=("$(timed dd if="$(field file "$load")" of=/dev/null bs=4M status=none)")
done
rm -rf "$work/ckpt"

# ---- braid train: the whole command, fresh, then resuming from its checkpoint ----
train_args=(configs/shakespeare_char.yaml --train.eval_every=0 --log.dir="$work/train/log"
            --checkpoint.dir="$work/train/ckpt")
fresh=() resumed=()
for _ in $(seq "$repeat"); do
  rm -rf "$work/train"
  fresh+=("$(timed_to "$work/fresh.log" "$braid" train "${train_args[@]}" --train.max_steps=1)")
  resumed+=("$(timed_to "$work/resume.log" "$braid" train "${train_args[@]}" --train.max_steps=2)")
  grep -q "^resumed from" "$work/resume.log" && grep -q "^step 2/2" "$work/resume.log" ||
    { echo "bench/checkpoint.sh: the second run did not resume to step 2:" >&2; cat "$work/resume.log" >&2; exit 1; }
done

save_s=$(median "${saves[@]}")
load_s=$(median "${loads[@]}")
dd_write_s=$(median "${dd_write[@]}")
dd_read_s=$(median "${dd_read[@]}")
save_mbps=$(mbps "$bytes" "$save_s")
load_mbps=$(mbps "$bytes" "$load_s")
dd_write_mbps=$(mbps "$dd_bytes" "$dd_write_s")
dd_read_mbps=$(mbps "$bytes" "$dd_read_s")

echo "model: GPT 12L 12H 768C V50304 T1024 (tied), $(field params "$save") parameters + AdamW state"
echo "times: median of $repeat; all runs in brackets"
echo
printf "%-36s %10s %8s %8s  %s\n" "operation" "bytes" "seconds" "MB/s" "note"
printf "%-36s %10s %8s %8s  %s\n" "ckpt_save (fsync included)" "$bytes" "$save_s" "$save_mbps" \
  "$(pct "$save_mbps" "$dd_write_mbps") of dd write (goal >= 70%) [$(tr ' ' ',' <<< "${saves[*]}")]"
printf "%-36s %10s %8s %8s  %s\n" "dd bs=4M conv=fsync (write)" "$dd_bytes" "$dd_write_s" \
  "$dd_write_mbps" "[$(tr ' ' ',' <<< "${dd_write[*]}")]"
printf "%-36s %10s %8s %8s  %s\n" "ckpt load (open+model+optim, crc32)" "$bytes" "$load_s" \
  "$load_mbps" "$(pct "$load_mbps" "$dd_read_mbps") of dd read, page cache $(field page_cache "$load") [$(tr ' ' ',' <<< "${loads[*]}")]"
printf "%-36s %10s %8s %8s  %s\n" "  load: open / model / optim" "" "" "" \
  "seconds per run [$(tr ' ' ',' <<< "${parts[*]}")]"
printf "%-36s %10s %8s %8s  %s\n" "dd bs=4M (read the checkpoint)" "$bytes" "$dd_read_s" \
  "$dd_read_mbps" "page cache $cache_dd [$(tr ' ' ',' <<< "${dd_read[*]}")]"
echo
printf "%-36s %8s s  %s\n" "braid train max_steps=1, fresh" "$(median "${fresh[@]}")" \
  "whole command (goal <= 1 s) [$(tr ' ' ',' <<< "${fresh[*]}")]"
printf "%-36s %8s s  %s\n" "braid train to step 2, resuming" "$(median "${resumed[@]}")" \
  "whole command, loads step 1 [$(tr ' ' ',' <<< "${resumed[*]}")]"
