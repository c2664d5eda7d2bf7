#!/usr/bin/env bash
# Checkpoint speed: saving and loading the training state of a 124M-parameter GPT (+ AdamW state)
# with bench_checkpoint, next to dd writing and reading the same number of bytes in the same
# directory; then the wall time of a whole tiny `braid train` run (start to first step, the
# final checkpoint included), fresh and resuming.
#   bench/checkpoint.sh [DIR]     (default $BRAID_BENCH_CKPT_DIR or /tmp/braid-bench-ckpt; BUILD=build)
# Needs about 3 GB free in DIR; everything it writes there is deleted at the end. The page cache is
# dropped before each read when this runs as root (echo 3 > /proc/sys/vm/drop_caches); otherwise
# the table says the reads came from the cache.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build}
target=${1:-${BRAID_BENCH_CKPT_DIR:-/tmp/braid-bench-ckpt}}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
bench="$build/bench_checkpoint"
braid="$build/braid"
for bin in "$bench" "$braid"; do
  [[ -x $bin ]] || { echo "bench/checkpoint.sh: $bin not built (cmake --build $build)" >&2; exit 1; }
done
mkdir -p "$target"
work=$(mktemp -d "$target/run.XXXXXX")
trap 'rm -rf "$work"' EXIT

now() { date +%s.%N; }
# key=value from bench_checkpoint's output
field() { sed -n "s/^$1=//p" <<< "$2"; }
mbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.1f", b / 1e6 / s }'; }
drop_cache() {
  sync
  if echo 3 2> /dev/null > /proc/sys/vm/drop_caches; then echo "dropped"; else echo "NOT dropped (cache)"; fi
}

echo "command: bench/checkpoint.sh $target   (OMP_NUM_THREADS=$OMP_NUM_THREADS, $(nproc) cores, $(date -u +%F))"
echo "filesystem: $(df -hT "$work" | awk 'NR == 2 { print $1 " " $2 ", " $5 " free" }')"

# ---- save, then dd writing as many bytes with fsync ----
save=$("$bench" save "$work/ckpt")
file=$(field file "$save")
bytes=$(field bytes "$save")
save_s=$(field seconds "$save")
count=$(( (bytes + 4194303) / 4194304 ))
t0=$(now)
dd if=/dev/zero of="$work/dd.tmp" bs=4M count="$count" conv=fsync status=none
t1=$(now)
dd_write_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
dd_bytes=$(stat -c %s "$work/dd.tmp")

# ---- load, then dd reading the checkpoint file, each from a dropped cache ----
cache_load=$(drop_cache)
load=$("$bench" load "$work/ckpt")
load_s=$(field seconds "$load")
if [[ $(field digest "$load") != $(field digest "$save") ]]; then
  echo "bench/checkpoint.sh: the loaded state differs from the saved one" >&2
  exit 1
fi
cache_dd=$(drop_cache)
t0=$(now)
dd if="$file" of=/dev/null bs=4M status=none
t1=$(now)
dd_read_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
rm -f "$work/dd.tmp" "$file"

save_mbps=$(mbps "$bytes" "$save_s")
load_mbps=$(mbps "$bytes" "$load_s")
dd_write_mbps=$(mbps "$dd_bytes" "$dd_write_s")
dd_read_mbps=$(mbps "$bytes" "$dd_read_s")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f%%", 100 * a / b }'; }

# ---- braid train: the whole command, fresh and then resuming from its checkpoint ----
train_args=(configs/shakespeare_char.yaml --train.eval_every=0 --log.dir="$work/train/log"
            --checkpoint.dir="$work/train/ckpt")
t0=$(now)
"$braid" train "${train_args[@]}" --train.max_steps=1 > "$work/train1.log" 2>&1 ||
  { cat "$work/train1.log" >&2; exit 1; }
t1=$(now)
"$braid" train "${train_args[@]}" --train.max_steps=2 > "$work/train2.log" 2>&1 ||
  { cat "$work/train2.log" >&2; exit 1; }
t2=$(now)
fresh_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
resume_s=$(awk -v a="$t1" -v b="$t2" 'BEGIN { printf "%.2f", b - a }')
grep -q "^step 2/2" "$work/train2.log" || { echo "the resumed run did not take step 2" >&2; exit 1; }

echo "model: GPT 12L 768C V50304 T1024, $(field params "$save") parameters + AdamW state: $bytes bytes"
echo
printf "%-34s %10s %9s %9s  %s\n" "operation" "bytes" "seconds" "MB/s" "vs dd"
printf "%-34s %10s %9s %9s  %s\n" "ckpt_save (fsync included)" "$bytes" "$save_s" "$save_mbps" \
  "$(ratio "$save_mbps" "$dd_write_mbps") of dd write (goal >= 70%)"
printf "%-34s %10s %9s %9s\n" "dd write bs=4M conv=fsync" "$dd_bytes" "$dd_write_s" "$dd_write_mbps"
printf "%-34s %10s %9s %9s  %s\n" "ckpt load (open+model+optim, crc)" "$bytes" "$load_s" \
  "$load_mbps" "$(ratio "$load_mbps" "$dd_read_mbps") of dd read; page cache $cache_load"
printf "%-34s %10s %9s %9s  %s\n" "dd read bs=4M" "$bytes" "$dd_read_s" "$dd_read_mbps" \
  "page cache $cache_dd"
echo
printf "%-34s %9s s  %s\n" "braid train, max_steps=1, fresh" "$fresh_s" "whole command (goal <= 1 s)"
printf "%-34s %9s s  %s\n" "braid train, resume to step 2" "$resume_s" "whole command, loads step 1"
