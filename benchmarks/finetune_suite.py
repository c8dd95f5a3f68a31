"""Does pretraining help? Fine-tune a discriminator our pipeline pretrained, and the same size from
random weights, on real tasks, and compare the dev metrics `electra finetune` reports.

    .venv/bin/python benchmarks/finetune_suite.py --lang en --model RUN_OR_EXPORT --out OUT
    .venv/bin/python benchmarks/finetune_suite.py --lang zh --model RUN_OR_EXPORT --out OUT

English: SST-2, MRPC, STS-B, CoNLL-2003 (train -> dev), the SQuAD-format split; Chinese:
ChnSentiCorp and Weibo NER (../shared/data). --max-train caps the training examples of the large
sets (SST-2) so the suite fits a CPU budget; the cap is recorded. Both arms share every setting
(size, tokenizer, lr, epochs, seed); --seeds repeats each pair of runs per seed, since one seed's
difference on a small dev set is often within the noise. Writes OUT/results.json (finished runs
are not repeated when the suite is run again) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import date
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# name, task, train, dev, extra flags, the metric shown
TASKS = {
    "en": [("SST-2", "classification", "en/glue/SST-2/train.tsv", "en/glue/SST-2/dev.tsv", [], "accuracy"),
           ("MRPC", "classification", "en/glue/MRPC/train.tsv", "en/glue/MRPC/dev.tsv", [], "f1"),
           ("STS-B", "regression", "en/glue/STS-B/train.tsv", "en/glue/STS-B/dev.tsv", [], "pearson"),
           ("CoNLL-2003", "ner", "en/conll2003/train.txt", "en/conll2003/dev.txt", [], "f1"),
           ("SQuAD split", "qa", "en/squad/train.json", "en/squad/dev.json", ["--max-seq-len", "384"], "f1")],
    "zh": [("ChnSentiCorp", "classification", "zh/chnsenticorp/train.tsv", "zh/chnsenticorp/dev.tsv",
            ["--max-seq-len", "256"], "accuracy"),
           ("Weibo NER", "ner", "zh/weibo_ner/train.all.bmes", "zh/weibo_ner/dev.all.bmes", [], "f1")],
}


def capped(path: Path, limit: int, out: Path) -> Path:
    """The header and the first `limit` rows of a table (for the large training sets)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) - 1 <= limit:
        return path
    out.write_text("\n".join(lines[:limit + 1]) + "\n", encoding="utf-8")
    return out


def finetune(src: list[str], task: str, train: Path, dev: Path, out: Path, flags: list[str], threads: int) -> dict:
    return run_electra(["finetune", "--task", task, *src, "--train", train, "--dev", dev, "--out", out, "--overwrite",
                        *flags], threads)


def run_electra(args: list, threads: int) -> dict:
    """Run `electra ARGS --threads N`; its last line of output is a JSON object: that, with the wall time."""
    cmd = [sys.executable, "-m", "electra", *map(str, args), "--threads", str(threads)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def pending_runs(args, results: dict, common: list[str], model_dir: Path, tokenizer: str, results_path: Path,
                 data: Path) -> list[tuple]:
    """The runs not in results yet: (task name, seed, arm, command-line source, task, train, dev, flags)."""
    pending = []
    for name, task, train, dev, flags, metric in TASKS[args.lang]:
        if args.only and name not in args.only:
            continue
        train_path = data / train
        if task in ("classification", "regression"):
            train_path = capped(train_path, args.max_train, args.out / f"{name}-train{train_path.suffix}")
        row = results.setdefault(name, {"task": task, "metric": metric, "settings": common + flags, "runs": {}})
        if row["settings"] != common + flags:
            raise SystemExit(f"{results_path} has {name} run with {' '.join(row['settings'])}; these settings "
                             f"are {' '.join(common + flags)}: pass the same ones, or another --out")
        for seed in args.seeds:
            runs = row["runs"].setdefault(str(seed), {})
            for arm, src in (("pretrained", ["--model", str(model_dir)]),
                             ("scratch", ["--model", args.size, "--tokenizer", tokenizer])):
                if arm not in runs and arm in args.arms:
                    pending.append((name, seed, arm, src, task, train_path, data / dev, common + flags))

    return pending


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lang", choices=list(TASKS), required=True)
    ap.add_argument("--model", required=True, help="the pretrained run, checkpoint or export")
    ap.add_argument("--size", default="tiny", help="the size of the from-scratch arm (the pretrained model's)")
    ap.add_argument("--tokenizer", help="tokenizer of the scratch arm (default: MODEL's tokenizer files)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-train", type=int, default=20000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="fine-tune each arm once per seed; the table shows mean and spread")
    ap.add_argument("--no-length-buckets", action="store_true",
                    help="plain random training batches (as before length buckets became the default)")
    ap.add_argument("--precision", help="passed to `electra finetune` (bf16 on a GPU)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="fine-tuning runs at a time (each is its own process; useful on a GPU)")
    ap.add_argument("--only", nargs="*", help="run only these tasks (names as in the table)")
    ap.add_argument("--threads", type=int, help="threads per run (default: the CPUs' share of each of --jobs)")
    ap.add_argument("--arms", nargs="+", choices=["pretrained", "scratch"], default=["pretrained", "scratch"],
                    help="run only these arms (a study of several models runs the scratch arm once)")
    ap.add_argument("--data-root", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    args = ap.parse_args()
    DATA = args.data_root
    if not DATA.is_dir():
        raise SystemExit(f"data folder not found: {DATA}; pass --data-root")

    from electra.pretrained import resolve

    model_dir = resolve(args.model)
    tokenizer = args.tokenizer or str(model_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    common = ["--epochs", str(args.epochs), "--lr", str(args.lr), "--batch-size", str(args.batch_size)]
    if args.no_length_buckets:
        common.append("--no-length-buckets")
    if args.precision:
        common += ["--precision", args.precision]
    results_path = args.out / "results.json"
    # {task: {"metric", "settings", "runs": {seed: {arm: result}}}}; finished runs are kept, so an
    # interrupted suite or one given more seeds only runs what is missing
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    arms = {"model": str(model_dir), "size": args.size, "tokenizer": tokenizer, "max_train": args.max_train}
    before = {k: results.get("_run", {}).get(k, v) for k, v in arms.items()}
    if before != arms:
        changed = ", ".join(f"{k} {before[k]} -> {arms[k]}" for k in arms if before[k] != arms[k])
        raise SystemExit(f"{results_path} holds runs of other arms ({changed}); pass another --out")
    pending = pending_runs(args, results, common, model_dir, tokenizer, results_path, DATA)

    from electra.runtime import usable_cpus

    # side by side, each run gets its share of the CPUs: OpenMP threads without a free core make a
    # step many times slower (BENCHMARKS.md, "Threads")
    threads = args.threads or max(1, usable_cpus() // max(1, args.jobs))

    def run(job):
        name, seed, arm, src, task, train_path, dev_path, flags = job
        slug = f"{name.lower().replace(' ', '-')}-{arm}-seed{seed}"
        return finetune(src, task, train_path, dev_path, args.out / slug, flags + ["--seed", str(seed)], threads)

    # results are recorded by this thread only, as runs finish, so an interrupted suite keeps them
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(run, job): job for job in pending}
        for future in as_completed(futures):
            name, seed, arm = futures[future][:3]
            r = future.result()
            results[name]["runs"][str(seed)][arm] = r
            metric = results[name]["metric"]
            print(f"{name:>13} {arm:>10} seed {seed}: {metric} {r[metric]:.4f} ({r['wall_s']:.0f} s)",
                  file=sys.stderr)
            results["_run"] = {"date": date.today().isoformat(), **arms,
                               "machine": machine()}
            results_path.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


def table(results: dict) -> str:
    """Markdown: per task the mean (and spread over seeds) of each arm and of their difference."""
    lines = ["| task | metric | seeds | pretrained | scratch | difference (mean, min..max) |",
             "|---|---|---|---|---|---|"]
    for name, row in results.items():
        if name.startswith("_"):
            continue
        done = [r for r in row["runs"].values() if {"pretrained", "scratch"} <= r.keys()]
        if not done:
            continue
        pre = [r["pretrained"][row["metric"]] for r in done]
        scr = [r["scratch"][row["metric"]] for r in done]
        diff = [p - s for p, s in zip(pre, scr)]
        spread = lambda xs: f"{statistics.mean(xs):.4f}" + (f" ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else "")
        lines.append(f"| {name} | {row['metric']} | {len(done)} | {spread(pre)} | {spread(scr)} | "
                     f"{statistics.mean(diff):+.4f} ({min(diff):+.4f}..{max(diff):+.4f}) |")
    return "\n".join(lines)


def machine() -> str:
    import torch
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, {platform.machine()}"
    return f"{platform.machine()}, {torch.get_num_threads()} threads"


if __name__ == "__main__":
    main()
