#!/usr/bin/env bash
# The README's test command: install dependencies, build, and run the whole test suite twice:
# a Release build, then the unit tests under AddressSanitizer + UndefinedBehaviorSanitizer.
# Warnings are errors in both. Ends with CTest's summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

BRAID_REFERENCE_DEPS=1 scripts/install-deps.sh  # torch + h5py for the reference tests

echo "== sanitizer build (ASan + UBSan, Debug) =="
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DBRAID_SANITIZE=ON > /dev/null
cmake --build build-asan -j"$jobs"
# detect_leaks: every test frees what it allocates
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 ctest -j"$jobs" --output-on-failure)

echo "== release build =="
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build build -j"$jobs"
cd build && ctest -j"$jobs" --output-on-failure
