"""Threads and a shared CPU: `electra pretrain --model tiny` alone and beside a second job, with the
default thread count and with each job given its share (--threads). Tokens/s are the median of each
run's metric rows after the first (warm-up) row.

    .venv/bin/python benchmarks/threads.py --out bench-runs/threads --steps 300

Writes OUT/threads.json and OUT/threads.png (and keeps the prepared data in OUT/data).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ELECTRA = [sys.executable, "-m", "electra"]


def prepare(out: Path) -> Path:
    """A tokenizer and 128-token examples from the demo's bundled Wikipedia sample."""
    from electra.demo import sample_path

    data = out / "data"
    if not (data / "manifest.json").is_file():
        subprocess.run([*ELECTRA, "tokenizer", "train", "--corpus", str(sample_path()), "--vocab-size", "8192",
                        "--out", str(out / "tok"), "--overwrite"], check=True)
        subprocess.run([*ELECTRA, "prepare", "--corpus", str(sample_path()), "--tokenizer", str(out / "tok"),
                        "--out", str(data), "--overwrite"], check=True)
    return data


def start(data: Path, run: Path, steps: int, threads: int | None) -> subprocess.Popen:
    cmd = [*ELECTRA, "pretrain", "--data", str(data), "--model", "tiny", "--out", str(run), "--max-steps",
           str(steps), "--batch-size", "32", "--log-every", "10", "--eval-every", "0", "--save-every", str(steps)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def tokens_per_s(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][1:]
    return statistics.median(rates)


def scenario(out: Path, data: Path, name: str, jobs: int, threads: int | None, steps: int) -> list[float]:
    runs = [out / "runs" / f"{name}-{i}" for i in range(jobs)]
    for run in runs:
        subprocess.run(["rm", "-rf", str(run)], check=True)
    procs = [start(data, run, steps, threads) for run in runs]
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"{name} failed:\n{err[-2000:]}")
    return [tokens_per_s(run) for run in runs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=2, help="each scenario this many times, interleaved")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = prepare(args.out)

    from electra.runtime import default_threads, usable_cpus

    share = max(1, usable_cpus() // 2)
    scenarios = {"alone, default threads": (1, None), "alone, --threads 1": (1, 1),
                 "beside another job, default threads each": (2, None),
                 f"beside another job, --threads {share} each (its share)": (2, share)}
    results: dict[str, list[float]] = {name: [] for name in scenarios}
    for _ in range(args.repeats):
        for i, (name, (jobs, threads)) in enumerate(scenarios.items()):
            started = time.perf_counter()
            results[name] += scenario(args.out, data, f"s{i}", jobs, threads, args.steps)
            print(f"{name}: {results[name][-jobs:]} tokens/s per job ({time.perf_counter() - started:.0f} s)",
                  file=sys.stderr)
    summary = {"date": str(date.today()), "machine": f"{platform.machine()}, {usable_cpus()} usable CPUs",
               "default_threads": default_threads(), "steps": args.steps,
               "tokens_per_s_per_job": {k: {"median": statistics.median(v), "all": v} for k, v in results.items()}}
    (args.out / "threads.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(args.out / "threads.png", summary)
    print(json.dumps(summary))


def plot(path: Path, summary: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["tokens_per_s_per_job"])
    medians = [summary["tokens_per_s_per_job"][n]["median"] for n in names]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.barh(names, medians, color=["#4c72b0", "#4c72b0", "#c44e52", "#55a868"])
    for y, v in enumerate(medians):
        ax.text(v, y, f" {v:,.0f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("tokens/s per job (median)")
    ax.set_title(f"electra pretrain --model tiny, {summary['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
