"""Robustness and few-shot on real data: what adversarial fine-tuning buys against attacks, and whether
prompt-based fine-tuning beats head fine-tuning with few examples.

    .venv/bin/python benchmarks/robustness.py adversarial --model EXPORT/discriminator --out OUT \\
        --train ../shared/data/en/glue/SST-2/train.tsv --dev ../shared/data/en/glue/SST-2/dev.tsv --max-train 10000 \\
        --methods fgm pgd freelb --epsilons 0.005 0.01 0.02 --seeds 0 1 2
    .venv/bin/python benchmarks/robustness.py few-shot --model EXPORT/discriminator --out OUT \\
        --train ../shared/data/en/glue/SST-2/train.tsv --dev ../shared/data/en/glue/SST-2/dev.tsv \\
        --template "{text} It was {label}." --verbalizer "0=terrible,1=great" --shots 16 32 64 --seeds 0 1 2 3 4

adversarial: per seed, fine-tunes plain and with each --adversarial method at each epsilon (same
settings otherwise), times a step of each, then runs `electra attack` (typos, words, generator;
--detect with the same pretrained model) on the first --attack-limit dev examples; the table gives
mean ± sd over seeds, what the generator attack takes away, and whether a setting meets the target;
OUT/adversarial.png plots clean against attacked accuracy. few-shot: per K and seed, prompt-based fine-tuning
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


def sd(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def seconds_per_step(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "elapsed_s" in r and "loss" in r]
    if len(rows) < 3:  # too short a run to leave out the first row's warm-up
        return rows[-1]["elapsed_s"] / rows[-1]["step"]
    a, b = rows[1], rows[-1]
    return (b["elapsed_s"] - a["elapsed_s"]) / (b["step"] - a["step"])


def attack_name(args) -> str:
    """Where a generator's attack results are kept: "attack" for the fine-tuned model's own generator,
    "attack-NAME" for --generator (NAME from its path), so one set of models is attacked by several."""
    if not args.generator:
        return "attack"
    parts = [p for p in Path(args.generator).parts if p not in ("export", "generator")]
    return "attack-" + "-".join(parts[-2:])


def adversarial(args, results: dict, save) -> None:
    """Plain fine-tuning and each method at each epsilon, per seed; then the attacks on each result."""
    train = capped(args.train, args.max_train, args.out / f"train-{args.max_train}.tsv")
    configs = [("plain", None)] + [(m, e) for m in args.methods for e in args.epsilons]
    for seed in args.seeds:
        for method, eps in configs:
            key = f"adversarial/{method}/{eps or '-'}/{seed}"
            run = args.out / (f"ft-{method}-{seed}" if eps is None else f"ft-{method}-{eps}-{seed}")
            if key not in results:
                flags = [] if method == "plain" else ["--adversarial", method, "--adv-epsilon", eps,
                                                      "--adv-alpha", eps / 2, *args.adv_flags]
                r = electra("finetune", "--task", "classification", "--model", args.model, "--train", train, "--dev",
                            args.dev, "--out", run, "--overwrite", "--epochs", args.epochs, "--seed", seed,
                            "--max-seq-len", args.max_seq_len, *flags)
                r["seconds_per_step"] = round(seconds_per_step(run), 4)
                results[key] = {"finetune": r}
                save()
            name = attack_name(args)
            if name not in results[key]:
                generator = ["--generator", args.generator] if args.generator else []
                results[key][name] = electra("attack", "--model", run, "--data", args.dev, "--out", run / name,
                                             "--overwrite", "--limit", args.attack_limit, "--detect", args.model,
                                             "--max-queries", args.max_queries, *generator)
                save()
            a = results[key][name]
            print(f"{method} {eps or ''} seed {seed}: clean {results[key]['finetune']['accuracy']:.4f}, "
                  f"generator attack {a['generator']['metrics']['accuracy']:.4f}", file=sys.stderr)


def adversarial_rows(results: dict, name: str = "attack") -> list[dict]:
    """Per (method, epsilon), over seeds: clean dev accuracy, accuracy under each attack (first
    --attack-limit dev examples; `name`: which generator's), what the generator attack takes away, AUCs,
    seconds per step."""
    groups: dict[tuple, list[dict]] = {}
    for key, r in results.items():
        if key.startswith("adversarial/") and name in r and key.count("/") == 3:
            r = {**r, "attack": r[name]}
            _, method, eps, _seed = key.split("/")
            groups.setdefault((method, eps), []).append(r)
    rows = []
    for (method, eps), runs in groups.items():
        col = lambda f: [f(r) for r in runs]
        clean_attacked = col(lambda r: r["attack"]["clean"]["accuracy"])  # the attacked subset's clean accuracy
        gen = col(lambda r: r["attack"]["generator"]["metrics"]["accuracy"])
        rows.append({
            "method": method, "epsilon": eps, "seeds": len(runs),
            "seconds_per_step": statistics.median(col(lambda r: r["finetune"]["seconds_per_step"])),
            "clean": col(lambda r: r["finetune"]["accuracy"]),
            "typos": col(lambda r: r["attack"]["typos"]["metrics"]["accuracy"]),
            "words": col(lambda r: r["attack"]["words"]["metrics"]["accuracy"]),
            "generator": gen, "lost_to_generator": [c - g for c, g in zip(clean_attacked, gen)],
            "auc_generator": [x for x in col(lambda r: r["attack"]["generator"].get("detection_auc")) if x is not None],
        })
    return rows


def adversarial_table(rows: list[dict]) -> list[str]:
    mean = lambda xs: statistics.mean(xs) if xs else float("nan")
    ms = lambda xs: f"{mean(xs):.4f} ± {sd(xs):.4f}"
    plain = next((r for r in rows if r["method"] == "plain"), None)
    lines = ["| fine-tuning | epsilon | seeds | s/step | clean acc (dev) | typos acc | words acc | generator acc | "
             "lost to generator | loss cut vs plain | clean vs plain | AUC generator |", "|---" * 12 + "|"]
    verdicts = []
    for r in rows:
        cut = clean_delta = None
        if plain and r is not plain:
            cut = 1 - mean(r["lost_to_generator"]) / mean(plain["lost_to_generator"])
            clean_delta = mean(r["clean"]) - mean(plain["clean"])
            if cut >= 0.30 and clean_delta >= -0.01:
                verdicts.append(f"{r['method']} at epsilon {r['epsilon']}")
        lines.append(f"| {r['method']} | {r['epsilon']} | {r['seeds']} | {r['seconds_per_step']:.3f} | {ms(r['clean'])} | "
                     f"{mean(r['typos']):.4f} | {mean(r['words']):.4f} | {ms(r['generator'])} | "
                     f"{mean(r['lost_to_generator']):.4f} | {'-' if cut is None else f'{cut:+.0%}'} | "
                     f"{'-' if clean_delta is None else f'{100 * clean_delta:+.1f} pt'} | {mean(r['auc_generator']):.3f} |")
    lines += ["", "Target (loss to the generator attack cut by >= 30% for <= 1 point of clean accuracy): "
              + (f"met by {', '.join(verdicts)}." if verdicts else "not met by any setting.")]
    return lines


def adversarial_plot(rows: list[dict], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for r in rows:
        label = r["method"] if r["method"] == "plain" else f"{r['method']} {r['epsilon']}"
        ax.errorbar(statistics.mean(r["clean"]), statistics.mean(r["generator"]), xerr=sd(r["clean"]),
                    yerr=sd(r["generator"]), fmt="o", capsize=3, label=label)
    ax.set_xlabel("clean dev accuracy")
    ax.set_ylabel("accuracy under the generator attack")
    ax.set_title("Adversarial fine-tuning: clean vs attacked (mean ± sd over seeds)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


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
    rows = adversarial_rows(results, attack_name(args))
    if rows:
        if args.generator:
            lines += [f"Generator attack with the generator of {args.generator}.", ""]
        lines += adversarial_table(rows)
        adversarial_plot(rows, args.out / f"adversarial{attack_name(args).removeprefix('attack')}.png")
    if "zero-shot" in results:
        z = results["zero-shot"]
        lines += ["", f"zero-shot accuracy {z['accuracy']:.4f} (majority class {z['majority_accuracy']:.4f})", "",
                  "| K per class | seeds | prompt | head | prompt - head (paired, mean ± sd) | seeds prompt wins | "
                  "paired t-test p |", "|---|---|---|---|---|---|---|"]
        runs = [key.split("/") for key in results if key.startswith("few-shot/")]  # every seed run so far, any call
        for k in sorted({int(k) for _, k, _, _ in runs}):
            seeds = sorted({int(s) for _, kk, s, _ in runs if int(kk) == k})
            pairs = [(results.get(f"few-shot/{k}/{s}/prompt"), results.get(f"few-shot/{k}/{s}/classification"))
                     for s in seeds]
            pairs = [(p["accuracy"], h["accuracy"]) for p, h in pairs if p and h]
            if pairs:  # the same K examples per seed: compare pairwise
                lines.append(f"| {k} | {len(pairs)} | " + paired_cells([x[0] for x in pairs], [x[1] for x in pairs]))
    return "\n".join(lines)


def paired_cells(a: list[float], b: list[float]) -> str:
    """Table cells comparing a with b seed by seed: a and b (mean ± sd), a - b (mean ± sd), seeds a wins,
    and the two-sided paired t-test's p (scipy; '-' below 3 pairs)."""
    d = [x - y for x, y in zip(a, b)]
    p = "-"
    if len(d) >= 3:
        from scipy.stats import ttest_rel
        p = f"{ttest_rel(a, b).pvalue:.2f}"
    return (f"{statistics.mean(a):.4f} ± {sd(a):.4f} | {statistics.mean(b):.4f} ± {sd(b):.4f} | "
            f"{statistics.mean(d):+.4f} ± {sd(d):.4f} | {sum(x > 0 for x in d)}/{len(d)} | {p} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["adversarial", "few-shot"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train", type=Path, required=True)
    ap.add_argument("--dev", type=Path, required=True)
    ap.add_argument("--max-train", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-seq-len", type=int, default=128)
    ap.add_argument("--methods", nargs="+", default=["fgm", "pgd", "freelb"])
    ap.add_argument("--epsilons", type=float, nargs="+", default=[0.02],
                    help="perturbation sizes (relative to each example's embedding norm); PGD/FreeLB steps are half")
    ap.add_argument("--adv-flags", nargs="*", default=[], help="e.g. --adv-steps 2 (after --)")
    ap.add_argument("--attack-limit", type=int, default=300)
    ap.add_argument("--max-queries", type=int, default=100)
    ap.add_argument("--generator", help="adversarial: the generator attack's generator (default: the one of the "
                    "model fine-tuned from); each generator's results are kept apart")
    ap.add_argument("--template")
    ap.add_argument("--verbalizer")
    ap.add_argument("--shots", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="adversarial: 3 is plenty")
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
    suffix = attack_name(args).removeprefix("attack") if args.what == "adversarial" else ""
    (args.out / f"{args.what}{suffix}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
