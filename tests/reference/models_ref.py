#!/usr/bin/python3
"""PyTorch reference for braid's GPT-2 and LLaMA models (tests/reference/compare_models.sh).

Plain PyTorch modules written here (nanoGPT's GPT; Hugging Face's Llama with rotate-half RoPE,
RMSNorm, SwiGLU and repeat_kv) with random weights from a fixed seed compute the loss and the
gradient of every parameter on a fixed batch, in float64 from float32 weights, so the reference
carries no rounding error of its own worth speaking of.

  models_ref.py --args VARIANT          the model arguments of the C driver (model_grads)
  models_ref.py --make VARIANT DIR      DIR/weights.h5: /model/<name> float32 (braid's names)
                                        DIR/ref.h5: /idx, /targets (B,T) int64, /loss, /grads/<name>
  models_ref.py --compare VARIANT DIR   DIR/out.h5 (the driver's /loss and /grads/<name>) against
                                        DIR/ref.h5; prints the worst relative error per tensor,
                                        exits 1 when one is over its tolerance

Tolerances: |loss - ref| / |ref| <= 1e-4; per gradient tensor max|g - ref| / max|ref| <= 1e-3.
Needs torch and h5py (/usr/bin/python3 on the build machines: torch 1.13 CPU, h5py 3.7).
"""
import math
import sys

import h5py
import torch
import torch.nn as nn
import torch.nn.functional as F

LOSS_TOL = 1e-4
GRAD_TOL = 1e-3

# B, T: the batch; the rest is the model config, as the driver's flags name it.
VARIANTS = {
    "gpt": dict(arch="gpt", vocab_size=64, block_size=20, n_layer=2, n_head=4, n_kv_head=4,
                n_embd=32, ffn_hidden=128, bias=1, gelu="tanh", tie=1, norm_eps=1e-5,
                rope_theta=10000.0, B=3, T=16, seed=1),
    "gpt_nobias": dict(arch="gpt", vocab_size=64, block_size=16, n_layer=2, n_head=4, n_kv_head=4,
                       n_embd=32, ffn_hidden=128, bias=0, gelu="exact", tie=0, norm_eps=1e-5,
                       rope_theta=10000.0, B=3, T=16, seed=2),
    "llama": dict(arch="llama", vocab_size=64, block_size=16, n_layer=2, n_head=4, n_kv_head=2,
                  n_embd=32, ffn_hidden=96, bias=0, gelu="tanh", tie=0, norm_eps=1e-5,
                  rope_theta=10000.0, B=3, T=16, seed=3),
}
CONFIG_FLAGS = ["arch", "vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd",
                "ffn_hidden", "bias", "gelu", "tie", "norm_eps", "rope_theta"]


# ---- nanoGPT (model.py), attention written out (torch 1.13 has no scaled_dot_product_attention)

class LayerNorm(nn.Module):
    def __init__(self, ndim, bias, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None
        self.eps = eps

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class CausalSelfAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c_attn = nn.Linear(c["n_embd"], 3 * c["n_embd"], bias=bool(c["bias"]))
        self.c_proj = nn.Linear(c["n_embd"], c["n_embd"], bias=bool(c["bias"]))
        self.n_head = c["n_head"]

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
        att = F.softmax(att.masked_fill(~mask, float("-inf")), dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c_fc = nn.Linear(c["n_embd"], c["ffn_hidden"], bias=bool(c["bias"]))
        self.gelu = nn.GELU(approximate="tanh" if c["gelu"] == "tanh" else "none")
        self.c_proj = nn.Linear(c["ffn_hidden"], c["n_embd"], bias=bool(c["bias"]))

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ln_1 = LayerNorm(c["n_embd"], c["bias"], c["norm_eps"])
        self.attn = CausalSelfAttention(c)
        self.ln_2 = LayerNorm(c["n_embd"], c["bias"], c["norm_eps"])
        self.mlp = MLP(c)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(c["vocab_size"], c["n_embd"]),
            wpe=nn.Embedding(c["block_size"], c["n_embd"]),
            h=nn.ModuleList([Block(c) for _ in range(c["n_layer"])]),
            ln_f=LayerNorm(c["n_embd"], c["bias"], c["norm_eps"]),
        ))
        self.lm_head = nn.Linear(c["n_embd"], c["vocab_size"], bias=False)
        if c["tie"]:
            self.lm_head.weight = self.transformer.wte.weight

    def forward(self, idx):
        T = idx.size(1)
        pos = torch.arange(0, T, dtype=torch.long)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


# ---- Hugging Face Llama (modeling_llama.py)

class LlamaRMSNorm(nn.Module):
    def __init__(self, hidden_size, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x):
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.variance_epsilon))


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def rotary_cos_sin(T, hs, theta, dtype):
    inv_freq = 1.0 / (theta ** (torch.arange(0, hs, 2, dtype=torch.float64) / hs))
    freqs = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype)[None, None], emb.sin().to(dtype)[None, None]


def apply_rotary_pos_emb(q, k, cos, sin):
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def repeat_kv(x, n_rep):
    B, NKV, T, hs = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None, :, :].expand(B, NKV, n_rep, T, hs).reshape(B, NKV * n_rep, T, hs)


class LlamaAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        C, self.n_head, self.n_kv_head = c["n_embd"], c["n_head"], c["n_kv_head"]
        self.hs = C // self.n_head
        self.theta = c["rope_theta"]
        self.q_proj = nn.Linear(C, self.n_head * self.hs, bias=False)
        self.k_proj = nn.Linear(C, self.n_kv_head * self.hs, bias=False)
        self.v_proj = nn.Linear(C, self.n_kv_head * self.hs, bias=False)
        self.o_proj = nn.Linear(self.n_head * self.hs, C, bias=False)

    def forward(self, x):
        B, T, _ = x.size()
        q = self.q_proj(x).view(B, T, self.n_head, self.hs).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.hs).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.hs).transpose(1, 2)
        cos, sin = rotary_cos_sin(T, self.hs, self.theta, x.dtype)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k = repeat_kv(k, self.n_head // self.n_kv_head)
        v = repeat_kv(v, self.n_head // self.n_kv_head)
        att = (q @ k.transpose(2, 3)) / math.sqrt(self.hs)
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
        att = F.softmax(att.masked_fill(~mask, float("-inf")), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, self.n_head * self.hs)
        return self.o_proj(y)


class LlamaMLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gate_proj = nn.Linear(c["n_embd"], c["ffn_hidden"], bias=False)
        self.up_proj = nn.Linear(c["n_embd"], c["ffn_hidden"], bias=False)
        self.down_proj = nn.Linear(c["ffn_hidden"], c["n_embd"], bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.self_attn = LlamaAttention(c)
        self.mlp = LlamaMLP(c)
        self.input_layernorm = LlamaRMSNorm(c["n_embd"], c["norm_eps"])
        self.post_attention_layernorm = LlamaRMSNorm(c["n_embd"], c["norm_eps"])

    def forward(self, x):
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["n_embd"])
        self.layers = nn.ModuleList([LlamaDecoderLayer(c) for _ in range(c["n_layer"])])
        self.norm = LlamaRMSNorm(c["n_embd"], c["norm_eps"])


class LlamaForCausalLM(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.model = LlamaModel(c)
        self.lm_head = nn.Linear(c["n_embd"], c["vocab_size"], bias=False)
        if c["tie"]:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, idx):
        x = self.model.embed_tokens(idx)
        for layer in self.model.layers:
            x = layer(x)
        return self.lm_head(self.model.norm(x))


# ---- the reference run

def build(c):
    """The model with random float32-representable weights, in float64, and the batch."""
    torch.manual_seed(c["seed"])
    model = GPT(c) if c["arch"] == "gpt" else LlamaForCausalLM(c)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
            elif "ln" in name or "norm" in name:
                p.normal_(1.0, 0.1)
            elif p is model.lm_head.weight or "wte" in name or "wpe" in name or "embed" in name:
                p.normal_(0.0, 0.3)
            else:
                p.normal_(0.0, 0.15)
    model = model.double()  # float32 values exactly: what weights.h5 holds
    B, T, V = c["B"], c["T"], c["vocab_size"]
    idx = torch.randint(0, V, (B, T), dtype=torch.long)
    targets = torch.randint(0, V, (B, T), dtype=torch.long)
    targets[1, 5] = -1  # one ignored position
    return model, idx, targets


def make(variant, out_dir):
    c = VARIANTS[variant]
    model, idx, targets = build(c)
    logits = model(idx)
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
    loss.backward()
    with h5py.File(f"{out_dir}/weights.h5", "w") as f:
        for name, p in model.named_parameters():  # a tied weight appears once, first name
            f.create_dataset(f"model/{name}", data=p.detach().float().numpy())
    with h5py.File(f"{out_dir}/ref.h5", "w") as f:
        f.create_dataset("idx", data=idx.numpy())
        f.create_dataset("targets", data=targets.numpy())
        f.create_dataset("loss", data=loss.item())
        for name, p in model.named_parameters():
            f.create_dataset(f"grads/{name}", data=p.grad.numpy())


def compare(variant, out_dir):
    failed = False
    with h5py.File(f"{out_dir}/ref.h5", "r") as ref, h5py.File(f"{out_dir}/out.h5", "r") as out:
        ref_loss, loss = float(ref["loss"][()]), float(out["loss"][()])
        err = abs(loss - ref_loss) / abs(ref_loss)
        ok = err <= LOSS_TOL
        failed |= not ok
        print(f"{variant}: loss braid {loss:.8f} pytorch {ref_loss:.8f} rel.err {err:.2e}"
              f"{'' if ok else '  FAIL (tolerance %.0e)' % LOSS_TOL}")
        names, out_names = set(ref["grads"].keys()), set(out["grads"].keys())
        if names != out_names:
            print(f"{variant}: gradient names differ: only in pytorch {sorted(names - out_names)}, "
                  f"only in braid {sorted(out_names - names)}  FAIL")
            failed = True
        rows = []
        for name in sorted(names & out_names):
            r = torch.from_numpy(ref["grads"][name][()])
            g = torch.from_numpy(out["grads"][name][()]).double()
            if r.shape != g.shape:
                print(f"{variant}: {name}: shape {tuple(g.shape)}, pytorch {tuple(r.shape)}  FAIL")
                failed = True
                continue
            scale = r.abs().max().item()
            rows.append(((g - r).abs().max().item() / (scale if scale > 0 else 1.0), name, scale))
        for err, name, scale in sorted(rows, reverse=True):
            ok = err <= GRAD_TOL
            failed |= not ok
            print(f"  {name:48s} rel.err {err:.2e} (max |grad| {scale:.3e})"
                  f"{'' if ok else '  FAIL (tolerance %.0e)' % GRAD_TOL}")
        worst = max(rows)[0] if rows else float("nan")
        print(f"{variant}: {len(rows)} gradient tensors, worst rel.err {worst:.2e}: "
              f"{'FAILED' if failed else 'ok'}")
    return 1 if failed else 0


def main(argv):
    if len(argv) >= 3 and argv[1] == "--args" and argv[2] in VARIANTS:
        c = VARIANTS[argv[2]]
        print(" ".join(f"--{k.replace('_', '-')} {c[k]}" for k in CONFIG_FLAGS))
        return 0
    if len(argv) >= 4 and argv[1] in ("--make", "--compare") and argv[2] in VARIANTS:
        torch.set_num_threads(2)
        if argv[1] == "--make":
            make(argv[2], argv[3])
            return 0
        return compare(argv[2], argv[3])
    print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
    print(f"VARIANT: one of {', '.join(VARIANTS)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
