#!/usr/bin/env bash
# usage: inspect_expect.sh STATUS PATTERN COMMAND [ARGS...]
# Runs COMMAND and checks its exit status equals STATUS. Status 0: PATTERN (an extended regular
# expression, grep -E) matches a line of stdout and stderr is empty. Otherwise: stderr is exactly
# one line, starting `braid: error: ` and matching PATTERN (no HDF5 error stack, no crash).
set -u
want_status=$1 pattern=$2
shift 2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$@" > "$dir/out" 2> "$dir/err"
status=$?
show() { printf -- '--- stdout:\n%s\n--- stderr:\n%s\n' "$(head -c 4000 "$dir/out")" "$(head -c 4000 "$dir/err")"; }
if [ "$status" -ne "$want_status" ]; then
  echo "exit status $status, expected $want_status"; show; exit 1
fi
if [ "$want_status" -eq 0 ]; then
  grep -qE -- "$pattern" "$dir/out" || { echo "stdout lacks /$pattern/"; show; exit 1; }
  [ ! -s "$dir/err" ] || { echo "stderr is not empty"; show; exit 1; }
else
  lines=$(wc -l < "$dir/err")
  [ "$lines" -eq 1 ] || { echo "expected one line on stderr, got $lines"; show; exit 1; }
  grep -q '^braid: error: ' "$dir/err" || { echo "stderr does not start with 'braid: error: '"; show; exit 1; }
  grep -qE -- "$pattern" "$dir/err" || { echo "stderr lacks /$pattern/"; show; exit 1; }
fi
echo "ok"
exit 0
