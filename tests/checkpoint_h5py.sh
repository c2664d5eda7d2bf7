#!/usr/bin/env bash
# usage: checkpoint_h5py.sh TEST_CHECKPOINT_BINARY BRAID_VERSION
# h5py reads a format-2 checkpoint braid wrote (the test_h5py_fixture case of
# tests/test_checkpoint.c): names, shapes, dtypes and values of /model and /optimizer, every
# tensor's crc32 attribute (zlib.crc32 of its bytes), the root attributes, /config, /tokenizer and
# the /rng, /data, /schedule and /optimizer attributes, as docs/checkpoint.md says. Exit 77
# (CTest: skipped) when /usr/bin/python3 has no h5py.
set -u
if ! /usr/bin/python3 -c 'import h5py' 2>/dev/null; then
  echo "h5py is not installed for /usr/bin/python3: skipped"
  exit 77
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
CK_RUN_CASE=test_h5py_fixture BRAID_CKPT_FIXTURE_DIR=$dir "$1" || exit 1
/usr/bin/python3 - "$dir" "$2" <<'PY'
import os, sys, zlib
import h5py, numpy as np

ckpt_dir, version = sys.argv[1], sys.argv[2]
with open(os.path.join(ckpt_dir, "latest")) as f:
    assert f.read() == "step_00001234.h5\n"
assert sorted(os.listdir(ckpt_dir)) == ["latest", "step_00001234.h5"], os.listdir(ckpt_dir)
order = ["fc1.weight", "fc1.bias", "emb.weight", "ln.weight", "ln.bias"]  # parameter p
shapes = {"fc1.weight": (3, 4), "fc1.bias": (3,), "emb.weight": (5, 4),
          "ln.weight": (3,), "ln.bias": (3,)}


def check_crc(d):
    crc = d.attrs["crc32"]
    assert crc.dtype == np.uint32, (d.name, crc.dtype)
    assert int(crc) == zlib.crc32(d[()].tobytes()), (d.name, int(crc), zlib.crc32(d[()].tobytes()))


def attr(obj, name, value, dtype):
    got = obj.attrs[name]
    assert got == value and got.dtype == dtype, (obj.name, name, got, getattr(got, "dtype", None))


with h5py.File(os.path.join(ckpt_dir, "step_00001234.h5"), "r") as f:
    assert set(f.keys()) == {"model", "optimizer", "rng", "data", "schedule", "config",
                             "tokenizer"}, list(f.keys())
    attr(f, "format_version", 2, np.int32)
    attr(f, "step", 1234, np.int64)
    attr(f, "tokens_seen", 5678901234, np.int64)
    assert f.attrs["braid_version"] == version, f.attrs["braid_version"]
    assert f["config"].asstr()[()] == "model:\n  arch: gpt\n", f["config"][()]
    assert f["tokenizer"].asstr()[()] == "name: char\nvocab_size: 65\n", f["tokenizer"][()]
    attr(f["rng"], "dropout_seed", 42, np.uint64)
    attr(f["rng"], "dropout_offset", 987654321, np.uint64)
    attr(f["data"], "seed", 7, np.uint64)
    attr(f["data"], "shuffle", 1, np.uint8)
    attr(f["data"], "seq_len", 64, np.int64)
    attr(f["data"], "position", 14808, np.int64)
    attr(f["schedule"], "position", 1234, np.int64)
    attr(f["schedule"], "lr", 3e-4, np.float64)

    assert set(f["model"].keys()) == set(order), list(f["model"].keys())
    for p, name in enumerate(order):
        d = f["model"][name]
        assert d.dtype == np.float32 and d.shape == shapes[name], (name, d.dtype, d.shape)
        want = ((100.0 * p + np.arange(d.size)) / 4 - 7).astype(np.float32).reshape(d.shape)
        assert np.array_equal(d[()], want), (name, d[()], want)
        check_crc(d)

    opt = f["optimizer"]
    assert opt.attrs["name"] == "adamw", opt.attrs["name"]
    attr(opt, "step_count", 1234, np.int64)
    assert set(opt.keys()) == set(order), list(opt.keys())
    for p, name in enumerate(order):
        g = opt[name]
        assert set(g.keys()) == {"exp_avg", "exp_avg_sq", "step"}, (name, list(g.keys()))
        i = np.arange(g["exp_avg"].size)
        for state, want in (("exp_avg", (p + i) / 8.0), ("exp_avg_sq", p * i / 16.0 + 1)):
            d = g[state]
            assert d.dtype == np.float32 and d.shape == shapes[name], (name, state, d.dtype)
            assert np.array_equal(d[()], want.astype(np.float32).reshape(d.shape)), (name, state)
            check_crc(d)
        d = g["step"]
        assert d.dtype == np.int64 and d.shape == (), (name, d.dtype, d.shape)
        assert d[()] == 1000 + p, (name, d[()])
        check_crc(d)
print("h5py reads the checkpoint: ok")
PY
