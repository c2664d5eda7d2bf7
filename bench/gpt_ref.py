"""A nanoGPT-style GPT in PyTorch: the reference program braid's CPU benchmarks run against.

Same architecture as braid's GPT (pre-LayerNorm blocks, fused c_attn, GELU-tanh MLP, tied
lm_head, no bias when asked, nanoGPT's init), trained with torch.optim.AdamW on windows of llm.c
token shards. Prints one line per step: `step N loss L dt_ms D` and, at the end, the median
tokens/s of the steps after the warm-up, and the wall time (the last line, which
bench/train_cpu.sh parses).

With --val it runs a whole job as `braid train` does (bench/shakespeare_cpu.sh): braid's lr
schedule (core/schedule.c), the validation loss after every --eval-every steps and after the last
one, over the same fixed windows braid evaluates (the first eval-steps * batch windows of the
validation shards, in order), metrics rows in --jsonl, and a `final` line before the last.
"""
import argparse
import json
import math
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, C, H, bias):
        super().__init__()
        self.H = H
        self.ln_1 = nn.LayerNorm(C, elementwise_affine=True)
        self.c_attn = nn.Linear(C, 3 * C, bias=bias)
        self.c_proj = nn.Linear(C, C, bias=bias)
        self.ln_2 = nn.LayerNorm(C)
        self.c_fc = nn.Linear(C, 4 * C, bias=bias)
        self.mlp_proj = nn.Linear(4 * C, C, bias=bias)
        if not bias:
            self.ln_1.bias = None
            self.ln_2.bias = None

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.H, C // self.H).transpose(1, 2) for t in (q, k, v))
        if hasattr(F, "scaled_dot_product_attention"):  # PyTorch >= 2.0: nanoGPT's flash path
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # nanoGPT's "slow attention" path, the only one PyTorch 1.x has
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            mask = torch.ones(T, T, dtype=torch.bool).tril()
            att = F.softmax(att.masked_fill(~mask, float("-inf")), dim=-1)
            y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, V, T, L, H, C, bias):
        super().__init__()
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(T, C)
        self.h = nn.ModuleList(Block(C, H, bias) for _ in range(L))
        self.ln_f = nn.LayerNorm(C)
        if not bias:
            self.ln_f.bias = None
        self.lm_head = nn.Linear(C, V, bias=False)
        self.lm_head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if p.dim() >= 2:  # nanoGPT: both residual projections get 0.02 / sqrt(2 L)
                residual = name.endswith("c_proj.weight") or name.endswith("mlp_proj.weight")
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * L) if residual else 0.02)

    def forward(self, idx, targets):
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def read_shard(path):
    """The tokens of one llm.c shard (header of 256 int32: magic, version, token count)."""
    header = np.fromfile(path, dtype=np.int32, count=256)
    assert header[0] == 20240520, f"{path}: not an llm.c token shard"
    tokens = np.fromfile(path, dtype=np.uint16, count=int(header[2]), offset=1024)
    return torch.from_numpy(tokens.astype(np.int64))


def windows(shards, T):
    """Start offsets (into the concatenated shards) of braid's windows: T+1 tokens at k*T in each
    shard, never crossing shards (data/loader.c)."""
    starts, base = [], 0
    for s in shards:
        n = (len(s) - 1) // T if len(s) >= T + 1 else 0
        starts.append(base + torch.arange(n) * T)
        base += len(s)
    return torch.cat(starts)


def batch(data, starts, T):
    idx = starts[:, None] + torch.arange(T + 1)
    w = data[idx]
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


def lr_at(args, step):
    """braid's sched_lr (core/schedule.c), which is nanoGPT's get_lr; step counts from 0."""
    if step < args.lr_warmup:
        return args.lr * (step + 1) / (args.lr_warmup + 1)
    if args.schedule == "constant":
        return args.lr
    if step >= args.lr_decay_steps:
        return args.min_lr
    ratio = (step - args.lr_warmup) / (args.lr_decay_steps - args.lr_warmup)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio)) if args.schedule == "cosine" else 1.0 - ratio
    return args.min_lr + coeff * (args.lr - args.min_lr)


@torch.no_grad()
def evaluate(model, val_batches):
    model.eval()
    loss = sum(model(x, y).item() for x, y in val_batches) / len(val_batches)
    model.train()
    return loss


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shard", required=True, nargs="+", help="training shard(s), in name order")
    ap.add_argument("--val", nargs="+", help="validation shard(s): evaluate as braid train does")
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--embd", type=int, default=384)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5, help="steps left out of the median")
    ap.add_argument("--order", choices=["random", "epoch", "offsets"], default="random",
                    help="random: windows drawn with replacement; epoch: every window once per "
                         "epoch in a fresh permutation, as braid's data.shuffle; offsets: T+1 "
                         "tokens from any offset of the concatenated shards, as nanoGPT's "
                         "get_batch")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--schedule", choices=["constant", "linear", "cosine"], default="constant")
    ap.add_argument("--lr-warmup", type=int, default=0, help="schedule.warmup_steps")
    ap.add_argument("--lr-decay-steps", type=int, default=0, help="schedule.decay_steps")
    ap.add_argument("--min-lr", type=float, default=0.0)
    ap.add_argument("--beta2", type=float, default=0.99)
    ap.add_argument("--weight-decay", type=float, default=0.1, help="on >= 2-D parameters only")
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-steps", type=int, default=20)
    ap.add_argument("--jsonl", help="metrics rows: step, loss, lr, elapsed_s, val_loss at evals")
    ap.add_argument("--log-every", type=int, default=1, help="steps between --jsonl rows")
    ap.add_argument("--bias", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.schedule != "constant" and args.lr_warmup > args.lr_decay_steps:
        ap.error("--lr-warmup is greater than --lr-decay-steps")

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    T, B = args.seq, args.batch
    shards = [read_shard(p) for p in args.shard]
    data, train_windows = torch.cat(shards), windows(shards, T)
    val_batches = []
    if args.val:
        val_shards = [read_shard(p) for p in args.val]
        val_data, val_windows = torch.cat(val_shards), windows(val_shards, T)
        assert len(val_windows) >= args.eval_steps * B, "validation data too short"
        val_batches = [batch(val_data, val_windows[k * B:(k + 1) * B], T)
                       for k in range(args.eval_steps)]
    model = GPT(args.vocab, T, args.layers, args.heads, args.embd, args.bias)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, args.beta2), eps=1e-8)
    gen = torch.Generator().manual_seed(args.seed)
    order = torch.empty(0, dtype=torch.int64)
    jsonl = open(args.jsonl, "w") if args.jsonl else None
    dts, val_loss = [], None
    start = time.perf_counter()
    for step in range(args.steps):
        t0 = time.perf_counter()
        if args.order == "offsets":
            starts = torch.randint(len(data) - T, (B,), generator=gen)
        elif args.order == "random":
            starts = train_windows[torch.randint(len(train_windows), (B,), generator=gen)]
        else:  # the next B positions of the epoch stream, a new permutation when one runs out
            while len(order) < B:
                order = torch.cat([order, torch.randperm(len(train_windows), generator=gen)])
            starts, order = train_windows[order[:B]], order[B:]
        x, y = batch(data, starts, T)
        lr = lr_at(args, step)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        dt = time.perf_counter() - t0
        dts.append(dt)
        print(f"step {step + 1} loss {loss.item():.4f} dt_ms {dt * 1000:.1f}", flush=True)
        done, last = step + 1, step + 1 == args.steps
        row = {}
        if val_batches and args.eval_every > 0 and (done % args.eval_every == 0 or last):
            val_loss = row["val_loss"] = evaluate(model, val_batches)
            print(f"step {done} val_loss {val_loss:.4f}", flush=True)
        if jsonl and (done % args.log_every == 0 or last or row):
            row = {"step": done, "loss": loss.item(), "lr": lr, "grad_norm": norm.item(),
                   "elapsed_s": time.perf_counter() - start, **row}
            jsonl.write(json.dumps(row) + "\n")
    wall = time.perf_counter() - start
    if jsonl:
        jsonl.close()
    steady = dts[args.warmup:] or dts
    if val_batches:
        val = f"{val_loss:.4f}" if val_loss is not None else "none"
        print(f"final step {args.steps} loss {loss.item():.4f} val_loss {val} train_s {wall:.2f}")
    print(f"pytorch {torch.__version__} threads {torch.get_num_threads()}: "
          f"median tokens/s {B * T / statistics.median(steady):.1f} "
          f"wall_s {wall:.2f}")


if __name__ == "__main__":
    sys.exit(main())
