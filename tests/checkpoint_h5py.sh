#!/usr/bin/env bash
# usage: checkpoint_h5py.sh TEST_CHECKPOINT_BINARY BRAID_VERSION
# h5py reads a checkpoint braid wrote (the test_h5py_fixture case of tests/test_checkpoint.c):
# names, shapes, dtypes, values and root attributes as docs/checkpoint.md says. Exit 77 (CTest:
# skipped) when /usr/bin/python3 has no h5py.
set -u
if ! /usr/bin/python3 -c 'import h5py' 2>/dev/null; then
  echo "h5py is not installed for /usr/bin/python3: skipped"
  exit 77
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
CK_RUN_CASE=test_h5py_fixture BRAID_CKPT_FIXTURE_DIR=$dir "$1" || exit 1
/usr/bin/python3 - "$dir" "$2" <<'PY'
import os, sys
import h5py, numpy as np

ckpt_dir, version = sys.argv[1], sys.argv[2]
with open(os.path.join(ckpt_dir, "latest")) as f:
    assert f.read() == "step_00001234.h5\n"
expected = {"fc1.weight": (3, 4), "fc1.bias": (3,), "emb.weight": (5, 4),
            "ln.weight": (3,), "ln.bias": (3,)}
with h5py.File(os.path.join(ckpt_dir, "step_00001234.h5"), "r") as f:
    assert f.attrs["step"] == 1234 and f.attrs["step"].dtype == np.int64, f.attrs["step"]
    assert f.attrs["tokens_seen"] == 5678901234 and f.attrs["tokens_seen"].dtype == np.int64
    assert f.attrs["format_version"] == 1, f.attrs["format_version"]
    assert f.attrs["braid_version"] == version, f.attrs["braid_version"]
    assert f["config"].asstr()[()] == "model:\n  arch: gpt\n", f["config"][()]
    assert set(f["model"].keys()) == set(expected), list(f["model"].keys())
    for p, name in enumerate(["fc1.weight", "fc1.bias", "emb.weight", "ln.weight", "ln.bias"]):
        d = f["model"][name]
        assert d.dtype == np.float32 and d.shape == expected[name], (name, d.dtype, d.shape)
        want = ((100.0 * p + np.arange(d.size)) / 4 - 7).astype(np.float32).reshape(d.shape)
        assert np.array_equal(d[()], want), (name, d[()], want)
print("h5py reads the checkpoint: ok")
PY
