"""Does each fast CPU kernel of model/cpu.py pay on this machine? A `small` pretraining step (AdamW
included) timed with all kernels, with none (the plain path), and with each kernel left out in turn,
interleaved round by round in one process (medians). The allocator setting needs its own process:
run `electra bench pretrain` once as is and once with MALLOC_ARENA_MAX=8 set (which leaves glibc's
defaults alone) to compare it.

    .venv/bin/python benchmarks/cpu_kernels.py --out benchmarks/results/cpu_kernels --rounds 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch
from torch import nn


def variants():
    from electra.model import cpu
    from electra.model.encoder import SelfAttention
    from electra.model.heads import GeneratorHead

    def without(kind):
        def undo(model):
            cpu.use_cpu_kernels(model)
            for name, m in list(model.named_modules()):
                if kind == "attention" and type(m) is cpu.CpuSelfAttention:
                    m.__class__ = SelfAttention
                elif kind == "vocab projection" and type(m) is cpu.CpuGeneratorHead:
                    m.__class__ = GeneratorHead
                elif kind == "dropout bits" and type(m) is cpu.CpuDropout:
                    parent = model.get_submodule(name.rpartition(".")[0])
                    setattr(parent, name.rpartition(".")[2], nn.Dropout(m.p))
            return model
        return undo

    return {"all kernels": cpu.use_cpu_kernels, "plain path": lambda m: m,
            **{f"without {k}": without(k) for k in ("dropout bits", "attention", "vocab projection")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="small")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    from electra.bench.runner import SPECIAL, synthetic_batch
    from electra.config import get_size
    from electra.model.electra import ElectraForPretraining
    from electra.runtime import keep_freed_memory
    from electra.train.optim import adamw

    keep_freed_memory()  # as the `electra` command does
    cfg = get_size(args.model)
    batch = synthetic_batch(args.batch_size, args.seq_len, cfg.discriminator.vocab_size, torch.device("cpu"))
    steps = {}
    for name, apply in variants().items():
        torch.manual_seed(0)
        model = apply(ElectraForPretraining(cfg, SPECIAL))
        opt = adamw(model, 5e-4, 0.01)
        totals = model.counts(batch[0], batch[1])

        def step(model=model, opt=opt, totals=totals):
            model(*batch, step=0, seed=0, totals=totals).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        step(), step()  # warm-up
        steps[name] = step
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(args.rounds):
        for name, step in steps.items():
            started = time.perf_counter()
            for _ in range(args.steps):
                step()
            seconds[name].append((time.perf_counter() - started) / args.steps)
        print(f"round {r + 1}: " + ", ".join(f"{n} {s[-1]:.3f}s" for n, s in seconds.items()), file=sys.stderr)
    tokens = args.batch_size * args.seq_len
    base = statistics.median(seconds["all kernels"])
    result = {"date": str(date.today()), "machine": f"{platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} threads, {_isa()}", "model": args.model, "batch_size": args.batch_size,
              "seq_len": args.seq_len, "variants": {
                  n: {"tokens_per_s": round(tokens / statistics.median(s), 1),
                      "step_s_median": round(statistics.median(s), 4),
                      "slowdown_vs_all": round(statistics.median(s) / base, 3), "step_s_all": [round(x, 4) for x in s]}
                  for n, s in seconds.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu_kernels.json").write_text(json.dumps(result, indent=2) + "\n")
    for n, v in result["variants"].items():
        print(f"{n:>28}: {v['tokens_per_s']:8.1f} tokens/s, {v['slowdown_vs_all']:.3f}x the step time of all kernels")


def _isa() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "ISA unknown"
    return "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"


if __name__ == "__main__":
    main()
