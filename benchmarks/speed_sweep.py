"""Pretraining throughput against sequence length and batch size, ours and the Hugging Face
reference, each point timed interleaved in one process (`electra bench pretrain --compare hf`).

    .venv/bin/python benchmarks/speed_sweep.py --model small --out bench-runs/speed            # CPU, fp32
    python benchmarks/speed_sweep.py --model base --precision bf16 --compile --batch-sizes 32 64 128 256

Writes OUT/results.json (one `electra bench --json` object per point) and OUT/throughput.png
(tokens/s against sequence length at the first batch size, and against batch size at length 128).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="small")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("bench-runs/speed"))
    args = ap.parse_args()

    from electra.runtime import keep_freed_memory
    from electra.bench.runner import run_bench

    keep_freed_memory()  # as the `electra` command does

    # tokens per step stay comparable along the length axis: batch x length = first batch x 128
    points = [(max(1, args.batch_sizes[0] * 128 // t), t) for t in args.seq_lens]
    points += [(b, 128) for b in args.batch_sizes if (b, 128) not in points]
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for batch, seq in points:
        r = run_bench("pretrain", args.model, batch, seq, args.steps, 1, args.rounds, args.precision, True,
                      compile_=args.compile)
        results.append(r)
        print(f"batch {batch:4d} x {seq:4d}: ours {r['tokens_per_s']:>10,.0f} tokens/s, reference "
              f"{r['hf_tokens_per_s']:>10,.0f} ({r['ratio_vs_hf']:.2f}x), MFU {100 * r['mfu']:.1f}%", flush=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args, args.out / "throughput.png")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'throughput.png'}")


def plot(results: list[dict], args, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_len = sorted((r for r in results if r["batch_size"] * r["seq_len"] == args.batch_sizes[0] * 128),
                    key=lambda r: r["seq_len"])
    by_batch = sorted((r for r in results if r["seq_len"] == 128), key=lambda r: r["batch_size"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, rows, key, label in ((axes[0], by_len, "seq_len", f"sequence length (batch x length = {args.batch_sizes[0] * 128})"),
                                 (axes[1], by_batch, "batch_size", "batch size (length 128)")):
        xs = [r[key] for r in rows]
        ax.plot(xs, [r["tokens_per_s"] for r in rows], "o-", label="electra")
        ax.plot(xs, [r["hf_tokens_per_s"] for r in rows], "s--", label="transformers reference")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel(label)
        ax.set_ylabel("tokens/s")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    device = results[0]["device"]
    fig.suptitle(f"pretraining step, {args.model}, {args.precision}{', compiled' if args.compile else ''}, {device}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
