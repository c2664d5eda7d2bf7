"""Loss against wall time from metrics.jsonl files (braid train's log.dir/metrics.jsonl, or
bench/gpt_ref.py --jsonl): training loss as a line, validation loss as markers, one colour per run.

  /usr/bin/python3 bench/plot_loss.py --out loss.png [--title T] [--target 1.88] NAME=FILE ...

Needs matplotlib (Debian: apt-get install python3-matplotlib); draws with the Agg backend, no display.
"""
import argparse
import json
import sys


def read_rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="NAME=FILE", help="a label and its metrics.jsonl")
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--title", default="loss vs wall time")
    ap.add_argument("--target", type=float, help="draw a dashed line at this validation loss")
    ap.add_argument("--logy", action="store_true", help="logarithmic loss axis")
    args = ap.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot_loss: matplotlib is not installed for this python "
              "(apt-get install python3-matplotlib): no plot", file=sys.stderr)
        return 3

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for i, run in enumerate(args.runs):
        name, sep, path = run.partition("=")
        if not sep:
            ap.error(f"expected NAME=FILE, got {run!r}")
        rows = read_rows(path)
        colour = f"C{i}"
        ax.plot([r["elapsed_s"] for r in rows], [r["loss"] for r in rows], color=colour,
                alpha=0.6, linewidth=1.2, label=f"{name} train loss")
        val = [r for r in rows if "val_loss" in r]
        if val:
            last = val[-1]
            ax.plot([r["elapsed_s"] for r in val], [r["val_loss"] for r in val], color=colour,
                    marker="o", linewidth=2.0,
                    label=f"{name} val loss (final {last['val_loss']:.3f} at "
                          f"{last['elapsed_s']:.0f} s)")
    if args.target is not None:
        ax.axhline(args.target, color="grey", linestyle="--", linewidth=1.0,
                   label=f"target val loss {args.target:g}")
    if args.logy:
        ax.set_yscale("log")
    ax.set_xlabel("wall time since the first step (s)")
    ax.set_ylabel("cross-entropy loss (nats/char)")
    ax.set_title(args.title)
    ax.set_xlim(left=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"plot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
