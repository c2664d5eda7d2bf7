#!/usr/bin/env bash
# The README's first command: install dependencies, build braid (Release, into build/), then run
# the main job on its default: tokenize the shipped tinyshakespeare at character level and train
# nanoGPT's baby GPT on it (configs/shakespeare_char.yaml, 2000 steps), ending with its val loss.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$(nproc)"
echo
build/braid prep --tokenizer char --input data/assets/tinyshakespeare.txt \
  --out datasets/shakespeare_char
echo
build/braid train configs/shakespeare_char.yaml "$@"
