#!/usr/bin/env bash
# The README's first command: install dependencies, build braid (Release, into build/), then run
# the main job on its default. Today the main job is the SimpleNet example of the C API.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$(nproc)"
echo
echo "== build/simplenet: SimpleNet (784-128-10) on a synthetic 10-class task =="
build/simplenet
