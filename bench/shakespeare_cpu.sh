#!/usr/bin/env bash
# nanoGPT's baby GPT on character-level tinyshakespeare (configs/shakespeare_char.yaml: L4 H4 C128
# T64 B12, 2000 steps), braid against PyTorch, back to back on the same machine, data and threads.
#   bench/shakespeare_cpu.sh [PNG]     (default $PLOT, else bench/out/shakespeare_cpu.png)
# braid trains the config as it is (only data, log and checkpoint paths point into a temporary
# directory); PyTorch runs bench/gpt_ref.py with the settings of braid's resolved config. Prints
# each system's final validation loss, training and whole-command wall time and peak RSS, the
# ratios, and writes a plot of loss vs wall time (with the two metrics files beside it).
# Environment: OMP_NUM_THREADS (default 2), BUILD (default build), OPENBLAS_NUM_THREADS for PyTorch
# (default 1: Debian's torch calls a pthread OpenBLAS whose threads otherwise fight its own OpenMP
# threads, which halves its speed on this small model; braid keeps OpenBLAS on one thread anyway).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
pytorch_blas_threads=${OPENBLAS_NUM_THREADS:-1}
python=/usr/bin/python3
config=configs/shakespeare_char.yaml
png=${1:-${PLOT:-bench/out/shakespeare_cpu.png}}
target=1.88 # nanoGPT README's validation loss for this job
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Runs a command with stdout to $1, writing "<wall seconds> <peak RSS KiB>" to $1.usage.
measured() {
  local out=$1
  shift
  if [[ -x /usr/bin/time ]]; then
    /usr/bin/time -f '%e %M' -o "$out.usage" "$@" > "$out"
  else # the same from Python: the child's wall time and ru_maxrss (KiB on Linux)
    $python - "$out" "$@" <<'PY'
import os, subprocess, sys, time
t0 = time.perf_counter()
with open(sys.argv[1], "w") as out:
    p = subprocess.Popen(sys.argv[2:], stdout=out)
    _, status, usage = os.wait4(p.pid, 0)
wall = time.perf_counter() - t0
with open(sys.argv[1] + ".usage", "w") as f:
    f.write(f"{wall:.2f} {usage.ru_maxrss}\n")
sys.exit(os.waitstatus_to_exitcode(status))
PY
  fi
}

echo "command: bench/shakespeare_cpu.sh $png   (OMP_NUM_THREADS=$OMP_NUM_THREADS, $(nproc) cores, $(date -u '+%F %H:%M UTC'))"
echo "pytorch threads: $OMP_NUM_THREADS OpenMP, OPENBLAS_NUM_THREADS=$pytorch_blas_threads"
echo "job: $config as it is, 2000 steps; data, log and checkpoint paths in $tmp"
if ! $python -c 'import torch' 2> /dev/null; then
  echo "pytorch: not installed for $python (apt-get install python3-torch): nothing to compare" >&2
  exit 1
fi
"$build/braid" prep --tokenizer char --input data/assets/tinyshakespeare.txt --out "$tmp/data" > /dev/null
braid_cmd=("$build/braid" train "$config" --data.train="$tmp/data/train_*.bin"
  --data.val="$tmp/data/val_*.bin" --log.dir="$tmp/log" --checkpoint.dir="$tmp/ckpt"
  --checkpoint.resume=none)
echo "braid:   ${braid_cmd[*]}"
measured "$tmp/braid.out" "${braid_cmd[@]}"

# PyTorch's settings from braid's resolved config (the YAML braid train prints first), so the two
# cannot drift apart; settings gpt_ref.py does not have must be at the values it assumes.
mapfile -t ref_args < <($python - "$tmp/braid.out" <<'PY'
import sys
cfg, section = {}, None
for line in open(sys.argv[1]):
    line = line.rstrip("\n")
    if line.startswith("model: gpt,"):  # the summary line after the config
        break
    if line and not line.startswith(" ") and line.endswith(":"):
        section = cfg.setdefault(line[:-1], {})
    elif line.startswith("  ") and section is not None and ": " in line:
        key, value = line.strip().split(": ", 1)
        section[key] = value.strip('"')
try:
    m, t, o, s, p, d = (cfg[k] for k in ("model", "train", "optimizer", "schedule", "parallel", "data"))
    fixed = {"model.arch": (m["arch"], "gpt"), "model.dropout": (float(m["dropout"]), 0.0),
             "model.tie_embeddings": (m["tie_embeddings"], "true"), "model.gelu": (m["gelu"], "tanh"),
             "model.n_kv_head": (m["n_kv_head"], m["n_head"]),
             "model.ffn_hidden": (int(m["ffn_hidden"]), 4 * int(m["n_embd"])),
             "model.norm_eps": (float(m["norm_eps"]), 1e-5), "train.grad_accum": (t["grad_accum"], "1"),
             "train.seq_len": (t["seq_len"], m["block_size"]), "optimizer.name": (o["name"], "adamw"),
             "optimizer.beta1": (float(o["beta1"]), 0.9), "optimizer.eps": (float(o["eps"]), 1e-8),
             "parallel.dp*tp*pp": (int(p["dp"]) * int(p["tp"]) * int(p["pp"]), 1),
             "data.shuffle": (d["shuffle"], "true")}
    args = ["--vocab", m["vocab_size"], "--layers", m["n_layer"], "--heads", m["n_head"],
            "--embd", m["n_embd"], "--seq", t["seq_len"], "--batch", t["batch_size"],
            "--steps", t["max_steps"], "--seed", t["seed"], "--clip", t["grad_clip"],
            "--eval-every", t["eval_every"], "--eval-steps", t["eval_steps"],
            "--lr", o["lr"], "--beta2", o["beta2"], "--weight-decay", o["weight_decay"],
            "--schedule", s["name"], "--lr-warmup", s["warmup_steps"],
            "--lr-decay-steps", s["decay_steps"], "--min-lr", s["min_lr"],
            "--log-every", cfg["log"]["every"], "--order", "epoch"]
except KeyError as e:
    sys.exit(f"shakespeare_cpu: braid's resolved config has no {e} (did its printout change?)")
bad = [f"{k}={v} (gpt_ref.py assumes {want})" for k, (v, want) in fixed.items() if v != want]
if bad:
    sys.exit("shakespeare_cpu: gpt_ref.py cannot run this config: " + ", ".join(bad))
if m["bias"] == "true":
    args.append("--bias")
print("\n".join(args))
PY
)
ref_cmd=(env OPENBLAS_NUM_THREADS="$pytorch_blas_threads" "$python" bench/gpt_ref.py --shard "$tmp"/data/train_*.bin --val "$tmp"/data/val_*.bin
  "${ref_args[@]}" --threads "$OMP_NUM_THREADS" --jsonl "$tmp/pytorch.jsonl")
echo "pytorch: ${ref_cmd[*]}"
measured "$tmp/pytorch.out" "${ref_cmd[@]}"
echo

# braid's figures from its metrics.jsonl, PyTorch's from gpt_ref.py's, usage from `measured`
$python - "$tmp/log/metrics.jsonl" "$tmp/braid.out.usage" "$tmp/pytorch.jsonl" \
  "$tmp/pytorch.out.usage" "$target" "$("$build/braid" --version | head -1)" \
  "$(tail -1 "$tmp/pytorch.out" | cut -d: -f1)" <<'PY'
import json, sys
def figures(metrics, usage):
    rows = [json.loads(l) for l in open(metrics)]
    val = [r for r in rows if "val_loss" in r]
    wall, rss_kib = open(usage).read().split()
    return {"step": rows[-1]["step"], "val": val[-1]["val_loss"], "val_step": val[-1]["step"],
            "train_s": rows[-1]["elapsed_s"], "wall_s": float(wall), "rss": int(rss_kib) / 1024}
b, p = figures(sys.argv[1], sys.argv[2]), figures(sys.argv[3], sys.argv[4])
target = float(sys.argv[5])
print(f"braid:   {sys.argv[6]}")
print(f"pytorch: {sys.argv[7]}")
print(f"{'':34}{'braid':>10}{'pytorch':>10}{'pytorch/braid':>15}")
print(f"{'steps':34}{b['step']:>10}{p['step']:>10}")
print(f"{'final val loss (step %d)' % b['val_step']:34}{b['val']:>10.4f}{p['val']:>10.4f}"
      f"{'':15}  target <= {target:g}: braid {'yes' if b['val'] <= target else 'NO'}, "
      f"pytorch {'yes' if p['val'] <= target else 'NO'}")
print(f"{'training wall time (s)':34}{b['train_s']:>10.1f}{p['train_s']:>10.1f}"
      f"{p['train_s'] / b['train_s']:>14.2f}x  target >= 3x")
print(f"{'whole command wall time (s)':34}{b['wall_s']:>10.1f}{p['wall_s']:>10.1f}"
      f"{p['wall_s'] / b['wall_s']:>14.2f}x")
print(f"{'peak RSS (MiB)':34}{b['rss']:>10.1f}{p['rss']:>10.1f}"
      f"{p['rss'] / b['rss']:>14.2f}x  target >= 1x")
PY
echo "(training wall time: first step to the end of the last, evaluations included, from each"
echo " metrics file; whole command: process start to exit, setup, data and checkpoint included)"

mkdir -p "$(dirname "$png")"
stem=${png%.png}
cp "$tmp/log/metrics.jsonl" "$stem.braid.jsonl"
cp "$tmp/pytorch.jsonl" "$stem.pytorch.jsonl"
echo "metrics: $stem.braid.jsonl $stem.pytorch.jsonl"
if $python -c 'import matplotlib' 2> /dev/null; then
  $python bench/plot_loss.py --out "$png" --target "$target" \
    --title "shakespeare_char (L4 C128 T64 B12, 2000 steps), $OMP_NUM_THREADS threads" \
    "braid=$stem.braid.jsonl" "pytorch=$stem.pytorch.jsonl"
else
  echo "plot: skipped, matplotlib is not installed for $python (apt-get install python3-matplotlib)"
fi
