#!/usr/bin/env bash
# usage: sample.sh CASE BRAID REPO_DIR OUT_DIR
# braid sample on a tiny shakespeare_char model. CASE `train` preps tinyshakespeare (char) and
# trains the model into OUT_DIR (the fixture of the other cases); the others sample from it:
#   length        "ROMEO:" + exactly 50 characters + a newline on stdout, nothing on stderr
#   seed          the same seed gives the same text, another seed another text
#   greedy        --temperature 0 is deterministic and equals --top-k 1 at any temperature
#   default       no prompt: exactly 200 characters (the default --tokens) + a newline
#   file_and_dir  a checkpoint file and its directory give the same text
#   bad_prompt    a character outside the vocabulary: exit 1, one line naming it, empty stdout
#   no_tokenizer  a checkpoint trained on shards without tokenizer.yaml: exit 1, one line saying so
#   fake_cuda     --device cuda on BRAID_FAKE_CUDA's device (the CPU's kernels on "device"
#                 memory: the model, its cache, the batches and the masks placed there) gives the
#                 cpu's text exactly, with a prompt and past the window; without it and without a
#                 GPU, --device cuda is one error line saying why, exit 1
# The model's block_size is 16, so every case but `train` runs past the window.
set -euo pipefail
case=$1 braid=$2 repo=$3 out=$4
ckpt=$out/run/checkpoints

fail() {
  echo "$case: $*"
  exit 1
}

# sample_to FILE ARGS...: stdout into FILE, stderr must stay empty
sample_to() {
  local file=$1
  shift
  "$braid" sample --checkpoint "$ckpt" "$@" > "$file" 2> "$file.err" || fail "exit $?: $(cat "$file.err")"
  [ ! -s "$file.err" ] || fail "stderr is not empty: $(cat "$file.err")"
}

# expect_text FILE PREFIX N: FILE is PREFIX, then N characters, then one newline
expect_text() {
  local file=$1 prefix=$2 n=$3
  local bytes
  bytes=$(wc -c < "$file")
  [ "$bytes" -eq $((${#prefix} + n + 1)) ] || fail "$file has $bytes bytes, expected ${#prefix} + $n + 1: $(cat "$file")"
  [ "$(head -c ${#prefix} "$file")" = "$prefix" ] || fail "$file does not start with '$prefix': $(cat "$file")"
  [ "$(tail -c 1 "$file" | od -An -c | tr -d ' ')" = '\n' ] || fail "$file does not end with a newline"
}

case $case in
train)
  rm -rf "$out" && mkdir -p "$out"
  "$braid" prep --tokenizer char --input "$repo/data/assets/tinyshakespeare.txt" --out "$out/data" > /dev/null
  "$braid" train "$repo/configs/shakespeare_char.yaml" --model.n_layer=2 --model.n_head=2 \
    --model.n_embd=32 --model.block_size=16 --train.seq_len=16 --train.batch_size=8 \
    --train.max_steps=40 --train.eval_every=0 --schedule.warmup_steps=5 --log.every=10 \
    --data.train="$out/data/train_*.bin" --data.val="$out/data/val_*.bin" \
    --log.dir="$out/run" --checkpoint.dir="$ckpt" > "$out/train.log"
  test -f "$ckpt/step_00000040.h5" || fail "no checkpoint"
  ;;
length)
  sample_to "$out/length.txt" --tokens 50 --prompt "ROMEO:"
  expect_text "$out/length.txt" "ROMEO:" 50
  ;;
seed)
  sample_to "$out/seed_a.txt" --tokens 50 --prompt "ROMEO:" --seed 5
  sample_to "$out/seed_b.txt" --tokens 50 --prompt "ROMEO:" --seed 5
  sample_to "$out/seed_c.txt" --tokens 50 --prompt "ROMEO:" --seed 6
  cmp -s "$out/seed_a.txt" "$out/seed_b.txt" || fail "seed 5 gave two texts: $(cat "$out/seed_a.txt" "$out/seed_b.txt")"
  ! cmp -s "$out/seed_a.txt" "$out/seed_c.txt" || fail "seeds 5 and 6 gave the same text: $(cat "$out/seed_a.txt")"
  ;;
greedy)
  sample_to "$out/greedy_a.txt" --tokens 40 --prompt "KING" --temperature 0
  sample_to "$out/greedy_b.txt" --tokens 40 --prompt "KING" --temperature 0 --seed 99
  sample_to "$out/greedy_c.txt" --tokens 40 --prompt "KING" --temperature 1.5 --top-k 1
  expect_text "$out/greedy_a.txt" "KING" 40
  cmp -s "$out/greedy_a.txt" "$out/greedy_b.txt" || fail "greedy depends on the seed"
  cmp -s "$out/greedy_a.txt" "$out/greedy_c.txt" || fail "--top-k 1 differs from --temperature 0: $(cat "$out/greedy_a.txt" "$out/greedy_c.txt")"
  ;;
default)
  sample_to "$out/default.txt"
  expect_text "$out/default.txt" "" 200
  ;;
fake_cuda)
  sample_to "$out/host.txt" --tokens 60 --prompt "ROMEO:" --top-k 5
  BRAID_FAKE_CUDA=1 sample_to "$out/device.txt" --tokens 60 --prompt "ROMEO:" --top-k 5 --device cuda
  cmp -s "$out/host.txt" "$out/device.txt" ||
    fail "cuda and cpu texts differ: $(cat "$out/host.txt") / $(cat "$out/device.txt")"
  # without the fake device and without a GPU: one line saying why, exit 1, nothing on stdout
  status=0
  "$braid" sample --checkpoint "$ckpt" --tokens 5 --device cuda > "$out/nogpu.txt" 2> "$out/nogpu.err" || status=$?
  if [ "$status" -ne 0 ]; then
    [ "$status" -eq 1 ] || fail "--device cuda without a GPU: exit status $status, expected 1"
    [ ! -s "$out/nogpu.txt" ] || fail "--device cuda without a GPU wrote: $(cat "$out/nogpu.txt")"
    [ "$(wc -l < "$out/nogpu.err")" -eq 1 ] || fail "expected one line: $(cat "$out/nogpu.err")"
    grep -qE "^braid: error: sample: --device cuda: (no CUDA device visible \(|braid was built without the CUDA backend)" "$out/nogpu.err" ||
      fail "unexpected message: $(cat "$out/nogpu.err")"
  fi
  ;;
file_and_dir)
  sample_to "$out/dir.txt" --tokens 30 --prompt "First"
  "$braid" sample --checkpoint "$ckpt/step_00000040.h5" --tokens 30 --prompt "First" > "$out/file.txt"
  cmp -s "$out/dir.txt" "$out/file.txt" || fail "the file and its directory differ"
  ;;
bad_prompt)
  status=0
  "$braid" sample --checkpoint "$ckpt" --prompt "ROMEO €" > "$out/bad.txt" 2> "$out/bad.err" || status=$?
  [ "$status" -eq 1 ] || fail "exit status $status, expected 1"
  [ ! -s "$out/bad.txt" ] || fail "stdout is not empty: $(cat "$out/bad.txt")"
  [ "$(wc -l < "$out/bad.err")" -eq 1 ] || fail "expected one line on stderr: $(cat "$out/bad.err")"
  grep -qF "braid: error: sample: --prompt: char tokenizer: character '€' (U+20AC) at byte offset 6 is not in the vocabulary (65 characters)" "$out/bad.err" ||
    fail "unexpected message: $(cat "$out/bad.err")"
  ;;
no_tokenizer)
  rm -rf "$out/notok" && mkdir -p "$out/notok/data"
  cp "$out/data/train_000000.bin" "$out/notok/data/"
  "$braid" train "$repo/configs/shakespeare_char.yaml" --model.vocab_size=65 --model.n_layer=1 \
    --model.n_head=2 --model.n_embd=16 --model.block_size=16 --train.seq_len=16 \
    --train.batch_size=2 --train.max_steps=2 --train.eval_every=0 --schedule.warmup_steps=1 \
    --data.train="$out/notok/data/train_*.bin" --data.val="" --log.dir="$out/notok/run" \
    --checkpoint.dir="$out/notok/ckpt" > "$out/notok/train.log"
  status=0
  "$braid" sample --checkpoint "$out/notok/ckpt" > "$out/notok.txt" 2> "$out/notok.err" || status=$?
  [ "$status" -eq 1 ] || fail "exit status $status, expected 1"
  [ "$(wc -l < "$out/notok.err")" -eq 1 ] || fail "expected one line on stderr: $(cat "$out/notok.err")"
  grep -qF "braid: error: sample: checkpoint $out/notok/ckpt/step_00000002.h5 has no tokenizer (its training data had no tokenizer.yaml)" "$out/notok.err" ||
    fail "unexpected message: $(cat "$out/notok.err")"
  ;;
*)
  fail "unknown case"
  ;;
esac
echo "ok: $case"
