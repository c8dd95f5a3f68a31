"""Robustness and few-shot on real data: what adversarial fine-tuning buys against attacks, and whether
prompt-based fine-tuning beats head fine-tuning with few examples.

    .venv/bin/python benchmarks/robustness.py adversarial --model EXPORT/discriminator --out OUT \\
        --train ../shared/data/en/glue/SST-2/train.tsv --dev ../shared/data/en/glue/SST-2/dev.tsv --max-train 20000
    .venv/bin/python benchmarks/robustness.py few-shot --model EXPORT/discriminator --out OUT \\
        --train ../shared/data/en/glue/SST-2/train.tsv --dev ../shared/data/en/glue/SST-2/dev.tsv \\
        --template "{text} It was {label}." --verbalizer "0=terrible,1=great" --shots 16 32 64 --seeds 0 1 2 3 4

adversarial: fine-tunes plain and with each --adversarial method (same seed and settings), times a
step of each, then runs `electra attack` (typos, words, generator; --detect with the same pretrained
model) on the first --attack-limit dev examples. few-shot: per K and seed, prompt-based fine-tuning
(`--task prompt`) and head fine-tuning (`--task classification`) on the same K examples per class,
plus zero-shot and the majority class. Finished runs are kept in OUT/results.json; run again to go on.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from datetime import date
from pathlib import Path

from finetune_suite import capped, run_electra  # benchmarks/ is on the path when run as a script


def electra(*args) -> dict:
    return run_electra(list(args), threads=1)


def seconds_per_step(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "elapsed_s" in r and "loss" in r]
    a, b = rows[1], rows[-1]  # past the first row's warm-up
    return (b["elapsed_s"] - a["elapsed_s"]) / (b["step"] - a["step"])


def adversarial(args, results: dict, save) -> None:
    train = capped(args.train, args.max_train, args.out / f"train-{args.max_train}.tsv")
    for method in ["plain", *args.methods]:
        run = args.out / f"ft-{method}"
        key = f"adversarial/{method}"
        if key not in results:
            flags = [] if method == "plain" else ["--adversarial", method, *args.adv_flags]
            r = electra("finetune", "--task", "classification", "--model", args.model, "--train", train, "--dev",
                        args.dev, "--out", run, "--overwrite", "--epochs", args.epochs, "--seed", args.seed, *flags)
            r["seconds_per_step"] = round(seconds_per_step(run), 4)
            results[key] = {"finetune": r}
            save()
        if "attack" not in results[key]:
            results[key]["attack"] = electra("attack", "--model", run, "--data", args.dev, "--out", run / "attack",
                                             "--overwrite", "--limit", args.attack_limit, "--detect", args.model,
                                             "--max-queries", args.max_queries)
            save()
        print(f"{method}: {results[key]['finetune']['accuracy']:.4f} clean", file=sys.stderr)


def few_shot(args, results: dict, save) -> None:
    prompt = ["--template", args.template, "--verbalizer", args.verbalizer]
    if "zero-shot" not in results:
        results["zero-shot"] = electra("zero-shot", "--model", args.model, "--data", args.dev, *prompt)
        save()
    for k in args.shots:
        for seed in args.seeds:
            for task in ("prompt", "classification"):
                key = f"few-shot/{k}/{seed}/{task}"
                if key in results:
                    continue
                flags = prompt if task == "prompt" else []
                results[key] = electra("finetune", "--task", task, "--model", args.model, "--train", args.train,
                                       "--dev", args.dev, "--out", args.out / f"fs-{task}-{k}-{seed}", "--overwrite",
                                       "--shots", k, "--seed", seed, "--epochs", args.epochs,
                                       "--batch-size", min(16, 2 * k), *flags)
                save()
                print(f"K={k} seed {seed} {task}: {results[key]['accuracy']:.4f}", file=sys.stderr)


def table(args, results: dict) -> str:
    lines = []
    if any(k.startswith("adversarial/") for k in results):
        lines += ["| fine-tuning | s/step | clean acc | typos acc | words acc | generator acc | generator success | "
                  "words changed | queries | AUC typos | AUC words | AUC generator |", "|---" * 12 + "|"]
        for key, r in results.items():
            if not key.startswith("adversarial/") or "attack" not in r:
                continue
            a = r["attack"]
            auc = lambda m: f"{a[m]['detection_auc']:.3f}" if a[m].get("detection_auc") is not None else "-"
            lines.append(f"| {key.split('/')[1]} | {r['finetune']['seconds_per_step']:.3f} | {a['clean']['accuracy']:.4f} | "
                         f"{a['typos']['metrics']['accuracy']:.4f} | {a['words']['metrics']['accuracy']:.4f} | "
                         f"{a['generator']['metrics']['accuracy']:.4f} | {a['generator']['success_rate']:.3f} | "
                         f"{a['generator']['words_changed_per_success'] or 0:.2f} | "
                         f"{a['generator']['queries_per_example']:.1f} | {auc('typos')} | {auc('words')} | {auc('generator')} |")
    if "zero-shot" in results:
        z = results["zero-shot"]
        lines += ["", f"zero-shot accuracy {z['accuracy']:.4f} (majority class {z['majority_accuracy']:.4f})", "",
                  "| K per class | seeds | prompt | head | prompt - head |", "|---|---|---|---|---|"]
        for k in args.shots:
            pairs = [(results.get(f"few-shot/{k}/{s}/prompt"), results.get(f"few-shot/{k}/{s}/classification"))
                     for s in args.seeds]
            pairs = [(p["accuracy"], h["accuracy"]) for p, h in pairs if p and h]
            if pairs:
                sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0
                p, h = [x[0] for x in pairs], [x[1] for x in pairs]
                lines.append(f"| {k} | {len(pairs)} | {statistics.mean(p):.4f} ± {sd(p):.4f} | "
                             f"{statistics.mean(h):.4f} ± {sd(h):.4f} | {statistics.mean(p) - statistics.mean(h):+.4f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["adversarial", "few-shot"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train", type=Path, required=True)
    ap.add_argument("--dev", type=Path, required=True)
    ap.add_argument("--max-train", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", nargs="+", default=["fgm", "pgd", "freelb"])
    ap.add_argument("--adv-flags", nargs="*", default=[], help="e.g. --adv-epsilon 0.5 (after --)")
    ap.add_argument("--attack-limit", type=int, default=300)
    ap.add_argument("--max-queries", type=int, default=100)
    ap.add_argument("--template")
    ap.add_argument("--verbalizer")
    ap.add_argument("--shots", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}

    def save():
        results["_run"] = {"date": date.today().isoformat(), "model": args.model,
                           "machine": f"{platform.machine()} {platform.processor()}, 1 thread per run"}
        path.write_text(json.dumps(results, indent=2) + "\n")

    if args.what == "adversarial":
        adversarial(args, results, save)
    else:
        if not (args.template and args.verbalizer):
            raise SystemExit("few-shot needs --template and --verbalizer")
        few_shot(args, results, save)
    text = table(args, results)
    (args.out / f"{args.what}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
