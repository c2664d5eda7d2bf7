#!/usr/bin/env bash
# usage: inspect_flipped.sh BRAID CHECKPOINT OUT_DIR
# Flips one byte inside the data of /model/transformer.wte.weight in a copy of CHECKPOINT (its
# file offset from h5py) and checks that `braid inspect` fails on that tensor's checksum with one
# line. Exit 77 (CTest: skipped) when /usr/bin/python3 has no h5py.
set -euo pipefail
braid=$1 ckpt=$2 out=$3
if ! /usr/bin/python3 -c 'import h5py' 2> /dev/null; then
  echo "h5py is not installed for /usr/bin/python3: skipped"
  exit 77
fi
mkdir -p "$out"
copy=$out/flipped.h5
cp "$ckpt" "$copy"
/usr/bin/python3 - "$copy" <<'PY'
import sys
import h5py
path = sys.argv[1]
with h5py.File(path, "r") as f:
    d = f["model"]["transformer.wte.weight"]
    offset = d.id.get_offset()
    assert offset is not None, "dataset has no contiguous storage"
    at = offset + d.id.get_storage_size() // 2
with open(path, "r+b") as f:
    f.seek(at)
    b = f.read(1)
    f.seek(at)
    f.write(bytes([b[0] ^ 0x10]))
print(f"flipped byte {at} of {path}")
PY
exec bash "$(dirname "$0")/inspect_expect.sh" 1 "transformer\.wte\.weight.*checksum" "$braid" inspect "$copy"
