"""PyTorch's side of bench/gpu.sh: the same GPT as braid's (bench/gpt_ref.py's GPT class) on a
CUDA device, AdamW steps on random tokens, optionally under torch.compile and bf16 autocast.
Prints `pytorch <mode>: median tokens/s X, peak memory Y MiB, steps N`."""
import argparse
import statistics
import time

import torch

from gpt_ref import GPT


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=50304)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--embd", type=int, default=768)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(1337)
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 is float32, as braid's
    model = GPT(args.vocab, args.seq, args.layers, args.heads, args.embd, False).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=True)
    step_fn = torch.compile(model) if args.compile else model
    x = torch.randint(0, args.vocab, (args.batch, args.seq), device=dev)
    y = torch.randint(0, args.vocab, (args.batch, args.seq), device=dev)
    times = []
    torch.cuda.reset_peak_memory_stats()
    for step in range(args.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
            loss = step_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    tps = args.batch * args.seq / statistics.median(times)
    mode = args.dtype + (" compiled" if args.compile else " eager")
    print(f"pytorch {torch.__version__} {mode}: median tokens/s {tps:.0f}, peak memory "
          f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB, steps {len(times)}")


if __name__ == "__main__":
    main()
