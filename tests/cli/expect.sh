#!/usr/bin/env bash
# usage: expect.sh STATUS TEXT COMMAND [ARGS...]
# Runs COMMAND, checks its exit status equals STATUS and that TEXT appears in its output.
set -u
want_status=$1 want_text=$2
shift 2
out=$("$@" 2>&1)
status=$?
if [ "$status" -ne "$want_status" ]; then
  printf 'exit status %s, expected %s; output:\n%s\n' "$status" "$want_status" "$out"
  exit 1
fi
if ! grep -qF -- "$want_text" <<<"$out"; then
  printf 'output lacks "%s"; output:\n%s\n' "$want_text" "$out"
  exit 1
fi
lines=$(grep -c 'error' <<<"$out" || true)
if [ "$want_status" -ne 0 ] && [ "$lines" -gt 1 ]; then
  printf 'expected one error line, got %s:\n%s\n' "$lines" "$out"
  exit 1
fi
exit 0
