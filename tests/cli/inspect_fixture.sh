#!/usr/bin/env bash
# usage: inspect_fixture.sh BRAID REPO_DIR OUT_DIR
# The inputs of the `braid inspect` tests (tests/cli/inspect_tests.cmake): tinyshakespeare prepared
# with the char tokenizer (OUT/data), a tiny GPT trained for 3 steps (OUT/ckpt/step_00000003.h5 and
# OUT/ckpt/latest), and damaged copies: a checkpoint cut to half its size, 4 KiB of (seeded)
# random bytes, a shard cut short, an empty file and a directory without `latest`.
set -euo pipefail
braid=$1 repo=$2 out=$3
rm -rf "$out" && mkdir -p "$out/damaged/empty_dir"
"$braid" prep --tokenizer char --input "$repo/data/assets/tinyshakespeare.txt" --out "$out/data" \
  > "$out/prep.log"
"$braid" train "$repo/configs/shakespeare_char.yaml" --model.n_layer=1 --model.n_embd=32 \
  --model.n_head=2 --model.block_size=32 --train.seq_len=32 --train.batch_size=4 \
  --train.max_steps=3 --train.eval_every=0 --schedule.warmup_steps=1 --schedule.decay_steps=3 \
  --data.train="$out/data/train_*.bin" --data.val="$out/data/val_*.bin" --log.dir="$out/log" \
  --log.every=1 --checkpoint.dir="$out/ckpt" > "$out/train.log"
ckpt=$out/ckpt/step_00000003.h5
test -f "$ckpt" || { echo "no checkpoint $ckpt after training"; exit 1; }

size=$(stat -c %s "$ckpt")
head -c $((size / 2)) "$ckpt" > "$out/damaged/truncated.h5"
LC_ALL=C awk 'BEGIN { srand(5); for (i = 0; i < 4096; i++) printf "%c", int(rand() * 256) }' \
  > "$out/damaged/random.bin"
shard=$out/data/val_000000.bin
head -c $(($(stat -c %s "$shard") - 10)) "$shard" > "$out/damaged/short_shard.bin"
: > "$out/damaged/empty.bin"
echo "ok: $ckpt ($size bytes), $(ls "$out/damaged" | wc -l) damaged inputs"
