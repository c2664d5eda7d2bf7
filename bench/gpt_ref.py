"""A nanoGPT-style GPT in PyTorch: the reference program braid's CPU benchmarks run against.

Same architecture as braid's GPT (pre-LayerNorm blocks, fused c_attn, GELU-tanh MLP, tied
lm_head, no bias when asked), trained with torch.optim.AdamW on windows of an llm.c token shard.
Prints one line per step: `step N loss L dt_ms D` and, at the end, the median tokens/s of the
steps after the warm-up, and the wall time.
"""
import argparse
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
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        att = F.softmax(att.masked_fill(~mask, float("-inf")), dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
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
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * L) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx, targets):
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shard", required=True)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--embd", type=int, default=384)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5, help="steps left out of the median")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--bias", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    torch.manual_seed(1337)
    torch.set_num_threads(args.threads)
    header = np.fromfile(args.shard, dtype=np.int32, count=256)
    assert header[0] == 20240520, "not an llm.c token shard"
    tokens = np.fromfile(args.shard, dtype=np.uint16, offset=1024).astype(np.int64)
    data = torch.from_numpy(tokens)
    T, B = args.seq, args.batch
    model = GPT(args.vocab, T, args.layers, args.heads, args.embd, args.bias)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.99), eps=1e-8)
    n_windows = (len(data) - 1) // T
    gen = torch.Generator().manual_seed(1337)
    dts = []
    start = time.perf_counter()
    for step in range(args.steps):
        t0 = time.perf_counter()
        starts = torch.randint(n_windows, (B,), generator=gen) * T
        x = torch.stack([data[s:s + T] for s in starts])
        y = torch.stack([data[s + 1:s + 1 + T] for s in starts])
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        dt = time.perf_counter() - t0
        dts.append(dt)
        print(f"step {step + 1} loss {loss.item():.4f} dt_ms {dt * 1000:.1f}", flush=True)
    steady = dts[args.warmup:] or dts
    print(f"pytorch {torch.__version__} threads {torch.get_num_threads()}: "
          f"median tokens/s {B * T / statistics.median(steady):.1f} "
          f"wall_s {time.perf_counter() - start:.2f}")


if __name__ == "__main__":
    sys.exit(main())
